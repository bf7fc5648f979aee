r"""Closed-form noise schedules: linear beta, cosine, EDM (Karras), linear log-SNR, tangent.

Every schedule is defined, with NaN-free derivatives in $t$ and in its parameters, on the closed interval
$t \in [0, 1]$: where a quantity is infinite at an end point ($\log$-SNR at $\bar\alpha \in \{0, 1\}$, $\sigma$
and $\beta$ at $\bar\alpha = 0$) it is `inf` with derivative 0 there (it is infinite for every parameter value),
through `_log` and `_over` below.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._errors import check
from .._core._numerics import safe_sqrt
from ._base import AbstractSchedule, Time


@jax.custom_jvp
def _log(x):
    """`log(x)` for `x >= 0`: `-inf` at 0 with derivative 0 there (not `inf * 0 = NaN`)."""
    return jnp.log(x)


@_log.defjvp
def _log_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    positive = x > 0
    return jnp.log(x), jnp.where(positive, dx / jnp.where(positive, x, 1.0), 0.0)


def _held_if_infinite(x):
    """`x`, with derivative 0 where it is infinite (there it is infinite for every parameter value; finite terms
    added to an infinite one would otherwise leave a meaningless derivative)."""
    return jnp.where(jnp.isfinite(x), x, jax.lax.stop_gradient(x))


@jax.custom_jvp
def _over(a, b):
    """`a / b` for `a > 0`, `b >= 0`: `inf` at `b = 0` with derivative 0 there."""
    return a / b


@_over.defjvp
def _over_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    positive = b > 0
    safe_b = jnp.where(positive, b, 1.0)
    return a / b, jnp.where(positive, (da - a * db / safe_b) / safe_b, 0.0)


def _positive(x: ArrayLike, what: str) -> Array:
    x = jnp.asarray(x, dtype=jnp.result_type(float))
    return check(x, ~(x > 0), f"{what} must be > 0 (and not NaN).")


class AbstractLogAlphaBarSchedule(AbstractSchedule):
    r"""A schedule defined by a closed form of $\log\bar\alpha(t)$ (accurate near $t = 0$).

    Subclasses define `log_alpha_bar`; $1-\bar\alpha = -\mathrm{expm1}(\log\bar\alpha)$ then keeps full
    relative precision at small $t$, where fine grids put most of their steps.
    """

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        log_ab = self.log_alpha_bar(t)
        return _held_if_infinite(log_ab - _log(-jnp.expm1(log_ab)))

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return jnp.exp(self.log_alpha_bar(t))

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return -jnp.expm1(self.log_alpha_bar(t))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        return safe_sqrt(jnp.expm1(-self.log_alpha_bar(t)))

    def alpha_bar_increment(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        # abar' - abar = abar' * (1 - exp(-L)), L = log abar' - log abar >= 0.
        return self.alpha_bar(t_next) * -jnp.expm1(-self.log_alpha_bar_ratio(t, t_next))


class LinearBeta(AbstractLogAlphaBarSchedule):
    r"""Linear rate $\beta(t) = \beta_{\min} + (\beta_{\max} - \beta_{\min})\,t$ (Song et al., DDPM).

    $\log\bar\alpha(t) = -\beta_{\min} t - \tfrac12(\beta_{\max}-\beta_{\min})t^2$. Defaults 0.1 -> 20 are
    the usual VP-SDE values ([PG]'s 0.05 -> 10 in their half-rate convention).
    """

    beta_min: Float[Array, ""]
    beta_max: Float[Array, ""]

    def __init__(self, beta_min: float | ArrayLike = 0.1, beta_max: float | ArrayLike = 20.0):
        self.beta_min = _positive(beta_min, "LinearBeta: beta_min")
        self.beta_max = check(
            _positive(beta_max, "LinearBeta: beta_max"),
            ~(jnp.asarray(beta_max) >= jnp.asarray(beta_min)),
            "LinearBeta: beta_max must be >= beta_min (beta increases with t).",
        )

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t)
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t)

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        return self.beta_min + (self.beta_max - self.beta_min) * jnp.asarray(t)

    def log_alpha_bar_ratio(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        # Exact integral of beta over [t_next, t]: h * (beta at the midpoint); no cancellation.
        t, t_next = jnp.asarray(t), jnp.asarray(t_next)
        return (t - t_next) * (self.beta_min + 0.5 * (self.beta_max - self.beta_min) * (t + t_next))


class Cosine(AbstractSchedule):
    r"""Nichol–Dhariwal cosine schedule $\bar\alpha(t) = f(t)/f(0)$, $f(t) = \cos^2\big(\tfrac\pi2\tfrac{t+s}{1+s}\big)$.

    $\bar\alpha(1) = 0$. With offset $s > 0$ the schedule has $1-\bar\alpha \propto t$ near 0, which
    makes the DDIM leading-term functional infinite (MATH.md section 4); $s = 0$ is the tangent law
    with $\gamma = 1$.
    """

    s: Float[Array, ""]

    def __init__(self, s: float | ArrayLike = 0.008):
        s = jnp.asarray(s, dtype=jnp.result_type(float))
        self.s = check(s, ~(s >= 0), "Cosine: offset s must be >= 0.")

    def _angles(self, t: Time):
        t = jnp.asarray(t)
        a0 = 0.5 * math.pi * self.s / (1 + self.s)
        # Angle measured from pi/2, so that cos(pi/2 - psi) = sin(psi) is exact near t = 1.
        psi = 0.5 * math.pi * (1 - t) / (1 + self.s)
        a = 0.5 * math.pi * (t + self.s) / (1 + self.s)
        return a0, a, psi

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        a0, _, psi = self._angles(t)
        return (jnp.sin(psi) / jnp.cos(a0)) ** 2

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        # cos^2 a0 - cos^2 a = sin(a - a0) sin(a + a0), with a - a0 formed exactly (0 at t = 0, never < 0).
        a0, a, _ = self._angles(t)
        a_minus_a0 = 0.5 * math.pi * jnp.asarray(t) / (1 + self.s)
        return jnp.sin(a_minus_a0) * jnp.sin(a + a0) / jnp.cos(a0) ** 2

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        return _held_if_infinite(_log(self.alpha_bar(t)) - _log(self.one_minus_alpha_bar(t)))

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return _log(self.alpha_bar(t))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        return safe_sqrt(_over(self.one_minus_alpha_bar(t), self.alpha_bar(t)))

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        # -d/dt log abar = -2 d/dt log sin(psi) = (pi / (1 + s)) cot(psi): inf at t = 1 (psi = 0).
        _, _, psi = self._angles(t)
        return _over(math.pi / (1 + self.s) * jnp.cos(psi), jnp.sin(psi))


class EDM(AbstractSchedule):
    r"""Karras et al. (EDM) noise levels $\sigma(t) = (\sigma_{\min}^{1/\rho} + t(\sigma_{\max}^{1/\rho} - \sigma_{\min}^{1/\rho}))^\rho$.

    Seen as a VP schedule through $\bar\alpha = 1/(1+\sigma^2)$. A uniform grid in $t$ gives the
    Karras $\rho$-spaced noise levels. Note $\bar\alpha(0) = 1/(1+\sigma_{\min}^2) < 1$.
    """

    sigma_min: Float[Array, ""]
    sigma_max: Float[Array, ""]
    rho: Float[Array, ""]

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_min = check(
            jnp.asarray(sigma_min, dtype=jnp.result_type(float)),
            ~(jnp.asarray(sigma_min) >= 0),
            "EDM: sigma_min must be >= 0.",
        )
        self.sigma_max = check(
            _positive(sigma_max, "EDM: sigma_max"),
            ~(jnp.asarray(sigma_max) > jnp.asarray(sigma_min)),
            "EDM: sigma_max must exceed sigma_min.",
        )
        self.rho = _positive(rho, "EDM: rho")

    def _root(self, t: Time):
        r"""$u = \sigma^{1/\rho}$ at `t` (linear in t), and its end values.

        $d\sigma_{\min}^{1/\rho}/d\sigma_{\min}$ is infinite at $\sigma_{\min} = 0$ (the edge of the parameter's
        domain); it is taken as 0 there, so gradients w.r.t. the other parameters stay finite."""
        t = jnp.asarray(t)
        positive = self.sigma_min > 0
        lo = jnp.where(positive, jnp.where(positive, self.sigma_min, 1.0) ** (1 / self.rho), 0.0)
        hi = self.sigma_max ** (1 / self.rho)
        return lo + t * (hi - lo), lo, hi

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        # -2 rho log u; at u = 0 (t = 0 with sigma_min = 0) +inf, kept away from rho (d/d rho would be inf * 0).
        u = self._root(t)[0]
        positive = u > 0
        return jnp.where(positive, -2 * self.rho * jnp.log(jnp.where(positive, u, 1.0)), jnp.inf)

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        # sigma(0) = sigma_min exactly (also its derivative, 1, when sigma_min = 0).
        return jnp.where(jnp.asarray(t) == 0, self.sigma_min, self._root(t)[0] ** self.rho)

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return 1 / (1 + self.sigma(t) ** 2)

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        s2 = self.sigma(t) ** 2
        return s2 / (1 + s2)

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return -jnp.log1p(self.sigma(t) ** 2)

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        # d/dt log(1 + sigma^2) with sigma = u^rho, du/dt = hi - lo: 2 rho (hi - lo) u^(2 rho - 1) / (1 + u^(2 rho)).
        # At u = 0 (t = 0, sigma_min = 0): 0 for rho > 1/2, inf for rho < 1/2.
        u, lo, hi = self._root(t)
        return 2 * self.rho * (hi - lo) * u ** (2 * self.rho - 1) / (1 + u ** (2 * self.rho))


class LogSNRLinear(AbstractSchedule):
    r"""Log-SNR linear in time: $\ell(t) = \ell_{\max} + t(\ell_{\min} - \ell_{\max})$."""

    log_snr_max: Float[Array, ""]
    log_snr_min: Float[Array, ""]

    def __init__(self, log_snr_max: float = 10.0, log_snr_min: float = -10.0):
        self.log_snr_max = jnp.asarray(log_snr_max, dtype=jnp.result_type(float))
        self.log_snr_min = check(
            jnp.asarray(log_snr_min, dtype=jnp.result_type(float)),
            ~(jnp.asarray(log_snr_min) < jnp.asarray(log_snr_max)),
            "LogSNRLinear: log_snr_min must be < log_snr_max (log-SNR decreases with t).",
        )

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        return self.log_snr_max + jnp.asarray(t) * (self.log_snr_min - self.log_snr_max)

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        # beta = -(1 - abar) * dl/dt
        return self.one_minus_alpha_bar(t) * (self.log_snr_max - self.log_snr_min)


class Tangent(AbstractSchedule):
    r"""The tangent law $\sigma(t) = \gamma\tan\phi(t)$, $\phi$ linear from $\arctan(\sigma_{\min}/\gamma)$ to $\arctan(\sigma_{\max}/\gamma)$.

    With the defaults $\sigma_{\min}=0$, $\sigma_{\max}=\infty$ this is $\sigma = \gamma\tan(\pi t/2)$,
    $\bar\alpha(0)=1$, $\bar\alpha(1)=0$: the optimal DDIM schedule for an isotropic spectrum with
    eigenvalue $\gamma^2$ (MATH.md section 4), and for $\gamma = 1$ the offset-free cosine schedule.
    The endpoints are static (not trained); `gamma` is a differentiable parameter.
    """

    gamma: Float[Array, ""]
    sigma_min: float = eqx.field(static=True, default=0.0)
    sigma_max: float = eqx.field(static=True, default=math.inf)

    def __init__(self, gamma: float | ArrayLike = 1.0, sigma_min: float = 0.0, sigma_max: float = math.inf):
        self.gamma = _positive(gamma, "Tangent: gamma")
        if not (0 <= float(sigma_min) < float(sigma_max)):
            raise ValueError(
                f"Tangent: need 0 <= sigma_min < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _angles(self, t: Time):
        # phi = angle of sigma/gamma, psi = pi/2 - phi; both interpolate linearly in t. Using sin of each
        # keeps both ends exact (sin 0 = 0) in float32, where cos(float32(pi/2)) < 0.
        t = jnp.asarray(t)
        phi0 = jnp.arctan2(self.sigma_min, self.gamma)
        psi0 = jnp.arctan2(self.gamma, self.sigma_min)
        if math.isinf(self.sigma_max):
            phi1, psi1 = 0.5 * math.pi, 0.0
        else:
            phi1, psi1 = jnp.arctan2(self.sigma_max, self.gamma), jnp.arctan2(self.gamma, self.sigma_max)
        phi = (1 - t) * phi0 + t * phi1
        psi = (1 - t) * psi0 + t * psi1
        return jnp.sin(phi), jnp.sin(psi)  # proportional to sin and cos of the angle of sigma

    def _fractions(self, t: Time):
        sin_phi, sin_psi = self._angles(t)
        signal, noise = sin_psi**2, (self.gamma * sin_phi) ** 2
        total = signal + noise
        return signal / total, noise / total

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return self._fractions(t)[0]

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return self._fractions(t)[1]

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        sin_phi, sin_psi = self._angles(t)
        return _held_if_infinite(2 * (_log(sin_psi) - _log(self.gamma * sin_phi)))

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        return _log(self.alpha_bar(t))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        sin_phi, sin_psi = self._angles(t)
        return _over(self.gamma * sin_phi, sin_psi)

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        # d/dt log(1 + gamma^2 tan^2 phi) = 2 gamma^2 phi' sin(phi) / (cos(phi) (cos^2 phi + gamma^2 sin^2 phi)),
        # cos(phi) = sin(psi): inf at t = 1 when sigma_max = inf.
        sin_phi, sin_psi = self._angles(t)
        phi0 = jnp.arctan2(self.sigma_min, self.gamma)
        phi1 = 0.5 * math.pi if math.isinf(self.sigma_max) else jnp.arctan2(self.sigma_max, self.gamma)
        rate = 2 * self.gamma**2 * (phi1 - phi0) * sin_phi
        return _over(rate, sin_psi * (sin_psi**2 + (self.gamma * sin_phi) ** 2))
