r"""Monte Carlo simulation of samplers with any score function, and divergence estimates with honest errors.

`simulate` runs the literal update rule of a sampler on particles in full coordinates, with a score
function $s(x, t)$ (for a mixture: its exact score), jitted and vmapped over particles. It is the
independent check of every closed form in the package, and the way to evaluate samplers on non-Gaussian
data, where no closed form exists.

Estimators (each returns an `Estimate(value, stderr)`):

- `cross_entropy(samples, law)` $= -\mathbb E\log p(y)$ with the exact log-density of `law`.
- `kl_estimate(log_p, log_q)` $= \mathbb E[\log p - \log q]$ over samples of $p$, both log-densities exact.
- Deterministic samplers push $\mathcal N(0, I)$ forward through a known map, so `simulate(...,
  log_density=True)` also returns $\log q(y) = \log q_0(x_0) - \log|\det\partial y/\partial x_0|$ (Jacobian by
  forward-mode autodiff): KL(sample ‖ target) is then an exact-log-density Monte Carlo average.
- `w2_exact_ot(x, y)`: $W_2$ between two equal-size samples by an exact assignment (SciPy), with the
  noise floor to compare with; `sliced_w2`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._core._dtype import cast
from .._core._law import validate_grid
from ._mixture import GaussianMixture
from .._sampler import AbstractSampler
from .._sampler._base import denoise
from .._sampler._multistep import AbstractMultistepSampler, Level, StepInfo
from .._schedule import AbstractSchedule

ScoreFn = Callable[[Array, Array], Array]  # (x (d,), t scalar) -> score (d,)


class Estimate(NamedTuple):
    """A Monte Carlo estimate and its standard error (one standard deviation of the estimator)."""

    value: Float[Array, ""]
    stderr: Float[Array, ""]

    def z_score(self, reference) -> Float[Array, ""]:
        """(value - reference) / stderr."""
        return (self.value - reference) / self.stderr


def _mean_se(values: Array) -> Estimate:
    n = values.shape[0]
    return Estimate(jnp.mean(values), jnp.std(values, ddof=1) / jnp.sqrt(jnp.asarray(n, values.dtype)))


class MixtureScore(eqx.Module):
    r"""The exact score $s(x, t) = \nabla\log p_t(x)$ of a clean mixture diffused by `schedule` (a pytree, so
    `simulate` compiles once for all mixtures of the same shape)."""

    mixture: GaussianMixture
    schedule: AbstractSchedule

    def __call__(self, x, t):
        # Straight to the per-point formula (no validation or batching layers inside the sampler's scan).
        law = self.mixture._diffused(self.schedule.alpha_bar(t), self.schedule.one_minus_alpha_bar(t))
        w, v = law._score_terms(law._factors(), x)
        return -(w @ v)


class MixtureDenoiser(eqx.Module):
    r"""The exact denoiser $D(x, t) = \mathbb E[x_0 \mid x_t = x]$ of a clean mixture (defined also where $\bar\alpha = 0$)."""

    mixture: GaussianMixture
    schedule: AbstractSchedule

    def __call__(self, x, t):
        return self.mixture.posterior_mean(x, self.schedule.alpha_bar(t))


class LinearScore(eqx.Module):
    r"""The score of the diffused Gaussian $\mathcal N(\mu, \Sigma)$: $-(a^2\Sigma + b^2I)^{-1}(x - a\mu)$.

    This is the score a sampler uses with the covariance-matched linear denoiser (MATH.md section 4).
    """

    mean: Float[Array, " d"]
    covariance: Float[Array, "d d"]
    schedule: AbstractSchedule

    def __call__(self, x, t):
        ab, om = self.schedule.alpha_bar(t), self.schedule.one_minus_alpha_bar(t)
        eye = jnp.eye(self.mean.shape[0], dtype=self.mean.dtype)
        return -jnp.linalg.solve(ab * self.covariance + om * eye, x - jnp.sqrt(ab) * self.mean)


def mixture_score(mixture: GaussianMixture, schedule: AbstractSchedule) -> MixtureScore:
    """The exact score function of `mixture` under `schedule`, for `simulate`."""
    return MixtureScore(mixture, schedule)


def mixture_denoiser(mixture: GaussianMixture, schedule: AbstractSchedule) -> MixtureDenoiser:
    """The exact denoiser of `mixture` under `schedule`, for `simulate(..., denoiser_fn=...)`."""
    return MixtureDenoiser(mixture, schedule)


def linear_score(
    mean: Float[ArrayLike, " d"], covariance: Float[ArrayLike, "d d"], schedule: AbstractSchedule
) -> LinearScore:
    """The diffused Gaussian's (linear) score function, for `simulate`."""
    return LinearScore(jnp.asarray(mean), jnp.asarray(covariance), schedule)


def _trajectory(sampler, schedule, ts, score_fn, denoiser_fn, x0, key):
    """Final state of one particle started at x0 (d,), with its own noise key."""
    if isinstance(sampler, AbstractMultistepSampler):
        return _multistep_trajectory(sampler, schedule, ts, score_fn, denoiser_fn, x0, key)
    n = ts.shape[0] - 1 - sampler.lookahead
    keys = jax.random.split(key, n)
    times = tuple(ts[j : j + n] for j in range(sampler.lookahead + 2))

    def one(x, inputs):
        *times, k = inputs
        noise = jax.random.normal(k, x.shape, dtype=x.dtype)
        extra = {"t_after": times[2]} if sampler.lookahead else {}
        return sampler.literal_step(schedule, times[0], times[1], x, score_fn, denoiser_fn, noise, **extra), None

    out, _ = jax.lax.scan(one, x0, (*times, keys))
    return out


def _multistep_trajectory(sampler, schedule, ts, score_fn, denoiser_fn, x0, key):
    """A multistep sampler's combinations run on one particle: each slot holds a point (d,)."""
    if not all(sampler.grid_slots):
        raise ValueError(
            f"simulate: {type(sampler).__name__} evaluates the model between grid points, where a score function "
            "of forward time cannot be called; simulate it on a grid that contains those levels instead."
        )
    s, n = sampler.num_slots, ts.shape[0] - 1
    level0 = Level.at(schedule, ts[0])
    carry0 = (jnp.stack([x0] * s), (level0,) * s, sampler.init(schedule, ts[0]))

    def denoised(x, level):
        return denoise(schedule, level.t, x, score_fn, denoiser_fn)

    def one(carry, inputs):
        xs, levels, state = carry
        t_next, k, key = inputs
        writes, state = sampler.step(schedule, levels, Level.at(schedule, t_next), state, StepInfo(k, jnp.int32(n)))
        for w, (target, cmb) in enumerate(writes):
            new = cmb.scale * xs[cmb.base]
            for j in range(s):
                d_j = denoised(xs[j], levels[j])
                safe_sigma = jnp.where(levels[j].sigma > 0, levels[j].sigma, 1.0)
                eps_j = (xs[j] - levels[j].alpha * d_j) / safe_sigma
                new = new + cmb.data[j] * d_j + cmb.noise[j] * eps_j
            noise = jax.random.normal(jax.random.fold_in(key, w), new.shape, dtype=new.dtype)
            new = new + jnp.sqrt(jnp.asarray(cmb.fresh, dtype=new.dtype)) * noise
            if target is None:
                xs = jnp.concatenate([new[None], xs[:-1]])
                levels = (cmb.level,) + tuple(levels[:-1])
            else:
                xs = xs.at[target].set(new)
                levels = tuple(cmb.level if j == target else levels[j] for j in range(s))
        return (xs, levels, state), None

    inputs = (ts[1:], jnp.arange(n, dtype=jnp.int32), jax.random.split(key, n))
    (xs, _, _), _ = jax.lax.scan(one, carry0, inputs)
    return xs[0]


def simulate(
    sampler: AbstractSampler,
    schedule: AbstractSchedule,
    ts: Float[ArrayLike, " n"],
    score_fn: ScoreFn,
    key: PRNGKeyArray,
    n: int,
    *,
    init: Literal["standard"] | GaussianMixture = "standard",
    dim: int | None = None,
    denoiser_fn: ScoreFn | None = None,
    log_density: bool = False,
    dtype=None,
) -> Float[Array, "n d"] | tuple[Float[Array, "n d"], Float[Array, " n"]]:
    r"""Run `sampler`'s literal update rule on `n` particles with the score function `score_fn`.

    **Arguments:**

    - `sampler`: `DDIM(eta)`, `DDPM(...)`, `EulerMaruyama()`, `ExponentialIntegrator()`, `Euler()`, `Heun()`,
      `RK4()`, `EDMHeun()` or `JainZhang()` (which stops at `ts[-2]`).
    - `schedule`, `ts`: as for `sample_law` (decreasing forward times).
    - `score_fn`: $s(x, t)$ for one particle, `x` of shape `(d,)`, `t` scalar (e.g. `mixture_score(gmm, schedule)`).
    - `key`, `n`: PRNG key and number of particles.
    - `init`: `"standard"` ($x_{t_0} \sim \mathcal N(0, I)$, needs `dim`) or a `GaussianMixture`, the law of $x_{t_0}$
      (e.g. `gmm.diffuse(schedule, ts[0])` for the `exact` initialization).
    - `denoiser_fn`: optional $D(x, t) = \mathbb E[x_0|x_t]$ used by DDIM instead of Tweedie's formula from the score
      (needed where $\bar\alpha(t_k) = 0$, e.g. `Tangent` or `Cosine` grids starting at $t = 1$).
    - `log_density`: also return $\log q(y)$ of each output (deterministic samplers only; Jacobian log-determinant
      of the flow map by `jax.jacfwd`, cost $O(d)$ trajectories per particle).
    - `dtype`: particle dtype (default: that of `ts`).

    **Returns:** samples `(n, d)`, and with `log_density=True` also their log-densities `(n,)`.
    """
    ts = validate_grid(ts)
    dtype = ts.dtype if dtype is None else dtype
    ts = ts.astype(dtype)
    # Everything in one precision (strict dtype promotion; float32 runs as on accelerators).
    schedule, score_fn, denoiser_fn = cast((schedule, score_fn, denoiser_fn), dtype)
    if isinstance(init, GaussianMixture):
        init = cast(init, dtype)
    if ts.shape[0] < 2 + sampler.lookahead:
        raise ValueError(f"simulate: {type(sampler).__name__} needs at least {2 + sampler.lookahead} grid points.")
    if isinstance(init, GaussianMixture):
        init_law = init
        d = init.dim
        if dim is not None and dim != d:
            raise ValueError(f"simulate: dim={dim} disagrees with the initial law's dimension {d}.")
    elif init == "standard":
        if dim is None:
            raise ValueError("simulate: init='standard' needs dim= (the particles' dimension).")
        d = int(dim)
        init_law = GaussianMixture(jnp.ones(1, dtype), jnp.zeros((1, d), dtype), jnp.ones((1, d), dtype))
    else:
        raise ValueError("simulate: init must be 'standard' or a GaussianMixture (the law of x at ts[0]).")
    if log_density and not sampler.is_deterministic:
        raise ValueError(
            f"simulate: log_density=True needs a deterministic sampler (a flow map); {type(sampler).__name__} adds "
            "noise, so its output density has no closed form. Use cross_entropy or w2_exact_ot instead."
        )
    return _simulate(sampler, schedule, ts, score_fn, denoiser_fn, init_law, key, int(n), bool(log_density))


@eqx.filter_jit
def _simulate(sampler, schedule, ts, score_fn, denoiser_fn, init_law, key, n, log_density):
    k_init, k_path = jax.random.split(key)
    x0 = init_law.sample(k_init, n).astype(ts.dtype)
    keys = jax.random.split(k_path, n)
    run = lambda x, k: _trajectory(sampler, schedule, ts, score_fn, denoiser_fn, x, k)
    if not log_density:
        return jax.vmap(run)(x0, keys)

    def with_jacobian(x, k):
        y = run(x, k)
        jac = jax.jacfwd(lambda z: run(z, k))(x)
        return y, jnp.linalg.slogdet(jac)[1]

    y, logdet = jax.vmap(with_jacobian)(x0, keys)
    return y, init_law.log_prob(x0) - logdet


# ---------------------------------------------------------------------------- estimators
def cross_entropy(samples: Float[ArrayLike, "n d"], law: GaussianMixture) -> Estimate:
    r"""$-\frac1n\sum_j\log p(y_j)$ with the exact log-density of `law`, and its standard error."""
    return _mean_se(-law.log_prob(jnp.asarray(samples)))


def kl_estimate(
    log_p: Float[ArrayLike, " n"],
    log_q: Float[ArrayLike, " n"],
    *,
    estimator: Literal["log_ratio", "bregman"] = "log_ratio",
) -> Estimate:
    r"""$\mathrm{KL}(p\|q)$ from samples $x_j \sim p$ and both exact log-densities there, with its standard error.

    - `"log_ratio"`: $\frac1n\sum_j[\log p(x_j) - \log q(x_j)]$. Unbiased; its standard deviation is first order in
      the discrepancy while KL is second order, so small KLs need many samples.
    - `"bregman"`: $\frac1n\sum_j[r_j - 1 - \log r_j]$ with $r = q/p$: the same mean (because $\mathbb E_p[q/p] = 1$
      for normalized $q$ with support inside that of $p$), every term $\ge 0$ and second order, so the standard
      error shrinks with the KL itself. Needs $q/p$ to have finite variance under $p$ (laws that are close).

    Both log-densities must be exact (e.g. a mixture's `log_prob` and the flow density from `simulate`).
    """
    log_r = jnp.asarray(log_q) - jnp.asarray(log_p)
    if estimator == "log_ratio":
        return _mean_se(-log_r)
    if estimator == "bregman":
        return _mean_se(jnp.expm1(log_r) - log_r)
    raise ValueError(f"kl_estimate: estimator must be 'log_ratio' or 'bregman'; got {estimator!r}.")


class W2Estimate(NamedTuple):
    r"""Exact-OT $W_2$ between two samples, with the noise floor.

    `value`: $W_2$ between the two samples (an upward-biased estimate of the population distance);
    `stderr`: spread over `num_batches` disjoint batches divided by $\sqrt{\text{num\_batches}}$;
    `floor`: the same estimator between two independent samples of the reference law (what `value` would be if
    the laws were equal): a difference below it is not resolved.
    """

    value: float
    stderr: float
    floor: float


def w2_exact_ot(
    x: Float[ArrayLike, "n d"],
    y: Float[ArrayLike, "n d"],
    *,
    reference: Float[ArrayLike, "n d"] | None = None,
    num_batches: int = 4,
) -> W2Estimate:
    r"""$W_2$ between equal-size samples `x` and `y` by exact optimal assignment (`scipy.optimize.linear_sum_assignment`).

    Splits the samples into `num_batches` disjoint batches (cost $O(m^3)$ each, keep $m \lesssim 2000$),
    reports the root-mean-square over batches and its standard error. With `reference` (a second, independent
    sample of the law of `y`), also the noise floor $W_2$(reference, y).
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:  # scipy is an optional dependency
        raise ImportError("w2_exact_ot needs SciPy (pip install scipy), or use sliced_w2.") from e

    def batched(a, b):
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"w2_exact_ot: samples must have the same shape (n, d); got {a.shape} and {b.shape}.")
        m = a.shape[0] // num_batches
        vals = []
        for i in range(num_batches):
            aa, bb = a[i * m : (i + 1) * m], b[i * m : (i + 1) * m]
            cost = np.sum((aa[:, None, :] - bb[None, :, :]) ** 2, axis=-1)
            r, c = linear_sum_assignment(cost)
            vals.append(cost[r, c].mean())
        vals = np.asarray(vals)
        w2sq = vals.mean()
        # delta method: se(sqrt(mean)) = se(mean) / (2 sqrt(mean))
        se = vals.std(ddof=1) / np.sqrt(num_batches) / (2 * np.sqrt(w2sq)) if num_batches > 1 else float("nan")
        return float(np.sqrt(w2sq)), float(se)

    value, se = batched(x, y)
    floor = batched(reference, y)[0] if reference is not None else float("nan")
    return W2Estimate(value, se, floor)


def sliced_w2(
    key: PRNGKeyArray, x: Float[ArrayLike, "n d"], y: Float[ArrayLike, "n d"], *, num_projections: int = 256
) -> Float[Array, ""]:
    r"""Sliced $W_2$: root mean over random unit directions of the 1-D $W_2^2$ (sorted projections). Equal sizes."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"sliced_w2: samples must have the same shape; got {x.shape} and {y.shape}.")
    dirs = jax.random.normal(key, (x.shape[1], num_projections), dtype=x.dtype)
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))
