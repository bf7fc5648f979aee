r"""Schedules built from another schedule: a noise floor added, or a sub-interval of time stretched to $[0, 1]$."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractSchedule, Time


class SigmaFloor(AbstractSchedule):
    r"""`base` lifted by a noise floor: $\sigma(t)^2 = \sigma_{\rm base}(t)^2 + \sigma_{\min}^2$.

    Carries a schedule designed for the spectrum $\lambda + \sigma_{\min}^2$ to the problem truncated at
    noise level $\sigma_{\min}$: in $\bar x = x/\sqrt{\bar\alpha}$ the probability-flow ODE depends only on
    $\lambda + \sigma^2$, so shifting $\sigma^2$ by $+\sigma_{\min}^2$ and $\lambda$ by $-\sigma_{\min}^2$
    leaves it unchanged. (An asymptotic correspondence, not an exact finite-$N$ one.) The command line
    uses it to run the Euler–Lagrange optimum (`euler_lagrange_schedule`) down to $\sigma_{\min} > 0$.

    **Arguments:**

    - `base`: any schedule; where $\sigma_{\rm base} = 0$ this one has $\sigma = \sigma_{\min}$.
    - `sigma_min`: the floor, $\ge 0$ (static; 0 gives `base` back).
    """

    base: AbstractSchedule
    sigma_min: float = eqx.field(static=True)

    def __init__(self, base: AbstractSchedule, sigma_min: float):
        if not (math.isfinite(float(sigma_min)) and float(sigma_min) >= 0):
            raise ValueError(f"SigmaFloor: sigma_min must be finite and >= 0; got {sigma_min}.")
        self.base, self.sigma_min = base, float(sigma_min)

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        if self.sigma_min == 0:
            return self.base.log_snr(t)
        # -log(sigma_base^2 + sigma_min^2) = -logaddexp(-l_base, 2 log sigma_min): no overflow at sigma = inf.
        return -jnp.logaddexp(-self.base.log_snr(t), 2.0 * math.log(self.sigma_min))

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        r"""$\beta = \frac{d}{dt}\log(1 + \sigma^2) = 2\sigma_b\sigma_b' / (1 + \sigma_b^2 + \sigma_{\min}^2)$.

        From the base's noise level and its derivative, so it stays finite where $\sigma_b = 0$: autodiff
        of the log-SNR would give $0 \cdot \infty$ there (e.g. the Euler-Lagrange optimum at $t = 0$).
        """
        if self.sigma_min == 0:
            return self.base.beta(t)
        t = jnp.asarray(t)
        s, ds = jax.jvp(self.base.sigma, (t,), (jnp.ones_like(t),))
        big = s > 1e100  # 2 s s' / s^2 without overflow
        s_small, s_big = jnp.where(big, 0.0, s), jnp.where(big, s, 1.0)
        direct = jnp.where(big, 2 * ds / s_big, 2 * s_small * ds / (1 + s_small**2 + self.sigma_min**2))
        # Where the base's sigma has no finite derivative (a sigma computed as exp(-l/2) at l = inf, or
        # alpha_bar = 0): the same beta from the base's, beta_b (1 + s^2) / (1 + s^2 + m^2).
        rescaled = self.base.beta(t) / (1 + self.sigma_min**2 * self.base.alpha_bar(t))
        return jnp.where(jnp.isfinite(direct), direct, rescaled)


class SubInterval(AbstractSchedule):
    r"""`base` on the time interval $[t_{\rm lo}, t_{\rm hi}]$, stretched to $[0, 1]$: $t \mapsto$ `base`$(t_{\rm lo} + (t_{\rm hi} - t_{\rm lo})t)$.

    Lets a `TimeWarp` (which fixes $t = 0$ and $t = 1$) reshape a schedule between two given noise levels
    without moving them: `WarpedSchedule(SubInterval(base, t(sigma_min), t(sigma_max)), warp)`.

    **Arguments:**

    - `base`: any schedule.
    - `t_lo`, `t_hi`: the interval, $0 \le t_{\rm lo} < t_{\rm hi} \le 1$ (static).
    """

    base: AbstractSchedule
    t_lo: float = eqx.field(static=True)
    t_hi: float = eqx.field(static=True)

    def __init__(self, base: AbstractSchedule, t_lo: float, t_hi: float):
        if not (0.0 <= float(t_lo) < float(t_hi) <= 1.0):
            raise ValueError(f"SubInterval: need 0 <= t_lo < t_hi <= 1; got t_lo={t_lo}, t_hi={t_hi}.")
        self.base, self.t_lo, self.t_hi = base, float(t_lo), float(t_hi)

    def _t(self, t: Time):
        return self.t_lo + (self.t_hi - self.t_lo) * jnp.asarray(t)

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.log_snr(self._t(t))

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.alpha_bar(self._t(t))

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.one_minus_alpha_bar(self._t(t))

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.log_alpha_bar(self._t(t))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.sigma(self._t(t))

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        return self.base.beta(self._t(t)) * (self.t_hi - self.t_lo)

    def alpha_bar_increment(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        return self.base.alpha_bar_increment(self._t(t), self._t(t_next))

    def log_alpha_bar_ratio(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        return self.base.log_alpha_bar_ratio(self._t(t), self._t(t_next))
