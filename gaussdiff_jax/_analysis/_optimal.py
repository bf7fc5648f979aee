r"""Analytic optima of the DDIM leading term (MATH.md section 4).

The leading term of the KL of $N$ uniform DDIM steps is $\mathcal D[\sigma]/N^2$ with
$\mathcal D = \frac14\sum_iI_i^2$, $I_i = \int_0^1\lambda_i\dot\sigma^2/(\lambda_i+\sigma^2)^2dt$. This module gives

- the tangent family $\sigma_\gamma = \gamma\tan(\pi t/2)$ (`Tangent`): $I_i(\gamma) = \frac{\pi^2}8(\gamma/\sqrt{\lambda_i} + \sqrt{\lambda_i}/\gamma)$
  and its best $\gamma$ for KL and $W_2$ (`tangent_gamma`);
- the isotropic exact optimum at every $N$ (`isotropic_optimal_kl`): the tangent law with $\gamma = \sqrt\lambda$
  (for finite ends, `Tangent(sqrt(lam), sigma_min, sigma_max)`);
- the exact minimizer of $\mathcal D$ for any spectrum (`euler_lagrange_schedule`): the geodesic of the metric
  $G(\sigma) = \sum_iI_i\lambda_i/(\lambda_i+\sigma^2)^2$ with self-consistent weights $I_i$.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._divergence import expm1_minus_x
from .._core._errors import check, is_concrete
from .._schedule import AbstractSchedule
from .._schedule._base import Time
from .._core._source import GaussianSource

Metric = Literal["kl", "w2"]
Direction = Literal["target_to_sample", "sample_to_target"]


# --------------------------------------------------------------------------- tangent family


def tangent_functionals(source: GaussianSource, gamma: float | ArrayLike) -> Float[Array, "*batch d"]:
    r"""Closed-form $I_i(\gamma) = \frac{\pi^2}8\big(\gamma/\sqrt{\lambda_i} + \sqrt{\lambda_i}/\gamma\big)$ of `Tangent(gamma)`.

    `gamma` broadcasts against the batch shape (a scalar, or `(*batch, 1)`). Needs $\lambda_i > 0$.
    """
    lam = source.eigenvalues
    lam = check(lam, ~(lam > 0), "tangent_functionals: eigenvalues must be > 0 (I_i = inf for lam = 0).")
    gamma = jnp.asarray(gamma, dtype=lam.dtype)
    root = jnp.sqrt(lam)
    return (math.pi**2 / 8) * (gamma / root + root / gamma)


def tangent_gamma(source: GaussianSource, metric: Metric = "kl") -> Float[Array, "*batch"]:
    r"""The $\gamma$ of the tangent law $\sigma = \gamma\tan(\pi t/2)$ that minimizes the DDIM leading term.

    - `metric="kl"`: $\gamma^{\star4} = \mathrm{tr}\,\Sigma/\mathrm{tr}\,\Sigma^{-1}$ (minimizes $\sum_iI_i^2$); then
      $\mathcal D(\gamma^\star) = \frac{\pi^4}{128}\big(d + \sqrt{\mathrm{tr}\Sigma\,\mathrm{tr}\Sigma^{-1}}\big)$.
    - `metric="w2"`: $\gamma^{\star4} = \frac1d\sum_i\lambda_i^2$ (minimizes $\sum_i\lambda_iI_i^2$).

    Traces count the source's weights (multiplicities). Shape `(*batch,)`.
    """
    lam = source.eigenvalues
    if metric == "kl":
        lam = check(
            lam,
            ~(lam > 0),
            "tangent_gamma(metric='kl'): eigenvalues must be > 0 (tr Sigma^-1 is infinite otherwise); "
            "floor them or use metric='w2'.",
        )
        return (source.total(lam) / source.total(1 / lam)) ** 0.25
    if metric == "w2":
        return (source.total(lam * lam) / source.total(jnp.ones_like(lam))) ** 0.25
    raise ValueError(f"tangent_gamma: metric must be 'kl' or 'w2'; got {metric!r}.")


def isotropic_optimal_kl(
    dim: float | ArrayLike,
    num_steps: int | ArrayLike,
    *,
    direction: Direction = "target_to_sample",
) -> Float[Array, ""]:
    r"""Exact minimum over all schedules / grids of the KL of $N$ DDIM steps on an isotropic spectrum.

    $\frac d2(c^{-1} - 1 + \ln c)$ (`"target_to_sample"`) or $\frac d2(c - 1 - \ln c)$ (`"sample_to_target"`),
    $c = \cos^{2N}(\pi/2N)$, from `init="standard"` with $\bar\alpha(t_0) = 0$ to $\bar\alpha(t_N) = 1$; reached by the tangent law
    $\sigma = \sqrt\lambda\tan(\pi t/2)$ on a uniform grid, for every $\lambda$ and every $N$ (Jensen).
    $N = 1$ gives $+\infty$ in both directions (one quarter turn collapses the variance to 0).
    """
    n = jnp.asarray(num_steps)
    n = check(n, ~(n >= 1), "isotropic_optimal_kl: num_steps must be >= 1.")
    n = n.astype(jnp.result_type(float))
    half_angle = 0.5 * math.pi / n
    # ln c = N ln cos^2(pi/2N) = N log1p(-sin^2), exact for large N.
    log_c = n * jnp.log1p(-(jnp.sin(half_angle) ** 2))
    if direction == "target_to_sample":
        per_dim = expm1_minus_x(-log_c)
    elif direction == "sample_to_target":
        per_dim = expm1_minus_x(log_c)
    else:
        raise ValueError(f"direction must be 'target_to_sample' or 'sample_to_target'; got {direction!r}.")
    # N = 1 is a quarter turn in one step: the output variance is 0 and both directions are infinite.
    per_dim = jnp.where(n > 1, per_dim, jnp.inf)
    return 0.5 * jnp.asarray(dim, per_dim.dtype) * per_dim


# --------------------------------------------------------------------------- Euler-Lagrange optimum


class EulerLagrangeSchedule(AbstractSchedule):
    r"""The exact minimizer $\sigma^\star$ of the DDIM leading term $\mathcal D = \frac14\sum_iI_i^2$ for one spectrum.

    Build it with `euler_lagrange_schedule(source)`. It stores $\ln\sigma^\star(t) = \ln t - \ln(1-t) + f(t)$
    with $f$ analytic on $[0, 1]$ (the optimum has $\sigma \propto t$ at $t = 0$ and $\sigma \propto 1/(1-t)$ at
    $t = 1$), as a Chebyshev series of $f$ in $2t - 1$; so $\bar\alpha(0) = 1$, $\bar\alpha(1) = 0$ exactly and
    $\dot\ell$ is accurate up to the ends.

    **Fields:**

    - `coefficients`: Chebyshev coefficients of $f$, shape `(M,)`.
    - `functionals`: the optimal $I_i$ (self-consistent weights), shape `(d,)`.
    - `value`: $\mathcal D^\star = \frac14\sum_iw_iI_i^2$ (so KL $\approx \mathcal D^\star/N^2$ on $N$ uniform steps).
    """

    coefficients: Float[Array, " M"]
    functionals: Float[Array, " d"]
    value: Float[Array, ""]

    def _f(self, t: Array) -> Array:
        x = 2 * t - 1
        c = self.coefficients.astype(x.dtype)

        # Clenshaw recurrence, from the highest coefficient down to c_1.
        def body(carry, ck):
            b1, b2 = carry
            return (ck + 2 * x * b1 - b2, b1), None

        (b1, b2), _ = jax.lax.scan(body, (jnp.zeros_like(x), jnp.zeros_like(x)), c[:0:-1])
        return c[0] + x * b1 - b2

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(self.coefficients.dtype)
        # l = -2 ln sigma = 2 ln(1 - t) - 2 ln t - 2 f(t): +inf at t = 0, -inf at t = 1.
        return 2 * jnp.log1p(-t) - 2 * jnp.log(t) - 2 * self._f(t)

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t)
        return t / (1 - t) * jnp.exp(self._f(t))

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        r"""$\beta = 2\sigma\dot\sigma/(1 + \sigma^2)$, in closed form at both ends: 0 at $t = 0$ (where autodiff of
        $\log\bar\alpha$ gives $0\cdot\infty$), $+\infty$ at $t = 1$."""
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(self.coefficients.dtype)
        low = t < 0.5
        tl, th = jnp.where(low, t, 0.25), jnp.where(low, 0.75, t)
        # Near 0: sigma = t/(1-t) e^f, dsigma/dt = e^f (1/(1-t)^2 + t/(1-t) f').
        f, df = jax.jvp(self._f, (tl,), (jnp.ones_like(tl),))
        s = tl / (1 - tl) * jnp.exp(f)
        ds = jnp.exp(f) * (1 / (1 - tl) ** 2 + tl / (1 - tl) * df)
        beta_low = 2 * s * ds / (1 + s**2)
        # Near 1: beta = 2 (d ln sigma / dt) (1 - abar), d ln sigma / dt = 1/t + 1/(1-t) + f'.
        _, dfh = jax.jvp(self._f, (th,), (jnp.ones_like(th),))
        one_minus = jax.nn.sigmoid(-self.log_snr(th))
        safe = jnp.where(th < 1, 1 - th, 1.0)
        beta_high = jnp.where(th < 1, 2 * (1 / th + 1 / safe + dfh) * one_minus, jnp.inf)
        return jnp.where(low, beta_low, beta_high)


def _metric_sqrt(s: np.ndarray, lam: np.ndarray, wI: np.ndarray) -> np.ndarray:
    """sqrt(G(s)), G(s) = sum_i wI_i lam_i / (lam_i + s^2)^2, for a 1-D array s (chunked over s)."""
    out = np.empty_like(s)
    step = max(1, (1 << 20) // max(1, lam.size))
    for k in range(0, s.size, step):
        sk = s[k : k + step, None] ** 2
        out[k : k + step] = np.sqrt((lam / (lam + sk) ** 2) @ wI)
    return out


def _solve_weights(lam, w, tol, max_iter, h, u_lo, u_hi):
    """Fixed point I = L(I) J(I) on a trapezoid grid in u = ln s (spectrally accurate: the integrands
    decay exponentially in |u|). Returns I, L and the iteration count."""
    u = np.arange(u_lo, u_hi + h, h)
    s = np.exp(u)
    kernel = lam[None, :] / (lam[None, :] + s[:, None] ** 2) ** 2  # (n, d), the per-mode metric
    I = np.full_like(lam, math.pi**2 / 4)  # tangent-law value for gamma = sqrt(lam): a good start
    for it in range(1, max_iter + 1):
        sqrt_G = np.sqrt(kernel @ (w * I))
        L = h * np.sum(sqrt_G * s)
        J = h * ((s / sqrt_G) @ kernel)
        new = L * J
        change = np.max(np.abs(new - I) / new)
        I = new
        if change <= tol:
            return I, L, it
    raise ValueError(
        f"euler_lagrange_schedule: the self-consistent weights did not converge to tol={tol:g} in "
        f"{max_iter} iterations (last relative change {change:.3g}); raise max_iter or tol."
    )


def _chebyshev_values(lam, wI, L_hint, u_lo, u_hi, num_coefficients, h=0.1, order=8):
    r"""$f(t_j) = \ln\sigma(t_j) - \ln t_j + \ln(1 - t_j)$ at `num_coefficients` Chebyshev points, by inverting
    $t(\sigma) = C(\sigma)/L$, $C(\sigma) = \int_0^\sigma\sqrt G$, with panel-wise Gauss–Legendre and Newton."""
    x, wg = np.polynomial.legendre.leggauss(order)
    K = math.ceil((u_hi - u_lo) / h)
    edges = u_lo + h * np.arange(K + 1)

    def g(u):  # dC/du = s sqrt(G(s)), s = e^u
        shape = u.shape
        s = np.exp(u.ravel())
        return (s * _metric_sqrt(s, lam, wI)).reshape(shape)

    sqrt_G0 = math.sqrt(np.sum(wI / lam))  # G(s) -> G(0) as s -> 0: C(s) ~ s sqrt(G0)
    sqrt_Ginf = math.sqrt(np.sum(wI * lam))  # G(s) ~ sum wI lam / s^4 as s -> inf: tail sqrt(.)/s
    mids = 0.5 * (edges[:-1] + edges[1:])
    panels = 0.5 * h * (g(mids[:, None] + 0.5 * h * x[None, :]) @ wg)
    head = math.exp(u_lo) * sqrt_G0
    cumulative = np.concatenate([[head], head + np.cumsum(panels)])
    L = cumulative[-1] + math.exp(-u_hi) * sqrt_Ginf
    M = int(num_coefficients)
    theta = math.pi * (np.arange(M) + 0.5) / M
    t = 0.5 * (1 + np.cos(theta))  # Chebyshev points of the first kind, all inside (0, 1)
    target = t * L
    k = np.clip(np.searchsorted(cumulative, target) - 1, 0, K - 1)
    below = target < cumulative[0]
    u = edges[k] + h * (target - cumulative[k]) / (cumulative[k + 1] - cumulative[k])
    for _ in range(12):
        a = edges[k]
        half = 0.5 * (u - a)
        partial = half * (g(0.5 * (a + u)[:, None] + half[:, None] * x[None, :]) @ wg)
        step = (cumulative[k] + partial - target) / g(u)
        u = u - step
        if np.max(np.abs(step)) < 1e-15:
            break
    # Points below the first panel (only for extreme spectra): C(s) = s sqrt(G0) there.
    u = np.where(below, np.log(np.maximum(target, 1e-300) / sqrt_G0), u)
    values = u - np.log(t) + np.log1p(-t)
    return values, theta, L, abs(L - L_hint) / L_hint


def _chebyshev_coefficients(values: np.ndarray, theta: np.ndarray) -> np.ndarray:
    M = values.size
    k = np.arange(M)
    coefficients = (2.0 / M) * (np.cos(np.outer(k, theta)) @ values)
    coefficients[0] *= 0.5
    return coefficients


def euler_lagrange_schedule(
    source: GaussianSource,
    *,
    tol: float = 1e-12,
    max_iter: int = 1000,
    num_coefficients: int | None = None,
) -> EulerLagrangeSchedule:
    r"""The schedule minimizing the DDIM leading term $\mathcal D[\sigma] = \frac14\sum_iI_i^2$ for `source`'s spectrum.

    Euler–Lagrange solution (MATH.md section 4): $t(\sigma) = \int_0^\sigma\sqrt{G}\,ds\big/\int_0^\infty\sqrt{G}\,ds$,
    $G(s) = \sum_iw_iI_i\lambda_i/(\lambda_i+s^2)^2$, with the weights $I_i$ (the schedule's own functionals)
    found by fixed-point iteration. At the fixed point $\mathcal D^\star = L^2/4$, $L = \int_0^\infty\sqrt G$. Isotropic
    spectra give the tangent law; otherwise the optimum is not a tangent law (e.g. $\mathcal D^\star = 8.74182$
    against $9.59932$ for the best tangent law on $\lambda = (0.1, 0.5, 1, 4)$).

    **Arguments:**

    - `source`: one spectrum (no batch axes), concrete (not traced); weights count as multiplicities.
      Zero eigenvalues do not enter $\mathcal D$ (they get $I_i = 0$).
    - `tol`: relative change of the weights at which the fixed point stops.
    - `max_iter`: iteration limit (`ValueError` if reached).
    - `num_coefficients`: Chebyshev coefficients of the stored schedule; default: doubled from 64 until the
      series' tail is below $10^{-12}$ (at most 4096).

    **Returns:** an `EulerLagrangeSchedule` (an `AbstractSchedule`, usable everywhere), carrying the
    optimal `functionals` and `value`. The solve runs once in float64 numpy; the schedule's arrays take the
    source's dtype.
    """
    if source.batch_shape != ():
        raise ValueError(
            f"euler_lagrange_schedule takes one spectrum (eigenvalues of shape (d,)); got batch shape "
            f"{source.batch_shape}. Call it once per spectrum."
        )
    if not is_concrete(source):
        raise ValueError("euler_lagrange_schedule needs concrete eigenvalues (call it outside jax.jit).")
    if not (tol > 0):
        raise ValueError(f"euler_lagrange_schedule: tol must be > 0; got {tol}.")
    lam_all = np.asarray(source.eigenvalues, dtype=np.float64)
    w_all = np.ones_like(lam_all) if source.weights is None else np.asarray(source.weights, np.float64)
    active = (lam_all > 0) & (w_all > 0)
    if not np.any(active):
        raise ValueError("euler_lagrange_schedule: no mode has a positive eigenvalue (and weight); D = 0.")
    lam, w = lam_all[active], w_all[active]
    # Integrals in u = ln s: every integrand decays like e^{-|u|} beyond the spectrum's range.
    tails = 40.0
    u_lo = 0.5 * math.log(lam.min()) - tails
    u_hi = 0.5 * math.log(lam.max()) + tails
    I, L, _ = _solve_weights(lam, w, float(tol), int(max_iter), 0.1, u_lo, u_hi)
    wI = w * I
    sizes = [int(num_coefficients)] if num_coefficients is not None else [64, 128, 256, 512, 1024, 2048, 4096]
    for M in sizes:
        values, theta, _, mismatch = _chebyshev_values(lam, wI, L, u_lo, u_hi, M)
        if mismatch > 1e-9:  # two independent quadratures of L = int sqrt(G) must agree
            raise RuntimeError(f"euler_lagrange_schedule: inconsistent quadratures (relative {mismatch:.2g}).")
        coefficients = _chebyshev_coefficients(values, theta)
        if np.max(np.abs(coefficients[-max(1, M // 4) :])) < 1e-12:
            break
    functionals = np.zeros_like(lam_all)
    functionals[active] = I
    dtype = source.eigenvalues.dtype
    return EulerLagrangeSchedule(
        coefficients=jnp.asarray(coefficients, dtype),
        functionals=jnp.asarray(functionals, dtype),
        value=jnp.asarray(0.25 * np.sum(w * I * I), dtype),
    )
