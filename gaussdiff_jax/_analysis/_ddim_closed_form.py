r"""Deterministic DDIM in closed form: the rotation formula (MATH.md section 4).

Per mode, write the exact marginal $\mathcal N(\sqrt{\bar\alpha}\,m, R^2)$ in polar form,
$(\sqrt{\lambda\bar\alpha}, \sqrt{1-\bar\alpha}) = R\,(\cos\theta, \sin\theta)$, i.e.
$\theta = \mathrm{atan2}(\sqrt{1-\bar\alpha}, \sqrt{\lambda\bar\alpha}) = \arctan(\sigma/\sqrt\lambda)$.
A DDIM step ($\eta = 0$) multiplies the centred coordinate $z = y - \sqrt{\bar\alpha}\,m$ by
$g_k = \cos(\Delta\theta_k)\,R_{k+1}/R_k$, so after $N$ steps

$$\ln\frac{v_N}{R^2(t_N)} = \sum_k \ln\cos^2\Delta\theta_k + \ln\frac{v_0}{R^2(t_0)},\qquad
  \epsilon_N = \epsilon_0\,\frac{R(t_N)}{R(t_0)}\prod_k\cos\Delta\theta_k ,$$

with $v_0 = 1$, $\epsilon_0 = -\sqrt{\bar\alpha(t_0)}$ for `init="standard"` and $v_0 = R^2(t_0)$,
$\epsilon_0 = 0$ for `"exact"`. No recursion is needed: a sum over steps of per-step terms, each
computed without cancellation from $\sin\Delta\theta = \sqrt\lambda\,(\bar\alpha'-\bar\alpha)/
(R R'(\sqrt{(1-\bar\alpha)\bar\alpha'} + \sqrt{\bar\alpha(1-\bar\alpha')}))$, where the increment
$\bar\alpha' - \bar\alpha$ comes from the schedule's own accurate `alpha_bar_increment`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._law import GaussianLaw, Init, validate_grid
from .._core._numerics import safe_sqrt
from .._schedule import AbstractSchedule
from .._core._source import GaussianSource

# Largest number of (step x mode) terms evaluated at once; above it the sum over steps runs in
# checkpointed chunks, so memory stays O(chunk x d) instead of O(N x d) (also under reverse mode).
_MAX_BLOCK = 1 << 22


def _nonnegative(x: Array) -> Array:
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def log_cos_squared_steps(schedule: AbstractSchedule, ts: Array, lam: Array) -> tuple[Array, Array, Array]:
    r"""Per step and mode, $\ln\cos^2\Delta\theta \le 0$ along the grid `ts` (points on the leading axis).

    `ts` has shape `(n + 1, 1, ..., 1)` (broadcasting against `lam`); returns the `n` per-step terms and
    $\bar\alpha$, $1 - \bar\alpha$ at the points. A term is exactly 0 for a zero-length step and $-\infty$ where
    the step ends on a zero-variance marginal ($\lambda = 0$ at $\bar\alpha' = 1$: a quarter turn).

    With $(\sqrt{\bar\alpha}, \sqrt{1-\bar\alpha}) = (\cos\psi, \sin\psi)$, $\tan\theta = \tan\psi/\sqrt\lambda$, so
    $\tan\Delta\theta = \sqrt\lambda\,\sin\Delta\psi / (\lambda\cos\psi\cos\psi' + \sin\psi\sin\psi')$ and
    $\ln\cos^2\Delta\theta = -\operatorname{log1p}(\tan^2\Delta\theta)$: per mode and step one multiply-add, one
    division and one `log1p`, every term positive (no cancellation). The per-step factors are computed once per
    step: $\sin\Delta\psi = (\bar\alpha' - \bar\alpha)/(\sqrt{(1-\bar\alpha)\bar\alpha'} + \sqrt{\bar\alpha(1-\bar\alpha')})$
    from the schedule's accurate `alpha_bar_increment` (no difference of nearby square roots).
    """
    # Clamped at 0: compiled closed forms may return -1e-20 for an exact 0 (e.g. Cosine at t = 0 under jit).
    ab_all = _nonnegative(schedule.alpha_bar(ts))
    om_all = _nonnegative(schedule.one_minus_alpha_bar(ts))
    d_ab = _nonnegative(schedule.alpha_bar_increment(ts[:-1], ts[1:]))
    ab, ab_n, om, om_n = ab_all[:-1], ab_all[1:], om_all[:-1], om_all[1:]
    cross = safe_sqrt(om * ab_n) + safe_sqrt(ab * om_n)
    sin_step = d_ab / jnp.where(cross > 0, cross, 1.0)  # cross = 0 only for a zero-length step (d_ab = 0)
    # The denominator is 0 only on a step that ends on a zero-variance marginal (the clean point, 1 - abar' = 0).
    # It is clamped below at sqrt(tiny) (1e-154 in float64, 1e-19 in float32), whose square is still normal:
    # tan = inf (a quarter turn, -inf) for lambda > 0 at the last step of a one-step grid from t = 1; for
    # lambda = 0 tan = 0 with a finite gradient (that mode has R^2 = 0 at the end and is masked by the caller).
    # Exact otherwise, unless lambda sqrt(abar abar') is below the clamp on a step ending at the clean point.
    # No `where` on the (steps, modes) terms: XLA's CPU backend then hands the terms and their sum over steps to
    # YNNPACK, whose vectorized float64 log1p is ~4x faster than the scalar one of XLA's own loops
    # (benchmarks/README.md); a `where` on the terms, or on the denominator (its transpose), prevents that.
    floor = math.sqrt(jnp.finfo(lam.dtype).tiny)
    denominator = jnp.maximum(lam * safe_sqrt(ab * ab_n) + safe_sqrt(om * om_n), floor)
    tan = safe_sqrt(lam) * sin_step / denominator
    return -jnp.log1p(tan * tan), ab_all, om_all


def _sum_log_cos_squared(schedule, ts, lam, dtype, max_block):
    """Sum over steps of `log_cos_squared_steps`, plus abar and 1 - abar at both ends of the grid."""
    n = ts.shape[0] - 1
    size = max(1, math.prod(lam.shape))
    expand = (slice(None),) + (None,) * lam.ndim
    if n * size <= max_block:
        terms, ab, om = log_cos_squared_steps(schedule, ts[expand], lam)
        ends = (ab[0], om[0], ab[-1], om[-1])
        return jnp.sum(terms, axis=0).astype(dtype), tuple(jnp.reshape(x, ()) for x in ends)
    # Chunks of `chunk` steps share their end points; the grid is padded with copies of its last point
    # (zero-length steps, whose terms vanish).
    chunk = max(1, max_block // size)
    num_chunks = -(-n // chunk)
    padded = jnp.concatenate([ts, jnp.full((num_chunks * chunk - n,), ts[-1], ts.dtype)])
    windows = padded[jnp.arange(num_chunks)[:, None] * chunk + jnp.arange(chunk + 1)[None, :]]

    @jax.checkpoint
    def body(total, window):
        terms, _, _ = log_cos_squared_steps(schedule, window[expand], lam)
        return total + jnp.sum(terms, axis=0), None

    total, _ = jax.lax.scan(body, jnp.zeros(lam.shape, dtype), windows)
    end_points = jnp.stack([ts[0], ts[-1]])
    ab, om = _nonnegative(schedule.alpha_bar(end_points)), _nonnegative(schedule.one_minus_alpha_bar(end_points))
    return total, (ab[0], om[0], ab[1], om[1])


def ddim_law(
    source: GaussianSource,
    schedule: AbstractSchedule,
    ts: Float[ArrayLike, " n"],
    *,
    init: Init = "standard",
) -> GaussianLaw:
    r"""The exact output law of deterministic DDIM ($\eta = 0$) by the rotation formula.

    Equal to `sample_law(source, schedule, DDIM(), ts, init=init)` (same `GaussianLaw` fields), but
    computed as a sum over steps of $\ln\cos^2\Delta\theta_k$ (see `gaussdiff_jax._ddim_closed_form`)
    instead of a sequential recursion: vectorized over steps and modes, exact in float32 on fine
    grids, and cheap to differentiate. The fast path for optimizing DDIM schedules and grids.

    **Arguments:**

    - `source`: eigenvalues `(*batch, d)`.
    - `schedule`: any schedule; only $\bar\alpha$ at the grid points is used ($\bar\alpha(t_0) = 0$ is fine).
    - `ts`: forward times $t_0 > \dots > t_N$ in $[0, 1]$, shape `(N + 1,)`.
    - `init`: `"standard"` ($x_{t_0} \sim \mathcal N(0, I)$) or `"exact"` ($x_{t_0} \sim p_{t_0}$).

    **Returns:** a `GaussianLaw` with fields of shape `(*batch, d)`. Memory is $O(d)$ per block of
    steps ($N \cdot d$ above $2^{22}$ is processed in checkpointed chunks).
    """
    if init not in ("standard", "exact"):
        raise ValueError(f"init must be 'standard' (x ~ N(0, I)) or 'exact' (x ~ p_t0); got {init!r}.")
    ts = validate_grid(ts)
    lam = source.eigenvalues
    dtype = jnp.result_type(lam.dtype, ts.dtype)
    lam, ts = lam.astype(dtype), ts.astype(dtype)

    log_cos2, (ab0, om0, abN, omN) = _sum_log_cos_squared(schedule, ts, lam, dtype, _MAX_BLOCK)
    R2_0, R2_N = ab0 * lam + om0, abN * lam + omN
    ok = R2_N > 0
    if init == "standard":
        # ln(1 / R0^2) = -log1p(abar0 (lam - 1)), exact near abar0 = 0.
        init_log_ratio = -jnp.log1p(ab0 * (lam - 1))
        # eps_N = -sqrt(abar0) (R_N / R_0) prod cos, prod cos = exp(sum ln cos^2 / 2).
        R_ratio = safe_sqrt(R2_N / jnp.where(R2_0 > 0, R2_0, 1.0))
        eps = -safe_sqrt(ab0) * R_ratio * jnp.exp(0.5 * log_cos2)
    else:
        init_log_ratio = jnp.zeros_like(lam)
        eps = jnp.zeros_like(lam)
    log_ratio = log_cos2 + init_log_ratio
    safe_log_ratio = jnp.where(ok, log_ratio, 0.0)
    variance = jnp.where(ok, R2_N * jnp.exp(safe_log_ratio), 0.0)
    return GaussianLaw(
        mean_multiplier=safe_sqrt(abN) + eps,
        variance=variance,
        mean_deviation=eps,
        log_variance_ratio=jnp.where(ok, log_ratio, jnp.inf),
        alpha_bar_min=abN,
        one_minus_alpha_bar_min=omN,
    )
