r"""Inverting a schedule: the time at which it reaches a log-SNR or a noise level.

Used by the grids defined by noise levels, by `gdj.grids.time_of_sigma` users (the command line maps
`--sigma-max` / `--sigma-min` to times with it), and by `is_clean` (does a grid end on the clean sample).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._schedule import AbstractSchedule


def _float_dtype():
    return jnp.result_type(float)


@eqx.filter_jit
def _log_snr_compiled(schedule: AbstractSchedule, t):
    return schedule.log_snr(t)


def _log_snr(schedule: AbstractSchedule, t) -> np.ndarray:
    # Compiled once per schedule type and shape: the bisection below calls it 64 times.
    return np.asarray(_log_snr_compiled(schedule, jnp.asarray(t, dtype=_float_dtype())), dtype=np.float64)


def is_clean(schedule: AbstractSchedule, t: float) -> bool:
    r"""Whether $\sigma(t) = 0$ ($\bar\alpha(t) = 1$, infinite log-SNR): a grid ending there ends on the clean sample."""
    return bool(np.isposinf(_log_snr(schedule, t)))


def time_of_log_snr(
    schedule: AbstractSchedule,
    log_snr: Float[ArrayLike, "*shape"],
    *,
    t_lo: float = 0.0,
    t_hi: float = 1.0,
) -> Float[Array, "*shape"]:
    r"""Invert the schedule: the time $t \in [t_{\rm lo}, t_{\rm hi}]$ with $\ell(t) =$ `log_snr`.

    Multisection (the log-SNR is decreasing): each round evaluates 255 points of every bracket in one
    compiled call and keeps the sub-interval holding the crossing; 8 rounds shrink it by $2^{64}$, to float64
    round-off (as 64 bisections would, in 8 calls instead of 64). Values outside the range of $\ell$ on the
    interval clip to its ends. Works for every schedule, including learned ones.
    """
    target = np.asarray(log_snr, dtype=np.float64)
    lo = np.full(target.shape, float(t_lo))
    hi = np.full(target.shape, float(t_hi))
    fractions = np.arange(1, _PROBES + 1) / (_PROBES + 1)
    for _ in range(8):
        points = lo[..., None] + (hi - lo)[..., None] * fractions  # (*shape, probes), increasing in t
        above = _log_snr(schedule, points) > target[..., None]  # still too clean: the answer is later
        k = np.sum(above, axis=-1)  # points[k - 1] is above the target, points[k] is not
        new_lo = np.where(k > 0, np.take_along_axis(points, np.maximum(k - 1, 0)[..., None], -1)[..., 0], lo)
        hi = np.where(k < _PROBES, np.take_along_axis(points, np.minimum(k, _PROBES - 1)[..., None], -1)[..., 0], hi)
        lo = new_lo
    return jnp.asarray(0.5 * (lo + hi), dtype=_float_dtype())


_PROBES = 255


def time_of_sigma(
    schedule: AbstractSchedule,
    sigma: Float[ArrayLike, "*shape"],
    *,
    t_lo: float = 0.0,
    t_hi: float = 1.0,
    clip: bool = False,
) -> Float[Array, "*shape"]:
    r"""The time $t \in [t_{\rm lo}, t_{\rm hi}]$ at which the schedule's noise level $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$ equals `sigma`.

    **Arguments:**

    - `schedule`: any schedule (bisection on its log-SNR, to float64 round-off).
    - `sigma`: noise levels $\ge 0$, any shape. $\sigma = 0$ is allowed where the schedule reaches it
      (a clean end, e.g. `LinearBeta` at $t = 0$) and $\sigma = \infty$ where it reaches $\bar\alpha = 0$
      (e.g. `Cosine` at $t = 1$).
    - `t_lo`, `t_hi`: the time interval searched (default $[0, 1]$).
    - `clip`: what to do with a level the schedule does not reach on the interval: `False` (default)
      raises, `True` returns the nearest end.

    Levels within $10^{-9}$ (relative, in log-SNR) of the interval's ends return exactly `t_lo` / `t_hi`,
    so $\sigma(t_{\max})$ and $\sigma(t_{\min})$ of a grid map back to its ends despite round-off.

    **Raises:** `ValueError` for a negative or NaN level, or (unless `clip`) one outside the schedule's
    range $[\sigma(t_{\rm lo}), \sigma(t_{\rm hi})]$, naming that range. Out-of-range levels are an error
    by default because clamping them silently changes the problem (e.g. asking `LinearBeta` for
    $\sigma = \infty$ would start at its $\sigma(1) \approx 152$).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    if np.any(~(sigma >= 0)):
        raise ValueError(f"time_of_sigma: noise levels must be >= 0 (and not NaN); got {sigma.min()}.")
    with np.errstate(divide="ignore"):
        target = -2.0 * np.log(sigma)  # +inf at sigma = 0, -inf at sigma = inf
    ell_lo, ell_hi = float(_log_snr(schedule, float(t_lo))), float(_log_snr(schedule, float(t_hi)))
    at_lo, at_hi = _near(target, ell_lo), _near(target, ell_hi)
    outside = ~(at_lo | at_hi) & ((target > ell_lo) | (target < ell_hi))
    if np.any(outside) and not clip:
        bad = float(sigma[outside].flat[0])
        raise ValueError(
            f"time_of_sigma: {type(schedule).__name__} does not reach sigma = {bad:.6g} for t in [{t_lo}, {t_hi}]: its "
            f"noise levels run from {math.exp(-0.5 * ell_lo):.6g} to {math.exp(-0.5 * ell_hi):.6g}. Ask for a level "
            "in that range (or pass clip=True for the nearest end)."
        )
    inside = ~(at_lo | at_hi | outside)  # finite levels strictly inside the range: bisection
    ts = np.asarray(time_of_log_snr(schedule, np.where(inside, target, 0.0), t_lo=t_lo, t_hi=t_hi))
    ts = np.where(at_hi | (outside & (target < ell_hi)), float(t_hi), ts)
    ts = np.where(at_lo | (outside & (target > ell_lo)), float(t_lo), ts)
    return jnp.asarray(ts, dtype=_float_dtype())


def _near(target: np.ndarray, end: float) -> np.ndarray:
    """Whether log-SNR values equal `end` up to 1e-9 relative (exactly, for an infinite end)."""
    if not math.isfinite(end):
        return target == end
    with np.errstate(invalid="ignore"):
        return np.abs(target - end) <= 1e-9 * max(1.0, abs(end))
