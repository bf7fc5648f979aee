"""Learnable schedules and time grids, parameterized so that any optimizer step keeps them valid."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._schedule import AbstractSchedule, Tangent
from .._schedule._base import Time


def _positive_increments(logits: Array) -> Array:
    """Softmax increments, positive and summing to one for any real logits.

    A floor of a few ulps keeps every increment representable (softmax alone underflows to 0 for
    spread logits, e.g. during an L-BFGS line search), so grids stay strictly monotone.
    """
    floor = 16 * jnp.finfo(logits.dtype).eps
    return (jax.nn.softmax(logits) + floor) / (1 + logits.shape[-1] * floor)


class TimeWarp(eqx.Module):
    r"""A learnable increasing bijection $w: [0, 1] \to [0, 1]$ with $w(0) = 0$, $w(1) = 1$.

    Piecewise linear on `num_knots` uniform intervals; the rise of interval $j$ is `softmax(logits)[j]`,
    so every real `logits` vector is a valid warp and no optimizer step can break monotonicity or the
    endpoints. Initialized to the identity (zero logits).
    """

    logits: Float[Array, " K"]

    def __init__(self, num_knots: int = 32, *, logits: Float[ArrayLike, " K"] | None = None):
        if logits is None:
            if int(num_knots) < 1:
                raise ValueError(f"TimeWarp: num_knots must be >= 1; got {num_knots}.")
            logits = jnp.zeros(int(num_knots))
        self.logits = jnp.asarray(logits, dtype=jnp.result_type(float))

    @classmethod
    def from_values(cls, values: Float[ArrayLike, " K+1"]) -> "TimeWarp":
        """The warp through the given knot values $0 = w_0 < w_1 < \\dots < w_K = 1$ (uniform knots)."""
        values = np.asarray(values, dtype=np.float64)
        rises = np.diff(values)
        if values.ndim != 1 or not np.all(rises > 0) or abs(values[0]) > 1e-12 or abs(values[-1] - 1) > 1e-12:
            raise ValueError("TimeWarp.from_values: need strictly increasing values from 0 to 1.")
        return cls(logits=np.log(rises))

    @property
    def num_knots(self) -> int:
        return self.logits.shape[0]

    def values(self) -> Float[Array, " K+1"]:
        """Warp values at the knots $j/K$, $j = 0..K$ (exactly 0 and 1 at the ends)."""
        rises = _positive_increments(self.logits)
        inner = jnp.cumsum(rises)[:-1]
        return jnp.concatenate([jnp.zeros(1, rises.dtype), inner, jnp.ones(1, rises.dtype)])

    def __call__(self, t: Time) -> Float[Array, "*shape"]:
        K = self.num_knots
        knots = jnp.linspace(0.0, 1.0, K + 1, dtype=self.logits.dtype)
        return jnp.interp(jnp.asarray(t), knots, self.values())

    def derivative(self, t: Time) -> Float[Array, "*shape"]:
        """$w'(t)$ (piecewise constant; right-continuous, the last interval at $t = 1$)."""
        K = self.num_knots
        index = jnp.clip(jnp.floor(jnp.asarray(t) * K).astype(jnp.int32), 0, K - 1)
        return K * _positive_increments(self.logits)[index]


class WarpedSchedule(AbstractSchedule):
    r"""The schedule $t \mapsto$ `base`$(w(t))$: a base schedule run on a warped clock.

    Every quantity is the base's at the warped time, so the base's accurate closed forms are kept;
    $\beta(t) = \beta_{\rm base}(w(t))\,w'(t)$. With a `TimeWarp` this is a flexible monotone schedule
    with the base's endpoints (e.g. $\bar\alpha(0) = 1$, $\bar\alpha(1) = 0$ for `Tangent()`).
    """

    base: AbstractSchedule
    warp: TimeWarp

    def log_snr(self, t: Time):
        return self.base.log_snr(self.warp(t))

    def alpha_bar(self, t: Time):
        return self.base.alpha_bar(self.warp(t))

    def one_minus_alpha_bar(self, t: Time):
        return self.base.one_minus_alpha_bar(self.warp(t))

    def log_alpha_bar(self, t: Time):
        return self.base.log_alpha_bar(self.warp(t))

    def sigma(self, t: Time):
        return self.base.sigma(self.warp(t))

    def beta(self, t: Time):
        return self.base.beta(self.warp(t)) * self.warp.derivative(t)

    def alpha_bar_increment(self, t: Time, t_next: Time):
        return self.base.alpha_bar_increment(self.warp(t), self.warp(t_next))

    def log_alpha_bar_ratio(self, t: Time, t_next: Time):
        return self.base.log_alpha_bar_ratio(self.warp(t), self.warp(t_next))


def LearnableSchedule(num_knots: int = 32, base: AbstractSchedule | None = None) -> WarpedSchedule:
    r"""A flexible learnable schedule: `base` (default `Tangent(1.0)`, i.e. $\sigma = \tan(\pi t/2)$) on an
    identity-initialized `TimeWarp` with `num_knots` intervals. Optimize it with `gdj.optimize`."""
    return WarpedSchedule(Tangent(1.0) if base is None else base, TimeWarp(num_knots))


class LearnableGrid(eqx.Module):
    r"""A learnable time grid $t_{\max} = t_0 > t_1 > \dots > t_N = t_{\min}$ with fixed endpoints.

    The $N$ step lengths are $(t_{\max} - t_{\min})\,\mathrm{softmax}(\text{logits})$: any real logits
    give a valid strictly decreasing grid. `times()` returns the grid; it starts uniform.
    The endpoints are static (never trained).
    """

    logits: Float[Array, " N"]
    t_max: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)

    def __init__(
        self,
        num_steps: int,
        t_max: float = 1.0,
        t_min: float = 0.0,
        *,
        logits: Float[ArrayLike, " N"] | None = None,
    ):
        if not (0.0 <= float(t_min) < float(t_max) <= 1.0):
            raise ValueError(f"LearnableGrid: need 0 <= t_min < t_max <= 1; got t_max={t_max}, t_min={t_min}.")
        if logits is None:
            if int(num_steps) < 1:
                raise ValueError(f"LearnableGrid: num_steps must be >= 1; got {num_steps}.")
            logits = jnp.zeros(int(num_steps))
        self.logits = jnp.asarray(logits, dtype=jnp.result_type(float))
        self.t_max, self.t_min = float(t_max), float(t_min)

    @classmethod
    def from_times(cls, ts: Float[ArrayLike, " N+1"]) -> "LearnableGrid":
        """The learnable grid that starts at the given strictly decreasing times (endpoints kept)."""
        ts = np.asarray(ts, dtype=np.float64)
        steps = -np.diff(ts)
        if ts.ndim != 1 or ts.shape[0] < 2 or not np.all(steps > 0):
            raise ValueError("LearnableGrid.from_times: need a strictly decreasing 1-D grid of >= 2 points.")
        return cls(ts.shape[0] - 1, float(ts[0]), float(ts[-1]), logits=np.log(steps))

    @property
    def num_steps(self) -> int:
        return self.logits.shape[0]

    def times(self) -> Float[Array, " N+1"]:
        """The grid, shape `(num_steps + 1,)`, exactly `t_max` first and `t_min` last."""
        fractions = jnp.cumsum(_positive_increments(self.logits))[:-1]
        inner = self.t_max - (self.t_max - self.t_min) * fractions
        dtype = inner.dtype
        return jnp.concatenate([jnp.full(1, self.t_max, dtype), inner, jnp.full(1, self.t_min, dtype)])
