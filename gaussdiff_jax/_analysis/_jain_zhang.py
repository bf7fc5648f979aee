r"""The Jain–Zhang sampler ([JZ]; MATH.md sections 2 and 5): closed form on Gaussian data, grid, bound terms.

[JZ] work in the Ornstein–Uhlenbeck clock $\tau = \tfrac12\int_0^t\beta$ ($e^{-2\tau} = \bar\alpha$), on a grid
$\tau_0 = \delta < \tau_1 < \dots < \tau_{K+1} = \tau_{\max}$, $h_k = \tau_k - \tau_{k-1}$, $H_k = h_k + h_{k-1}$. One
iteration $k = K{+}1, \dots, 2$ is an exponential-integrator step of the probability-flow ODE over $H_k$
(score frozen at $\tau_k$: $x \mapsto e^{H}x + (e^{H}-1)\,s(x, \tau_k)$, landing at $\tau_{k-2}$) followed by an exact
forward noising over $h_{k-1}$ (back up to $\tau_{k-1}$): $x \mapsto e^{-h_{k-1}}x + \sqrt{1 - e^{-2h_{k-1}}}\,\xi$.
The output approximates $p_{\tau_1}$, not $p_\delta$. Their grid is $h_k = c\min(1, \tau_k)$.

An iteration spans three grid points, so the sampler is not an `AbstractSampler` (whose `step` maps one
time to the next); it has its own entry points here, written for any schedule and decreasing grid `ts`
(the package convention; $\tau_k$ = $-\tfrac12\log\bar\alpha(t)$ at `ts[K+1-k]`). Use `ou_schedule` and
`jain_zhang_grid` to work in [JZ]'s own clock.

Per mode (eigenvalue $\lambda$, $\sigma_\tau^2 = 1 + (\lambda-1)e^{-2\tau}$, $u = (\lambda-1)e^{-2\tau_k}$): the ODE step's gain is
$A = (1 + ue^H)/(1 + u)$, and the variance it produces from the exact marginal misses the exact one by
$A^2\sigma_{\tau_k}^2 - \sigma_{\tau_{k-2}}^2 = -u\,(e^H - 1)^2/\sigma^2_{\tau_k}$, which the recursion uses (no cancellation).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._divergence import expm1_minus_x
from .._core._errors import check
from .._core._law import GaussianLaw, Init, validate_grid
from .._core._law import sample_law
from .._sampler import AbstractSampler, JainZhang, marginal
from .._schedule import AbstractSchedule, LinearBeta
from .._core._source import GaussianSource


def ou_schedule(tau_max: float) -> LinearBeta:
    r"""The schedule whose time is [JZ]'s OU clock rescaled: $\tau = \tau_{\max}t$, i.e. constant $\beta = 2\tau_{\max}$.

    With it, a [JZ] grid `taus` (increasing) becomes the package's decreasing grid `ts = taus[::-1] / tau_max`.
    """
    if not float(tau_max) > 0:
        raise ValueError(f"ou_schedule: tau_max must be > 0; got {tau_max}.")
    return LinearBeta(2.0 * float(tau_max), 2.0 * float(tau_max))


def jain_zhang_grid(delta: float, tau_max: float, c: float) -> np.ndarray:
    r"""[JZ]'s grid $\tau_0 = \delta < \tau_1 < \dots < \tau_{K+1} = \tau_{\max}$ with $h_k = c\min(1, \tau_k)$.

    Geometric ($\tau_k = \tau_{k-1}/(1-c)$) below 1, arithmetic ($\tau_k = \tau_{k-1} + c$) above; the last step is
    cut at $\tau_{\max}$ (so every step satisfies $h_k \le c\min(1, \tau_k)$). $K \approx (\ln(1/\delta) + \tau_{\max})/c$.

    **Returns:** the increasing OU times, a NumPy array of shape `(K + 2,)`; for the package's samplers use
    `ts = taus[::-1] / tau_max` with `ou_schedule(tau_max)`.
    """
    delta, tau_max, c = float(delta), float(tau_max), float(c)
    if not 0 < c < 1:
        raise ValueError(f"jain_zhang_grid: c must lie in (0, 1); got {c}.")
    if not 0 < delta < tau_max or not math.isfinite(tau_max):
        raise ValueError(f"jain_zhang_grid: need 0 < delta < tau_max < inf; got delta={delta}, tau_max={tau_max}.")
    taus = [delta]
    while taus[-1] < tau_max:
        tau = taus[-1]
        nxt = tau / (1 - c) if tau / (1 - c) <= 1 else tau + c
        taus.append(min(nxt, tau_max))
    if len(taus) < 3:
        taus.insert(1, 0.5 * (taus[0] + taus[1]))  # at least one iteration needs three points
    return np.asarray(taus)


def _validate(ts):
    ts = validate_grid(ts)
    if ts.shape[0] < 3:
        raise ValueError(
            f"Jain-Zhang needs at least 3 grid points (one iteration spans three); got {ts.shape[0]}. "
            "Build a grid with jain_zhang_grid."
        )
    return ts


def jain_zhang_law(
    source: GaussianSource,
    schedule: AbstractSchedule,
    ts: Float[ArrayLike, " n"],
    *,
    init: Init = "standard",
) -> GaussianLaw:
    r"""Exact output law of the [JZ] sampler with the exact score on Gaussian data, per mode.

    The same as `sample_law(source, schedule, JainZhang(), ts, init=init)`: the law at `ts[-2]` ($\tau_1$);
    compare it with `target="truncated"`. Kept as a named entry point for [JZ]'s workflow.
    """
    ts = _validate(ts)
    return sample_law(source, schedule, JainZhang(), ts, init=init)


def chain_rule_kl_bound(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: JainZhang | AbstractSampler,
    ts: Float[ArrayLike, " n"],
    *,
    init: Init = "standard",
    reduce: bool = True,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""The chain-rule (data-processing) upper bound on KL(target ‖ sample), exactly, on Gaussian data.

    For Markov chains, $\mathrm{KL}(p_{\rm out}\|q_{\rm out}) \le \mathrm{KL}(p_{\rm path}\|q_{\rm path}) =
    \mathrm{KL}(p_{t_0}\|q_{t_0}) + \sum_k\mathbb E_{x\sim p_{t_k}}\mathrm{KL}(P_k(\cdot|x)\,\|\,Q_k(\cdot|x))$, where $P_k$ is the true
    reverse transition kernel (the law of $x_{t_{k+1}}$ given $x_{t_k}$ under the forward process) and $Q_k$ the
    sampler's. Per mode both kernels are Gaussian: $P_k$ has gain $a = e^{-\eta}\sigma'^2/\sigma^2$ and variance
    $\rho = \sigma'^2(1 - e^{-2\eta})/\sigma^2$ ($e^{-2\eta} = \bar\alpha/\bar\alpha'$), $Q_k$ gain $A$ and variance $Q$; with
    mean error $\epsilon$ of one step from the exact marginal,
    $\mathbb E\,\mathrm{KL} = \tfrac12[\rho/Q - 1 - \ln(\rho/Q) + ((a - A)^2\sigma^2 + \epsilon^2m^2)/Q]$.

    **Arguments:** as `sample_law` (or `jain_zhang_law` when `sampler` is `JainZhang()`, whose output is at
    `ts[-2]`). Stochastic samplers only: every step needs $Q > 0$ (deterministic ones give $+\infty$, refused).

    **Returns:** the bound (nats), summed over modes (weights counted) unless `reduce=False`. It dominates
    `kl(source, law, target="truncated", direction="target_to_sample")` of the same run.
    """
    ts = _validate(ts) if sampler.lookahead else validate_grid(ts)
    if init not in ("standard", "exact"):
        raise ValueError(f"init must be 'standard' or 'exact'; got {init!r}.")
    return _chain_rule(source, schedule, sampler, ts, init, bool(reduce))


@eqx.filter_jit
def _chain_rule(source, schedule, sampler, ts, init, reduce):
    lam = source.eigenvalues
    m = source.mean_or_zero
    dtype = jnp.result_type(lam.dtype, ts.dtype)
    lam, m, ts = lam.astype(dtype), m.astype(dtype), ts.astype(dtype)
    first = marginal(schedule, ts[0], lam)
    if init == "exact":
        start = jnp.zeros_like(lam)
    else:
        # KL(N(sqrt(abar) m, R^2) || N(0, 1)) per mode.
        start = 0.5 * (expm1_minus_x(jnp.log(first.variance)) + first.alpha_bar * m**2)

    def kernel(inputs):
        t, t_next = inputs[0], inputs[1]
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        if sampler.lookahead:
            step = sampler.step(schedule, t, t_next, lam, t_after=inputs[2])
        else:
            step = sampler.step(schedule, t, t_next, lam)
        q = jnp.broadcast_to(step.noise_variance, lam.shape)
        q = check(
            q,
            ~(q > 0),
            f"chain_rule_kl_bound: {type(sampler).__name__} has a step with no noise (Q = 0); the path KL "
            "is infinite. Use a stochastic sampler (DDPM, EulerMaruyama, ExponentialIntegrator, DDIM(eta>0), "
            "JainZhang).",
        )
        if step.mean_defect is None:
            mean_err = step.gain * mg.sqrt_alpha_bar + step.offset - mg_next.sqrt_alpha_bar
        else:
            mean_err = step.mean_defect
        return mg, mg_next, step.gain, jnp.log(q), mean_err * m

    n = ts.shape[0] - 1 - sampler.lookahead
    inputs = tuple(ts[j : j + n] for j in range(sampler.lookahead + 2))

    def one(total, inputs):
        mg, mg_next, gain, log_q, mean_err = kernel(inputs)
        keep = mg.alpha_bar / mg_next.alpha_bar  # e^{-2 eta}: forward factor from t_next to t
        one_minus_keep = schedule.alpha_bar_increment(inputs[0], inputs[1]) / mg_next.alpha_bar
        true_gain = jnp.sqrt(keep) * mg_next.variance / mg.variance
        log_rho = jnp.log(mg_next.variance) + jnp.log(one_minus_keep) - jnp.log(mg.variance)
        u = log_rho - log_q
        q = jnp.exp(log_q)
        term = 0.5 * (expm1_minus_x(u) + ((true_gain - gain) ** 2 * mg.variance + mean_err**2) / q)
        return total + term, None

    total, _ = jax.lax.scan(one, start, inputs)
    if source.weights is not None:
        total = total * source.weights
    return jnp.sum(total, axis=-1) if reduce else total


class JainZhangBoundTerms(NamedTuple):
    r"""The three terms of [JZ]'s bound $\mathrm{KL} \lesssim (d + m_2^2)e^{-T} + d^2c^3K + T\varepsilon^2$, as rates.

    The theorem has no explicit constants: compare how these scale (with $c$, $K$, $T$), never their values
    with an exact KL.
    """

    initialization: Float[Array, ""]
    discretization: Float[Array, ""]
    score: Float[Array, ""]


def jain_zhang_bound_terms(
    *,
    dim: float,
    second_moment: float | ArrayLike,
    c: float | ArrayLike,
    num_steps: float | ArrayLike,
    tau_max: float | ArrayLike,
    score_error: float | ArrayLike = 0.0,
) -> JainZhangBoundTerms:
    r"""The terms of [JZ]'s KL bound without constants (MATH.md section 5).

    **Arguments:** `dim` $d$; `second_moment` $m_2^2 = \mathbb E\|x_0\|^2$ (e.g. `GaussianMixture.second_moment()`);
    `c` the step parameter; `num_steps` $K$; `tau_max` $T$ (OU clock); `score_error` $\varepsilon_{\rm score}$ (L2).

    **Returns:** `JainZhangBoundTerms(initialization=(d + m_2^2)e^{-T}, discretization=d^2c^3K, score=T eps^2)`.
    On the [JZ] grid $K \approx (\ln(1/\delta) + T)/c$, so the discretization term scales as $c^2$, like the exact KL.
    """
    d = jnp.asarray(dim, dtype=jnp.result_type(float))
    m2 = jnp.asarray(second_moment, dtype=d.dtype)
    c = jnp.asarray(c, dtype=d.dtype)
    K = jnp.asarray(num_steps, dtype=d.dtype)
    T = jnp.asarray(tau_max, dtype=d.dtype)
    eps = jnp.asarray(score_error, dtype=d.dtype)
    return JainZhangBoundTerms((d + m2) * jnp.exp(-T), d**2 * c**3 * K, T * eps**2)
