r"""The engine: run a sampler's per-mode affine recursion along a time grid (MATH.md section 2).

The law of the output is $\mathcal N(g\,m, v)$ per mode. Rather than iterating $(g, v)$ directly,
the engine iterates their deviations from the exact marginal $p_t$, which is what the divergences need
and what float32 can hold on fine grids:

- mean deviation $\epsilon_k = g_k - \sqrt{\bar\alpha(t_k)}$: $\epsilon_{k+1} = A_k\epsilon_k + \text{mean defect}_k$;
- relative variance deviation $\delta_k = v_k/R^2(t_k) - 1$: $\delta_{k+1} = e_k + (1 + e_k - Q_k/R^2_{k+1})\,\delta_k$,
  where $e_k$ is the step's relative variance defect $(A_k^2R_k^2 + Q_k)/R^2_{k+1} - 1$.

Both recursions are exact identities; they only move the cancellation into the per-step defects, which
samplers give in closed form or which are assembled from $O(h)$ terms that each carry full relative
precision. Modes whose exact marginal variance vanishes at a grid point (a zero eigenvalue at $t = 0$)
fall back to the plain variance recursion $v_{k+1} = A_k^2 v_k + Q_k$, which is also carried.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from ._errors import check
from .._sampler import AbstractSampler, marginal
from .._schedule import AbstractSchedule
from ._source import GaussianSource

Init = Literal["standard", "exact"]


class GaussianLaw(eqx.Module):
    r"""The law of a sampler's output, per mode: $\mathcal N(g\,m,\ v)$ in eigen-coordinates.

    In full coordinates the output is $\mathcal N(U\mathrm{diag}(g)m,\ U\mathrm{diag}(v)U^\top)$.
    Besides $g$ and $v$ it keeps their deviations from the exact marginal $p_{t_{\min}}$ at the final
    time, computed without cancellation (see `gaussdiff_jax._law`); the divergences use those.

    **Fields** (each `(*batch, d)` unless stated):

    - `mean_multiplier`: $g$ (output mean $= g\,m$).
    - `variance`: $v$.
    - `mean_deviation`: $g - \sqrt{\bar\alpha(t_{\min})}$.
    - `log_variance_ratio`: $\ln(v / R^2(t_{\min}))$; $+\infty$ where $R^2(t_{\min}) = 0$ (a zero eigenvalue at $t_{\min} = 0$).
    - `alpha_bar_min`, `one_minus_alpha_bar_min`: $\bar\alpha$ and $1-\bar\alpha$ at the final time (scalars).
    """

    mean_multiplier: Float[Array, "*batch d"]
    variance: Float[Array, "*batch d"]
    mean_deviation: Float[Array, "*batch d"]
    log_variance_ratio: Float[Array, "*batch d"]
    alpha_bar_min: Float[Array, ""]
    one_minus_alpha_bar_min: Float[Array, ""]


def validate_grid(ts: Float[ArrayLike, " n"], num_steps: Int[ArrayLike, ""] | None = None) -> Float[Array, " n"]:
    """Check a time grid: 1-D, at least 2 points (1 step), strictly decreasing, inside [0, 1].

    With `num_steps` (an integer, possibly traced) only the first `num_steps + 1` points form the grid;
    the rest is padding and is not checked (see `sample_law`).

    **Returns:** `ts` as an array. **Raises:** `ValueError` (or an equinox runtime error inside jit).
    """
    ts = jnp.asarray(ts)
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    if ts.ndim != 1:
        raise ValueError(
            f"time grid must be 1-D (t_0 > t_1 > ... > t_N); got shape {ts.shape}. "
            "For a batch of grids use jax.vmap over sample_law."
        )
    if ts.shape[0] < 2:
        raise ValueError(
            f"time grid needs at least 2 points (1 step); got {ts.shape[0]}. "
            "Example: jnp.linspace(1.0, 1e-3, num_steps + 1)."
        )
    active = jnp.ones(ts.shape, dtype=bool)
    if num_steps is not None:
        active = jnp.arange(ts.shape[0], dtype=jnp.int32) <= jnp.asarray(num_steps).astype(jnp.int32)
    ts = check(ts, active & ~jnp.isfinite(ts), "time grid has a NaN or infinite entry.")
    ts = check(
        ts,
        active[1:] & ~(jnp.diff(ts) < 0),
        "time grid must be strictly decreasing (sampling runs from t_0 near 1 down to t_min); "
        "found a step with t_{k+1} >= t_k. Reverse an increasing grid with ts[::-1].",
    )
    ts = check(
        ts,
        active & ((ts < 0) | (ts > 1)),
        "time grid must lie in [0, 1] (forward time: 0 = data, 1 = noise).",
    )
    return ts


def _check_num_steps(num_steps, grid_steps: int):
    """`num_steps` as an int32 scalar in [1, grid_steps] (ValueError outside jit, runtime error inside)."""
    n = jnp.asarray(num_steps)
    if n.ndim != 0 or not jnp.issubdtype(n.dtype, jnp.integer):
        raise ValueError(f"num_steps must be an integer scalar (vmap over a batch of them); got {num_steps!r}.")
    n = n.astype(jnp.int32)
    return check(
        n,
        (n < 1) | (n > grid_steps),
        f"num_steps must lie in [1, {grid_steps}] (the padded grid has {grid_steps} steps).",
    )


def _step_times(ts: Array, num_steps: Array | None, segment: int | None):
    """Per-step time pairs and an activity mask, padded to whole segments.

    Inactive steps (beyond `num_steps`, or filling the last segment) get the first step's times, which
    are valid, so that their discarded results and gradients stay finite. Returns `(t, t_next, active)`
    with `active` None when every step is active.
    """
    t, t_next = ts[:-1], ts[1:]
    grid_steps = t.shape[0]
    total = grid_steps if segment is None else -(-grid_steps // segment) * segment
    if num_steps is None and total == grid_steps:
        return t, t_next, None
    pad = total - grid_steps
    t = jnp.concatenate([t, jnp.broadcast_to(ts[0], (pad,))])
    t_next = jnp.concatenate([t_next, jnp.broadcast_to(ts[1], (pad,))])
    active = jnp.arange(total, dtype=jnp.int32) < (grid_steps if num_steps is None else num_steps)
    t, t_next = jnp.where(active, t, ts[0]), jnp.where(active, t_next, ts[1])
    return t, t_next, active


_MODE_MULTIPLE = 8  # float64 vector width of AVX-512; XLA:CPU splits ragged lengths badly (3x slower)


def _pad_modes(lam: Array) -> Array:
    """Pad the mode axis of a large spectrum to a multiple of 8 with eigenvalue-1 modes (sliced off later).

    Measured on a 2-core CPU: 65 511 modes took 340 ms per 1000 steps, 65 512 modes 104 ms. Small
    spectra are left alone (nothing to gain, and their shapes stay what the caller passed).
    """
    pad = -lam.shape[-1] % _MODE_MULTIPLE
    if pad == 0 or lam.shape[-1] < 1024:
        return lam
    width = [(0, 0)] * (lam.ndim - 1) + [(0, pad)]
    return jnp.pad(lam, width, constant_values=1.0)


def _initial_state(schedule: AbstractSchedule, t0, lam, init: Init):
    mg = marginal(schedule, t0, lam)
    if init == "exact":
        return jnp.zeros_like(lam), jnp.zeros_like(lam), mg.variance
    if init == "standard":
        # x_{t0} ~ N(0, I): g = 0, v = 1; delta = 1/R^2 - 1 = (1 - lam) abar / R^2.
        return (
            jnp.broadcast_to(-mg.sqrt_alpha_bar, lam.shape),
            (1 - lam) * mg.alpha_bar / mg.variance,
            jnp.ones_like(lam),
        )
    raise ValueError(f"init must be 'standard' (x ~ N(0, I)) or 'exact' (x ~ p_t0); got {init!r}.")


def sample_law(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    ts: Float[ArrayLike, " n"],
    *,
    init: Init = "standard",
    num_steps: Int[ArrayLike, ""] | None = None,
    checkpoint: int | None = None,
) -> GaussianLaw:
    r"""The exact law of `sampler`'s output on `source`, run with the exact score along the grid `ts`.

    **Arguments:**

    - `source`: the Gaussian data law, eigenvalues `(*batch, d)`.
    - `schedule`: the noise schedule $t \mapsto \bar\alpha(t)$.
    - `sampler`: the sampler, e.g. `Heun()`, `DDIM(eta=0.0)`, `DDPM()`.
    - `ts`: forward times $t_0 > t_1 > \dots > t_N = t_{\min}$ in $[0, 1]$, shape `(N + 1,)`: $N$ steps.
    - `init`: `"standard"` ($x_{t_0} \sim \mathcal N(0, I)$, as in practice) or `"exact"`
      ($x_{t_0} \sim p_{t_0}$, isolating the discretization error).
    - `num_steps`: run only the first `num_steps` steps of `ts` (an integer in $[1, N]$, may be traced):
      the grid is `ts[:num_steps + 1]` and the remaining entries are padding, never used. One compiled
      function then serves every step count up to $N$ (vmap over padded grids and their step counts;
      `gaussdiff_jax.sweep` does this). Padded steps cost as much as real ones.
    - `checkpoint`: segment length $K$ for gradient checkpointing. Reverse-mode differentiation of the
      plain scan stores $O(Nd)$ residuals; with `checkpoint=K` the steps run in segments of $K$ whose
      insides are recomputed on the backward pass, storing $O((N/K + K)d)$ ($K \approx \sqrt N$ is
      best). Values are identical; the forward pass is unaffected.

    **Returns:** a `GaussianLaw` with fields of shape `(*batch, d)`.

    Runs one `lax.scan` over steps (memory $O(d)$ forward, independent of $N$), jit-able, vmap-able and
    differentiable with respect to the schedule's parameters and the grid.
    """
    ts = validate_grid(ts, num_steps)
    if num_steps is not None:
        num_steps = _check_num_steps(num_steps, ts.shape[0] - 1)
    if checkpoint is not None and (int(checkpoint) != checkpoint or checkpoint < 1):
        raise ValueError(f"checkpoint (segment length) must be a positive integer or None; got {checkpoint!r}.")
    lam = source.eigenvalues
    dtype = jnp.result_type(lam.dtype, ts.dtype)
    lam, ts = lam.astype(dtype), ts.astype(dtype)
    num_modes = lam.shape[-1]
    lam_run = _pad_modes(lam)
    eps0, delta0, v0 = _initial_state(schedule, ts[0], lam_run, init)
    lam, lam_full = lam_run, lam  # the scan runs on the padded modes; sliced back below

    def one_step(state, times):
        eps, delta, v = state
        t, t_next = times
        step = sampler.step(schedule, t, t_next, lam)
        a, Q = step.gain_minus_one, step.noise_variance
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        ok = mg_next.variance > 0
        # One reciprocal, two products: divisions dominate a step's cost on CPUs (~4x a multiply).
        inv_R2_next = 1 / jnp.where(ok, mg_next.variance, 1.0)
        if step.variance_defect is None:
            # e R'^2 = (R^2 - R'^2) + (2 + a) a R^2 + Q, with R^2 - R'^2 = (1 - lam)(abar' - abar).
            d_ab = schedule.alpha_bar_increment(t, t_next)
            defect = ((1 - lam) * d_ab + (2 + a) * a * mg.variance + Q) * inv_R2_next
        else:
            defect = step.variance_defect
        if step.mean_defect is None:
            d_sqrt_ab = schedule.alpha_bar_increment(t, t_next) / (mg_next.sqrt_alpha_bar + mg.sqrt_alpha_bar)
            mean_defect = a * mg.sqrt_alpha_bar + step.offset - d_sqrt_ab
        else:
            mean_defect = step.mean_defect
        delta_next = jnp.where(ok, defect + (1 + defect - Q * inv_R2_next) * delta, 0.0)
        gain = step.gain
        eps_next = gain * eps + mean_defect
        v_next = gain**2 * v + Q
        return (eps_next, delta_next, v_next), None

    t, t_next, active = _step_times(ts, num_steps, checkpoint)
    if active is None:
        steps = one_step
    else:

        def steps(state, inputs):
            *times, on = inputs
            new, _ = one_step(state, times)
            return jax.tree.map(lambda a, b: jnp.where(on, a, b), new, state), None

    inputs = (t, t_next) if active is None else (t, t_next, active)
    if checkpoint is None:
        (eps, delta, v_direct), _ = jax.lax.scan(steps, (eps0, delta0, v0), inputs)
    else:

        @jax.checkpoint
        def segment(state, seg_inputs):
            return jax.lax.scan(steps, state, seg_inputs)

        seg_inputs = jax.tree.map(lambda x: x.reshape(-1, checkpoint), inputs)
        (eps, delta, v_direct), _ = jax.lax.scan(segment, (eps0, delta0, v0), seg_inputs)
    eps, delta, v_direct = (x[..., :num_modes] for x in (eps, delta, v_direct))
    lam = lam_full
    t_final = ts[-1] if num_steps is None else ts[num_steps]
    final = marginal(schedule, t_final, lam)
    ok = final.variance > 0
    # The relative deviation is the accurate representation while it is small; once the output is far
    # from p_t (|delta| >= 1/2, e.g. a stiff last step collapsing the variance) the plain recursion,
    # a product of per-step factors, keeps the better relative accuracy.
    near = ok & (jnp.abs(delta) < 0.5)
    safe_R2 = jnp.where(ok, final.variance, 1.0)
    log_ratio = jnp.where(near, jnp.log1p(jnp.where(near, delta, 0.0)), jnp.log(v_direct) - jnp.log(safe_R2))
    variance = jnp.where(near, final.variance * (1 + delta), v_direct)
    law = GaussianLaw(
        mean_multiplier=final.sqrt_alpha_bar + eps,
        variance=variance,
        mean_deviation=eps,
        log_variance_ratio=jnp.where(ok, log_ratio, jnp.inf),
        alpha_bar_min=final.alpha_bar,
        one_minus_alpha_bar_min=final.one_minus_alpha_bar,
    )
    return _check_law(law, sampler, ok)


def _check_law(law: GaussianLaw, sampler, ok) -> GaussianLaw:
    message = (
        f"{type(sampler).__name__}: the output law is not finite. Samplers in t (Euler, Heun, RK4, EM, "
        "EI, DDPM linearized) need a finite beta(t) at every grid point (schedules with abar(1) = 0, "
        "like Tangent or Cosine, have beta(1) = inf: start at t_0 < 1 or use DDIM); Heun and RK4 also "
        "divide by R^2 = 0 at t = 0 for a zero eigenvalue (use t_min > 0); EDMHeun needs finite sigma."
    )
    bad = ~jnp.isfinite(law.variance) | ~jnp.isfinite(law.mean_multiplier) | (ok & ~jnp.isfinite(law.log_variance_ratio))
    variance = check(law.variance, bad, message)
    return eqx.tree_at(lambda l: l.variance, law, variance)


def continuous_limit(
    source: GaussianSource,
    schedule: AbstractSchedule,
    t_max: float | ArrayLike = 1.0,
    t_min: float | ArrayLike = 0.0,
    *,
    kind: Literal["sde", "ode"] = "sde",
    init: Init = "standard",
) -> GaussianLaw:
    r"""The law reached by the reverse SDE or the probability-flow ODE solved exactly from `t_max` to `t_min`.

    The $N \to \infty$ limit of every consistent sampler of that kind (MATH.md section 2). With
    `init="exact"` both are exact ($p_{t_{\min}}$); with `"standard"`, with $e^{-2\kappa} =
    \bar\alpha(t_{\max})/\bar\alpha(t_{\min})$: SDE $v = R^2_{\min} + e^{-2\kappa}\frac{R^4_{\min}}{R^2_{\max}}(\frac{1}{R^2_{\max}} - 1)$,
    ODE $v = R^2_{\min}/R^2_{\max}$.
    """
    if kind not in ("sde", "ode"):
        raise ValueError(f"continuous_limit: kind must be 'sde' or 'ode'; got {kind!r}.")
    grid = validate_grid(jnp.stack([jnp.asarray(t_max, dtype=float), jnp.asarray(t_min, dtype=float)]))
    lam = source.eigenvalues
    grid = grid.astype(jnp.result_type(lam.dtype, grid.dtype))
    hi, lo = marginal(schedule, grid[0], lam), marginal(schedule, grid[1], lam)
    ok = lo.variance > 0
    if init == "exact":
        eps, delta = jnp.zeros_like(lam), jnp.zeros_like(lam)
    elif init == "standard":
        off = (1 - lam) * hi.alpha_bar / hi.variance  # 1/R^2_max - 1
        if kind == "ode":
            eps = -hi.sqrt_alpha_bar * jnp.sqrt(lo.variance / hi.variance)
            delta = off
        else:
            decay = hi.alpha_bar / lo.alpha_bar  # e^{-2 kappa}
            eps = -hi.sqrt_alpha_bar * jnp.sqrt(decay) * lo.variance / hi.variance
            delta = decay * lo.variance / hi.variance * off
    else:
        raise ValueError(f"init must be 'standard' or 'exact'; got {init!r}.")
    variance = jnp.where(ok, lo.variance * (1 + delta), 0.0)
    return GaussianLaw(
        mean_multiplier=lo.sqrt_alpha_bar + eps,
        variance=variance,
        mean_deviation=eps,
        log_variance_ratio=jnp.where(ok, jnp.log1p(delta), jnp.inf),
        alpha_bar_min=lo.alpha_bar,
        one_minus_alpha_bar_min=lo.one_minus_alpha_bar,
    )
