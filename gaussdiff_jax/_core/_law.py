r"""The engine's entry point: run a sampler along a time grid and return the exact law of its output.

`sample_law` validates the grid, then runs one `lax.scan` over steps: one-step samplers on a scalar
per-mode state (`_onestep`: mean deviation, relative variance deviation, plain variance), multistep samplers
on a vector per-mode state (`_multistep`: slots, their mean, normalized covariance deviation, plain
covariance). Both share the step loop here (padding to a step count, gradient checkpointing) and the final
assembly of the `GaussianLaw`.
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from .._sampler import AbstractSampler, marginal
from .._sampler._multistep import AbstractMultistepSampler, StepInfo
from .._schedule import AbstractSchedule
from . import _multistep, _onestep
from .._scale._padding import pad_axis
from ._errors import check
from ._model_error import ErrorProfile
from ._source import GaussianSource

Init = Literal["standard", "exact"] | float


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


def _step_times(ts: Array, num_steps: Array | None, segment: int | None, lookahead: int = 0):
    """Per-step times and an activity mask, padded to whole segments.

    Returns `(t, t_next, active)`; with `lookahead = 1`, `t_next` is the pair `(t_{k+1}, t_{k+2})`.
    Inactive steps (beyond `num_steps`, or filling the last segment) get the first step's times, which
    are valid, so that their discarded results and gradients stay finite. `active` is None when every step
    is active.
    """
    n = ts.shape[0] - 1 - lookahead
    t = ts[:n]
    nexts = [ts[1 + j : 1 + j + n] for j in range(lookahead + 1)]
    total = n if segment is None else -(-n // segment) * segment
    if num_steps is None and total == n:
        return t, (nexts[0] if not lookahead else tuple(nexts)), None
    pad = total - n
    active = jnp.arange(total, dtype=jnp.int32) < (n if num_steps is None else num_steps)
    t = jnp.where(active, jnp.concatenate([t, jnp.broadcast_to(ts[0], (pad,))]), ts[0])
    nexts = [
        jnp.where(active, jnp.concatenate([x, jnp.broadcast_to(ts[1 + j], (pad,))]), ts[1 + j])
        for j, x in enumerate(nexts)
    ]
    return t, (nexts[0] if not lookahead else tuple(nexts)), active


_MODE_MULTIPLE = 8  # float64 vector width of AVX-512; XLA:CPU splits ragged lengths badly (3x slower)


def _pad_modes(lam: Array) -> Array:
    """Pad the mode axis of a large spectrum to a multiple of 8 with eigenvalue-1 modes (sliced off later).

    Measured on a 2-core CPU: 65 511 modes took 340 ms per 1000 steps, 65 512 modes 104 ms. Small
    spectra are left alone (nothing to gain, and their shapes stay what the caller passed).
    """
    if lam.shape[-1] < 1024:
        return lam
    return pad_axis(lam, multiple=_MODE_MULTIPLE, value=1.0)


def _init_variance(init) -> float | None:
    """The initial VP variance: None for `"exact"` (start on p_t0), 1 for `"standard"`, or the number given."""
    if isinstance(init, str):
        if init == "exact":
            return None
        if init == "standard":
            return 1.0
    elif isinstance(init, (int, float)) and not isinstance(init, bool) and math.isfinite(init) and init > 0:
        return float(init)
    raise ValueError(
        f"init must be 'standard' (x ~ N(0, I)), 'exact' (x ~ p_t0) or a positive number c (x ~ N(0, c I) in VP "
        f"units, e.g. c = 1 - abar(t0) for sigma-space pipelines that start from sigma_max * z); got {init!r}."
    )


def _run_steps(step_fn, state, ts: Array, num_steps, checkpoint: int | None, lookahead: int):
    """Fold `step_fn(state, times, index, num_steps)` over the grid's steps with one `lax.scan`.

    `lookahead` samplers get `(t_k, t_{k+1}, t_{k+2})` and make one step fewer. Padded steps (beyond
    `num_steps`) and steps filling the last checkpoint segment are masked identities.
    """
    grid_steps = ts.shape[0] - 1
    n_run = grid_steps - lookahead
    active_steps = None if num_steps is None else num_steps - lookahead
    t, t_next, active = _step_times(ts, active_steps, checkpoint, lookahead)
    total_steps = jnp.asarray(n_run if active_steps is None else active_steps, dtype=jnp.int32)
    index = jnp.arange(t.shape[0], dtype=jnp.int32)

    def body(state, inputs):
        times, k, on = inputs
        new = step_fn(state, times, StepInfo(k, total_steps))
        if on is None:
            return new, None
        return jax.tree.map(lambda a, b: jnp.where(on, a, b), new, state), None

    inputs = ((t, t_next) if not lookahead else (t, t_next[0], t_next[1]), index, active)
    if checkpoint is None:
        # Reverse mode recomputes each step from its carry instead of storing the step's ~40 per-mode
        # intermediates: loss-and-gradient at N = 50 took 63x the forward pass without this, ~10x with it.
        # The forward pass is unaffected.
        state, _ = jax.lax.scan(jax.checkpoint(body), state, inputs)
        return state

    @jax.checkpoint
    def segment(state, seg_inputs):
        # Steps rematerialized inside the segment too: its backward pass then holds K carries, not K steps'
        # intermediates (~40 per-mode vectors each).
        return jax.lax.scan(jax.checkpoint(body), state, seg_inputs)

    seg_inputs = jax.tree.map(lambda x: x.reshape(-1, checkpoint), inputs)
    state, _ = jax.lax.scan(segment, state, seg_inputs)
    return state


def sample_law(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    ts: Float[ArrayLike, " n"],
    *,
    init: Init = "standard",
    num_steps: Int[ArrayLike, ""] | None = None,
    checkpoint: int | None = None,
    model_error: ErrorProfile | None = None,
) -> GaussianLaw:
    r"""The exact law of `sampler`'s output on `source`, run with the exact score along the grid `ts`.

    **Arguments:**

    - `source`: the Gaussian data law, eigenvalues `(*batch, d)`.
    - `schedule`: the noise schedule $t \mapsto \bar\alpha(t)$.
    - `sampler`: the sampler, e.g. `Heun()`, `DDIM(eta=0.0)`, `DDPM()`, `DPMSolverPlusPlus()`.
    - `ts`: forward times $t_0 > t_1 > \dots > t_N = t_{\min}$ in $[0, 1]$, shape `(N + 1,)`: $N$ steps.
    - `init`: `"standard"` ($x_{t_0} \sim \mathcal N(0, I)$, as in practice), `"exact"`
      ($x_{t_0} \sim p_{t_0}$, isolating the discretization error), or a number $c > 0$:
      $x_{t_0} \sim \mathcal N(0, cI)$ in VP units (pipelines in $\sigma$ that start from $\sigma_{\max}z$ have
      $c = 1 - \bar\alpha(t_0)$).
    - `num_steps`: run only the first `num_steps` steps of `ts` (an integer in $[1, N]$, may be traced):
      the grid is `ts[:num_steps + 1]` and the remaining entries are padding, never used. One compiled
      function then serves every step count up to $N$ (vmap over padded grids and their step counts;
      `gaussdiff_jax.sweep` does this). Padded steps cost as much as real ones.
    - `checkpoint`: segment length $K$ for gradient checkpointing. By default reverse-mode differentiation
      stores the state after every step ($O(Nd)$) and recomputes each step's intermediates from it; with
      `checkpoint=K` the steps run in segments of $K$ whose insides are recomputed on the backward pass,
      storing $O((N/K + K)d)$ ($K \approx \sqrt N$ is best). Values are identical; the forward pass is
      unaffected.
    - `model_error`: a network's denoiser error (`ErrorProfile`), propagated exactly through every
      evaluation (independent zero-mean errors per evaluation; see `gaussdiff_jax._core._model_error`).

    **Returns:** a `GaussianLaw` with fields of shape `(*batch, d)`, at $t_N$ (at $t_{N-1}$ for samplers
    with `lookahead`, e.g. `JainZhang`).

    Runs one `lax.scan` over steps (memory $O(d)$ forward, independent of $N$), jit-able, vmap-able and
    differentiable with respect to the schedule's parameters and the grid.
    """
    ts, num_steps, lookahead = _checked_run(sampler, ts, num_steps, checkpoint, model_error)
    init_variance = _init_variance(init)
    lam = source.eigenvalues
    dtype = jnp.result_type(lam.dtype, ts.dtype)
    lam, ts = lam.astype(dtype), ts.astype(dtype)
    num_modes = lam.shape[-1]
    lam_run = _pad_modes(lam)

    if isinstance(sampler, AbstractMultistepSampler):
        state = _multistep.initial_state(sampler, schedule, ts[0], lam_run, init_variance, model_error)

        def step_fn(state, times, info):
            return _multistep.multistep_step(sampler, schedule, lam_run, model_error, state, times[1], info)

        state = _run_steps(step_fn, state, ts, num_steps, checkpoint, 0)
        level, eps, delta, v_direct = _multistep.final_moments(state)
        final = marginal(schedule, level.t, lam)
    else:
        state = _onestep.initial_state(schedule, ts[0], lam_run, init_variance)

        def step_fn(state, times, info):
            return _onestep.onestep_step(sampler, schedule, lam_run, model_error, state, times)

        eps, delta, v_direct = _run_steps(step_fn, state, ts, num_steps, checkpoint, lookahead)
        last = ts.shape[0] - 1 - lookahead if num_steps is None else num_steps - lookahead
        final = marginal(schedule, ts[last], lam)
    eps, delta, v_direct = (x[..., :num_modes] for x in (eps, delta, v_direct))
    # The relative deviation is the accurate representation while it is small. Below that the one-step engine's
    # plain variance, a product of per-step factors, keeps the better relative accuracy (a stiff last step
    # collapsing the variance); the multistep engine's is a quadratic form in weights of size ~50 on a large last
    # step (PLMS's Adams-Bashforth on noise predictions) that cancels as much as the deviation does, so there the
    # deviation is kept down to a tenth of p_t's variance (PLMS, N = 10: 67 % -> 6e-5 in float32).
    lowest = -0.9 if isinstance(sampler, AbstractMultistepSampler) else -0.5
    return _check_law(_assemble(final, eps, delta, v_direct, lowest), sampler, final.variance > 0)


def _checked_run(sampler, ts, num_steps, checkpoint, model_error):
    """`sample_law`'s run options checked: the validated grid, the checked step count, the sampler's lookahead."""
    ts = validate_grid(ts, num_steps)
    if num_steps is not None:
        num_steps = _check_num_steps(num_steps, ts.shape[0] - 1)
    if checkpoint is not None and (int(checkpoint) != checkpoint or checkpoint < 1):
        raise ValueError(f"checkpoint (segment length) must be a positive integer or None; got {checkpoint!r}.")
    lookahead = int(getattr(sampler, "lookahead", 0))
    if ts.shape[0] - 1 <= lookahead:
        raise ValueError(
            f"{type(sampler).__name__} needs at least {lookahead + 2} grid points (one step spans "
            f"{lookahead + 2}); got {ts.shape[0]}."
        )
    if model_error is not None and not isinstance(model_error, ErrorProfile):
        raise ValueError(f"model_error must be a gdj.ErrorProfile or None; got {type(model_error).__name__}.")
    return ts, num_steps, lookahead


def _assemble(final, eps, delta, v_direct, lowest_deviation: float) -> GaussianLaw:
    """The `GaussianLaw` from the deviations at the final time; the relative deviation is used where it lies in
    `(lowest_deviation, 1/2)`, the engine's plain variance elsewhere."""
    ok = final.variance > 0
    near = ok & (delta < 0.5) & (delta > lowest_deviation)
    safe_R2 = jnp.where(ok, final.variance, 1.0)
    safe_v = jnp.where(v_direct > 0, v_direct, 1.0)
    log_ratio = jnp.where(near, jnp.log1p(jnp.where(near, delta, 0.0)), jnp.log(safe_v) - jnp.log(safe_R2))
    log_ratio = jnp.where(near | (v_direct > 0), log_ratio, -jnp.inf)
    return GaussianLaw(
        mean_multiplier=final.sqrt_alpha_bar + eps,
        variance=jnp.where(near, final.variance * (1 + delta), v_direct),
        mean_deviation=eps,
        log_variance_ratio=jnp.where(ok, log_ratio, jnp.inf),
        alpha_bar_min=final.alpha_bar,
        one_minus_alpha_bar_min=final.one_minus_alpha_bar,
    )


def _check_law(law: GaussianLaw, sampler, ok) -> GaussianLaw:
    message = (
        f"{type(sampler).__name__}: the output law is not finite. Samplers in t (Euler, Heun, RK4, EM, "
        "EI, DDPM linearized) need a finite beta(t) at every grid point (schedules with abar(1) = 0, "
        "like Tangent or Cosine, have beta(1) = inf: start at t_0 < 1 or use DDIM); Heun and RK4 also "
        "divide by R^2 = 0 at t = 0 for a zero eigenvalue (use t_min > 0); EDMHeun needs finite sigma."
    )
    if law.variance.dtype == jnp.float32:
        message += (
            " In float32, a long first step from abar ~ 0 can cancel terms ~1/sqrt(abar) apart (e.g. PNDM's "
            "Runge-Kutta warm-up with N <= 2 from t = 1): run in float64 or start at t_0 < 1."
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
