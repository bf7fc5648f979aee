r"""Large-N asymptotics of deterministic DDIM: the functionals $I_i$ and the leading terms (MATH.md section 4).

On a uniform grid of $N$ steps over $[0, 1]$, $\ln(v_i/R_i^2) = -I_i/N + O(N^{-3})$ with

$$I_i[\sigma] = \int_0^1\theta_i'(t)^2\,dt = \frac1{16}\int_0^1\dot\ell^2\,\mathrm{sech}^2\Big(\frac{\ell+\ln\lambda_i}2\Big)dt
             = \frac14\int_0^1\dot\ell^2\,s(x)\,s(-x)\,dt,\quad x = \ell + \ln\lambda_i,$$

($s$ the logistic sigmoid, $\ell$ the log-SNR), hence $\mathrm{KL} = \frac1{4N^2}\sum_iI_i^2 \pm \frac1{12N^3}\sum_iI_i^3
+ O(N^{-4})$ and $W_2^2 = \frac1{4N^2}\sum_i\lambda_iI_i^2 + O(N^{-3})$.

The integral is computed by composite Gauss–Legendre quadrature on uniform panels, with the two end
panels refined geometrically towards $t = 0$ and $t = 1$. For regular schedules the integrand is finite
at both ends (e.g. the tangent law: analytic on $[0, 1]$), and the graded panels also keep integrable
end singularities ($\sigma \sim t^a$, $\tfrac12 < a < 1$) accurate. Schedules with $\sigma \sim t^a$,
$a \le \tfrac12$, at $t = 0$ (linear $\beta$, cosine with offset $s > 0$, a discrete model table), or
$1/\sigma \sim (1-t)^b$, $b \le \tfrac12$, at $t = 1$, have $I_i = \infty$: they are detected from the
local exponents $a(t) = d\ln\sigma/d\ln t$ and $b(t) = d\ln(1/\sigma)/d\ln(1-t)$ near the ends and
rejected with a clear error (`check_regular`, `is_singular`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._errors import check, check_finite, is_concrete
from .._schedule import AbstractSchedule
from .._core._source import GaussianSource

Direction = Literal["target_to_sample", "sample_to_target"]

# An end exponent at or below 1/2 means an infinite functional; the margin absorbs what is left of the
# drift of the local exponent after extrapolation to the end (see `end_exponents`).
_EXPONENT_THRESHOLD = 0.55


# Largest number of (node x mode) integrand values evaluated at once; above it the quadrature runs in
# checkpointed chunks of nodes, so memory stays O(chunk x d) (also under reverse mode).
_MAX_BLOCK = 1 << 22


@functools.lru_cache(maxsize=32)
def _nodes_weights(num_panels: int, order: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre rule on [0, 1] (float64 numpy), end panels graded by factors of 2."""
    inner = np.linspace(0.0, 1.0, num_panels + 1)
    first = inner[1] * 0.5 ** np.arange(levels, 0, -1)  # 2^-levels h, ..., h/2
    edges = np.concatenate([[0.0], first, inner[1:-1], 1.0 - first[::-1], [1.0]])
    x, w = np.polynomial.legendre.leggauss(order)
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = (0.5 * (lo + hi) + 0.5 * (hi - lo) * x[None, :]).ravel()
    weights = (0.5 * (hi - lo) * w[None, :]).ravel()
    return nodes, weights


def _levels(dtype) -> int:
    # Grade the end panels down to ~1e-11 (float64) or ~1e-5 (float32): closer to t = 1 a float32 t
    # cannot resolve 1 - t.
    return 30 if jnp.finfo(dtype).bits >= 64 else 10


def _log_snr_and_rate(schedule: AbstractSchedule, t: Array) -> tuple[Array, Array]:
    r"""$\ell(t)$ and $\dot\ell(t)$ (forward-mode autodiff)."""
    return jax.jvp(schedule.log_snr, (t,), (jnp.ones_like(t),))


class EndExponents(NamedTuple):
    r"""Local power-law exponents of a schedule at its ends (see `end_exponents`)."""

    at_zero: Array
    """$a = d\\ln\\sigma/d\\ln t$ near $t = 0$ ($\\sigma \\sim t^a$); meaningful when $\\sigma(0) = 0$."""
    at_one: Array
    """$b = d\\ln(1/\\sigma)/d\\ln(1-t)$ near $t = 1$ ($1/\\sigma \\sim (1-t)^b$); meaningful when $\\sigma(1) = \\infty$."""
    zero_noise_at_zero: Array
    """$\\sigma(0) = 0$ ($\\bar\\alpha(0) = 1$)."""
    pure_noise_at_one: Array
    """$\\sigma(1) = \\infty$ ($\\bar\\alpha(1) = 0$)."""


def end_exponents(schedule: AbstractSchedule, *, dtype=None) -> EndExponents:
    r"""The schedule's local exponents at the two ends, extrapolated to $t = 0$ and $t = 1$.

    $a(t) = -t\dot\ell/2$ and $b(t) = -(1-t)\dot\ell/2$ are evaluated at distances $\delta$ and $\delta/4$ from
    each end ($\delta = 10^{-8}$ in float64, $10^{-5}$ in float32) and extrapolated linearly to the end, which
    removes their $O(\delta)$ drift (linear $\beta$: $a(t) = \tfrac12(1 + (\beta_{\max} - \beta_{\min})t/2\beta_{\min}) + O(t^2)$).
    $I_i$ is finite iff $a > \tfrac12$ where $\sigma(0) = 0$ and $b > \tfrac12$ where $\sigma(1) = \infty$ (then
    $\theta'^2 \sim t^{2a-2}$ is integrable).
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    delta = 1e-8 if jnp.finfo(dtype).bits >= 64 else 1e-5
    t = jnp.asarray([delta, delta / 4, 1.0 - delta, 1.0 - delta / 4], dtype=dtype)
    _, rate = _log_snr_and_rate(schedule, t)
    rate = rate.astype(dtype)
    # ln sigma = -l/2: a = t d(ln sigma)/dt, b = (1 - t) d(ln sigma)/dt (1 - t is exact in floating point).
    a = -0.5 * t[:2] * rate[:2]
    b = -0.5 * (1 - t[2:]) * rate[2:]
    # Linear extrapolation in the distance to the end, from distances delta and delta/4.
    a0 = (4 * a[1] - a[0]) / 3
    b0 = (4 * b[1] - b[0]) / 3
    ends = jnp.asarray([0.0, 1.0], dtype=dtype)
    omab = schedule.one_minus_alpha_bar(ends)
    ab = schedule.alpha_bar(ends)
    return EndExponents(at_zero=a0, at_one=b0, zero_noise_at_zero=omab[0] <= 0, pure_noise_at_one=ab[1] <= 0)


def _singular_flags(schedule: AbstractSchedule, dtype) -> tuple[Array, Array]:
    ex = end_exponents(schedule, dtype=dtype)
    at_zero = ex.zero_noise_at_zero & ~(ex.at_zero > _EXPONENT_THRESHOLD)
    at_one = ex.pure_noise_at_one & ~(ex.at_one > _EXPONENT_THRESHOLD)
    return at_zero, at_one


_SINGULAR_MESSAGE = (
    "the schedule is singular for DDIM asymptotics: near {end} its noise level behaves like {law} with "
    "exponent <= 1/2 (as for linear beta, cosine with offset s > 0, or a discrete model table, where "
    "1 - alpha_bar ~ t near t = 0), so the functionals I_i = int theta_i'(t)^2 dt are infinite and N^2 KL "
    "grows like (ln N)^2 instead of converging to a leading term. Use a regular schedule (sigma ~ t near "
    "t = 0 and 1/sigma ~ 1 - t near t = 1: Tangent, Cosine(s=0), EDM(sigma_min=0), LearnableSchedule, "
    "euler_lagrange_schedule), or evaluate the exact KL at finite N with ddim_law / sample_law."
)


def is_singular(schedule: AbstractSchedule, *, dtype=None) -> bool:
    r"""Whether the schedule has infinite DDIM functionals $I_i$ (see `end_exponents`). Needs concrete parameters."""
    at_zero, at_one = _singular_flags(schedule, jnp.result_type(float) if dtype is None else dtype)
    if not is_concrete(at_zero, at_one):
        raise ValueError("is_singular needs a concrete schedule (call it outside jit); inside jit use check_regular.")
    return bool(at_zero) or bool(at_one)


def check_regular(schedule: AbstractSchedule, x: Array | None = None, *, dtype=None) -> Array | None:
    r"""Raise a `ValueError` (outside jit; an equinox runtime error inside) if the schedule is singular.

    Returns `x` with the check attached (for use inside jit), or `None` if `x` is `None`.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    at_zero, at_one = _singular_flags(schedule, dtype)
    carrier = jnp.zeros((), dtype) if x is None else x
    carrier = check(carrier, at_zero, _SINGULAR_MESSAGE.format(end="t = 0", law="sigma(t) ~ t^a"))
    carrier = check(carrier, at_one, _SINGULAR_MESSAGE.format(end="t = 1", law="1/sigma(t) ~ (1 - t)^b"))
    return None if x is None else carrier


def leading_term_functionals(
    source: GaussianSource,
    schedule: AbstractSchedule,
    *,
    num_panels: int = 128,
    order: int = 8,
) -> Float[Array, "*batch d"]:
    r"""The per-mode functionals $I_i = \int_0^1\theta_i'(t)^2dt$ of `schedule` (MATH.md section 4).

    $\theta_i = \arctan(\sigma/\sqrt{\lambda_i})$; $I_i$ is the (squared-speed) length that mode $i$'s
    rotation angle travels. $\ln r_i \approx -I_i/N$ for $N$ uniform DDIM steps on $[0, 1]$.

    **Arguments:**

    - `source`: eigenvalues `(*batch, d)`; a zero eigenvalue gives $I_i = 0$.
    - `schedule`: a regular schedule (see `check_regular`).
    - `num_panels`, `order`: uniform Gauss–Legendre panels and nodes per panel (plus graded end panels).
      Align `num_panels` with the knots of piecewise schedules (a multiple of `TimeWarp.num_knots`).

    **Returns:** $I_i$, shape `(*batch, d)`. Jit-able and differentiable with respect to the
    schedule's parameters.

    **Raises:** `ValueError` (an equinox runtime error inside jit) for a singular schedule.
    """
    lam = source.eigenvalues
    dtype = lam.dtype
    # Fails fast (outside jit) before any quadrature work.
    lam = check_regular(schedule, lam, dtype=dtype)
    nodes, weights = _nodes_weights(int(num_panels), int(order), _levels(dtype))
    nodes, weights = jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)
    positive = lam > 0
    log_lam = jnp.log(jnp.where(positive, lam, 1.0))

    def term(t, weight):
        ell, rate = _log_snr_and_rate(schedule, t)
        x = ell.astype(dtype) + log_lam
        rate = rate.astype(dtype)
        # sech^2(x/2)/16 = s(x) s(-x)/4: no overflow at either end.
        return weight * 0.25 * rate * rate * jax.nn.sigmoid(x) * jax.nn.sigmoid(-x)

    value = _sum_over_nodes(term, nodes, weights, lam.shape, dtype)
    value = jnp.where(positive, value, 0.0)
    return check_finite(
        value,
        "leading_term_functionals: a functional I_i is not finite (the schedule's log-SNR or its "
        "derivative is not finite inside (0, 1)).",
    )


def _sum_over_nodes(term, nodes: Array, weights: Array, shape: tuple[int, ...], dtype) -> Array:
    """sum_j term(nodes[j], weights[j]), each term of `shape`; `term` gets nodes with trailing singleton axes."""
    n = nodes.shape[0]
    size = max(1, math.prod(shape))
    expand = (slice(None),) + (None,) * len(shape)
    if n * size <= _MAX_BLOCK:
        return jnp.sum(term(nodes[expand], weights[expand]), axis=0).astype(dtype)
    chunk = max(1, _MAX_BLOCK // size)
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    # Padding nodes sit at t = 1/2 (a finite integrand) with weight 0.
    nodes = jnp.concatenate([nodes, jnp.full((pad,), 0.5, nodes.dtype)]).reshape(num_chunks, chunk)
    weights = jnp.concatenate([weights, jnp.zeros((pad,), weights.dtype)]).reshape(num_chunks, chunk)

    @jax.checkpoint
    def body(total, chunk_of):
        t, w = chunk_of
        return total + jnp.sum(term(t[expand], w[expand]), axis=0), None

    total, _ = jax.lax.scan(body, jnp.zeros(shape, dtype), (nodes, weights))
    return total


def _order_check(num_steps) -> Array:
    n = jnp.asarray(num_steps)
    return check(n, ~(n >= 1), "num_steps must be >= 1.")


def kl_leading_term(
    source: GaussianSource,
    schedule: AbstractSchedule,
    num_steps: int | Array,
    *,
    direction: Direction = "target_to_sample",
    correction: bool = False,
    reduce: bool = True,
    num_panels: int = 128,
    order: int = 8,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""Leading term $\frac1{4N^2}\sum_iI_i^2$ of the KL of DDIM on $N$ uniform steps over $[0, 1]$.

    It is the asymptotic KL of the discretization alone (`init="exact"`, `target="truncated"`); when
    $\bar\alpha(0) = 1$ and $\bar\alpha(1) = 0$ it is the asymptotic KL to the data from `init="standard"`.

    **Arguments:**

    - `source`, `schedule`: as in `leading_term_functionals` (all eigenvalues must be $> 0$: a zero
      eigenvalue makes the KL to the data infinite).
    - `num_steps`: $N$ (may be a traced array).
    - `direction`: `"target_to_sample"` (KL(target ‖ sample)) or `"sample_to_target"`; they differ at $O(N^{-3})$.
    - `correction`: add the next term, $\pm\frac1{12N^3}\sum_iI_i^3$ (+ for `"target_to_sample"`),
      which leaves an $O(N^{-4})$ error.
    - `reduce`: sum over modes (times the source's weights) or return per-mode contributions.
    """
    if direction not in ("target_to_sample", "sample_to_target"):
        raise ValueError(f"direction must be 'target_to_sample' or 'sample_to_target'; got {direction!r}.")
    lam = source.eigenvalues
    relevant = lam <= 0 if source.weights is None else (lam <= 0) & (source.weights > 0)
    I = leading_term_functionals(source, schedule, num_panels=num_panels, order=order)
    I = check(
        I,
        relevant,
        "kl_leading_term: a mode has eigenvalue 0, so the KL to the data is infinite (DDIM maps it to a "
        "point mass only at t = 0). Floor the eigenvalues or use w2_squared_leading_term.",
    )
    n = _order_check(num_steps).astype(I.dtype)
    per_mode = I * I / (4 * n * n)
    if correction:
        sign = 1.0 if direction == "target_to_sample" else -1.0
        per_mode = per_mode + sign * I**3 / (12 * n**3)
    return source.total(per_mode) if reduce else _weighted(source, per_mode)


def w2_squared_leading_term(
    source: GaussianSource,
    schedule: AbstractSchedule,
    num_steps: int | Array,
    *,
    reduce: bool = True,
    num_panels: int = 128,
    order: int = 8,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""Leading term $\frac1{4N^2}\sum_i\lambda_iI_i^2$ of $W_2^2$ for DDIM on $N$ uniform steps (error $O(N^{-3})$).

    Same setting as `kl_leading_term`; zero eigenvalues are allowed (they contribute 0).
    """
    I = leading_term_functionals(source, schedule, num_panels=num_panels, order=order)
    n = _order_check(num_steps).astype(I.dtype)
    per_mode = source.eigenvalues * I * I / (4 * n * n)
    return source.total(per_mode) if reduce else _weighted(source, per_mode)


def w2_leading_term(
    source: GaussianSource,
    schedule: AbstractSchedule,
    num_steps: int | Array,
    *,
    num_panels: int = 128,
    order: int = 8,
) -> Float[Array, "*batch"]:
    r"""Leading term $\frac1{2N}\big(\sum_i\lambda_iI_i^2\big)^{1/2}$ of $W_2$ (square root of `w2_squared_leading_term`)."""
    return jnp.sqrt(w2_squared_leading_term(source, schedule, num_steps, num_panels=num_panels, order=order))


def _weighted(source: GaussianSource, per_mode: Array) -> Array:
    return per_mode if source.weights is None else per_mode * source.weights
