r"""Multistep and multi-stage samplers: the state is a short vector of past points ("slots").

Every sampler that practical pipelines run (DPM-Solver++, UniPC, DEIS, PLMS, LMS, KDPM2, EDM's churn,
FlowMatch Heun, ...) writes each new point as a linear combination, over a few earlier points $x_j$, of
the point itself, the denoiser output $D_j = D(x_j)$ and the noise prediction
$\hat\varepsilon_j = (x_j - \alpha_jD_j)/\sigma_j$ (VP coordinates $x = \alpha x_0 + \sigma\varepsilon$,
$\alpha = \sqrt{\bar\alpha}$, $\sigma = \sqrt{1 - \bar\alpha}$), plus fresh noise:

$$x_{\rm new} = a\,x_{\rm base} + \sum_j \big(b_j D_j + e_j\hat\varepsilon_j\big) + \sqrt{q}\,\xi .$$

A sampler describes one step as a few such `Combination`s written into its slots (`AbstractMultistepSampler`).
Everything it computes is a scalar of the grid; the engine turns the combinations into the exact per-mode
recursion of the state's mean and covariance (`gaussdiff_jax._core._multistep`).

**Why this form.** Per mode (eigenvalue $\lambda$, $R^2 = \alpha^2\lambda + \sigma^2$, angle
$\varphi = \operatorname{atan2}(\sigma, \alpha\sqrt\lambda)$) the exact denoiser gives $D_j - m = \sqrt\lambda\cos\varphi_j\,u_j$ and
$\hat\varepsilon_j = \sin\varphi_j\,u_j$ with $u_j = (x_j - \alpha_j m)/R_j$. The new point's normalized
coordinate is $u_{\rm new} = \sum_j\ell_j u_j$ with $\ell_j = (A_j\sqrt\lambda\cos\varphi_j + S_j\sin\varphi_j)/R_{\rm new}$,
where $A_j$, $S_j$ are the total weights on $D_j$ and $\hat\varepsilon_j$ ($x_{\rm base} = \alpha D + \sigma\hat\varepsilon$).
A consistent scheme has $\sum_j A_j = \alpha_{\rm new}$ (the mean is exact) and, for ODE schemes,
$\sum_j S_j = \sigma_{\rm new}$; then the defect $\sum_j\ell_j - 1$, which float32 must resolve at
$O(h^{p+1})$, is a sum of products of small, exactly computable factors:
$\sum_j\tilde c_j(\cos(\varphi_j - \varphi_{\rm new}) - 1) + \big[\sum_{j\ne\rm base}\tilde S_j(\sin\varphi_j - \sin\varphi_{\rm base})\big]/R_{\rm new}$
with $\tilde c_j = A_j/\alpha_{\rm new}$ and $\tilde S_j = S_j - \tilde c_j\sigma_{\rm new}$. Schemes that are not consistent in
that sense on purpose (SDE variants, churn) state their residuals $\sum_jA_j - \alpha_{\rm new}$ and
$\sum_jS_j - \sigma_{\rm new}$ in closed form.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from .._core._numerics import safe_sqrt
from .._schedule import AbstractSchedule
from ._base import AbstractSampler


class Level(NamedTuple):
    r"""A noise level: forward time `t`, $\bar\alpha$ and $1 - \bar\alpha$ there (scalars).

    Levels on the grid carry their time, so that differences of $\bar\alpha$ between them come from the
    schedule's accurate `alpha_bar_increment`; levels between grid points (a KDPM2 midpoint, an EDM churn
    level) are built with `Level.from_sigma` and carry `t = nan`.
    """

    t: Array
    alpha_bar: Array
    one_minus_alpha_bar: Array

    @property
    def alpha(self) -> Array:
        r"""Signal scale $\alpha = \sqrt{\bar\alpha}$."""
        return safe_sqrt(self.alpha_bar)

    @property
    def sigma(self) -> Array:
        r"""VP noise scale $\sigma = \sqrt{1 - \bar\alpha}$ (not the VE sigma; see `ve_sigma`)."""
        return safe_sqrt(self.one_minus_alpha_bar)

    @property
    def ve_sigma(self) -> Array:
        r"""VE / EDM noise level $\bar\sigma = \sigma/\alpha$ ($+\infty$ at $\bar\alpha = 0$)."""
        return safe_sqrt(self.one_minus_alpha_bar / self.alpha_bar)

    @property
    def log_snr(self) -> Array:
        r"""$\log(\bar\alpha / (1 - \bar\alpha))$."""
        return jnp.log(self.alpha_bar) - jnp.log(self.one_minus_alpha_bar)

    @classmethod
    def at(cls, schedule: AbstractSchedule, t) -> "Level":
        """The grid level of `schedule` at forward time `t`."""
        return cls(jnp.asarray(t), schedule.alpha_bar(t), schedule.one_minus_alpha_bar(t))

    @classmethod
    def from_sigma(cls, ve_sigma) -> "Level":
        r"""The level with VE noise level $\bar\sigma$: $\bar\alpha = 1/(1 + \bar\sigma^2)$ (no grid time)."""
        s2 = jnp.square(ve_sigma)
        return cls(jnp.full_like(s2, jnp.nan), 1 / (1 + s2), s2 / (1 + s2))


def alpha_bar_difference(schedule: AbstractSchedule, a: Level, b: Level, *, on_grid: bool) -> Array:
    r"""$\bar\alpha(b) - \bar\alpha(a)$ without cancellation: the schedule's increment for grid levels, else the
    difference of the complements where $\bar\alpha > 1/2$ (stored accurately there)."""
    if on_grid:
        return schedule.alpha_bar_increment(a.t, b.t)
    direct = b.alpha_bar - a.alpha_bar
    complement = a.one_minus_alpha_bar - b.one_minus_alpha_bar
    return jnp.where(jnp.minimum(a.alpha_bar, b.alpha_bar) > 0.5, complement, direct)


def half_log_snr_step(schedule: AbstractSchedule, a: Level, b: Level, *, on_grid: bool = True) -> Array:
    r"""$h = \lambda_b - \lambda_a$ with $\lambda = \log(\alpha/\sigma)$ (half the log-SNR), to full relative precision.

    DPM-Solver's step size. Written as $\tfrac12[\log(\bar\alpha_b/\bar\alpha_a) - \log((1-\bar\alpha_b)/(1-\bar\alpha_a))]$
    with both logs as `log1p` of an accurate increment, because $\lambda_b - \lambda_a$ of two rounded values keeps
    only ~`eps * |lambda| / h` relative precision in float32."""
    d = alpha_bar_difference(schedule, a, b, on_grid=on_grid)
    # b clean (1 - abar_b = 0): h = +inf; the where keeps its gradient 0 rather than inf * 0 = nan.
    x = -d / jnp.where(a.one_minus_alpha_bar > 0, a.one_minus_alpha_bar, 1.0)
    clean = x <= -1
    safe_x = jnp.where(clean, 0.0, x)
    safe_ab = jnp.where(a.alpha_bar > 0, a.alpha_bar, 1.0)
    h = 0.5 * (jnp.log1p(d / safe_ab) - jnp.log1p(safe_x))
    return jnp.where(clean, jnp.inf, jnp.where(a.alpha_bar > 0, h, jnp.inf))


def phi(k: int, x: Array) -> Array:
    r"""The exponential-integrator functions $\varphi_k(x) = \sum_{n\ge0} x^n/(n + k)!$, accurate near $x = 0$.

    $\varphi_1(x) = (e^x - 1)/x$, $\varphi_2(x) = (e^x - 1 - x)/x^2$, $\varphi_3(x) = (e^x - 1 - x - x^2/2)/x^3$;
    $\varphi_0 = e^x$. Series (to $x^{10}$) for $|x| < 0.5$, the closed form elsewhere."""
    if k == 0:
        return jnp.exp(x)
    small = jnp.abs(x) < 0.5
    xs = jnp.where(small, x, 0.0)
    # Horner form of sum_{n=0}^{10} x^n / (n + k)!
    series = jnp.zeros_like(xs)
    for n in range(10, -1, -1):
        fact = 1.0
        for i in range(2, n + k + 1):
            fact *= i
        series = series * xs + 1.0 / fact
    xl = jnp.where(small, 1.0, x)
    closed = jnp.expm1(xl)
    term, fact = xl, 1.0
    for n in range(1, k):
        closed = closed - term / fact
        fact *= n + 1
        term = term * xl
    closed = closed / xl**k
    return jnp.where(small, series, closed)


class Combination(NamedTuple):
    r"""One new point $x_{\rm new} = a\,x_{\rm base} + \sum_j(b_jD_j + e_j\hat\varepsilon_j) + \sqrt q\,\xi$ (module docstring).

    **Fields** (scalars, or tuples of `num_slots` scalars):

    - `base`: the slot whose point is carried with coefficient `scale` (a Python int, fixed per sampler).
    - `scale`: $a$.
    - `data`: $b_j$, weights on the denoiser outputs $D(x_j)$ (0.0 for slots not used).
    - `noise`: $e_j$, weights on the noise predictions $\hat\varepsilon(x_j)$.
    - `level`: the `Level` where the new point lives.
    - `fresh`: variance $q$ of the fresh standard normal noise added (VP units).
    - `data_residual`: $\sum_jA_j - \alpha_{\rm new}$ in closed form (0 for every scheme that transports the mean
      exactly, i.e. all the usual ones).
    - `noise_residual`: $\sum_jS_j - \sigma_{\rm new}$ in closed form (0 for ODE schemes; e.g.
      $\sigma_{\rm new}\,\mathrm{expm1}(-h)$ for SDE-DPM-Solver++).
    """

    base: int
    scale: Array
    data: tuple[Array, ...]
    noise: tuple[Array, ...]
    level: Level
    fresh: Array | float = 0.0
    data_residual: Array | float = 0.0
    noise_residual: Array | float = 0.0


class StepInfo(NamedTuple):
    """Where a step sits in the run (traced integers)."""

    index: Array
    """0 for the first step."""
    num_steps: Array
    """Number of steps of the run (active steps when `sample_law(..., num_steps=...)` pads the grid)."""


class AbstractMultistepSampler(AbstractSampler):
    r"""A sampler whose state is `num_slots` points (current point in slot 0, then history or stages).

    Subclasses implement `step`, which returns the `Combination`s of one step with the slot each one writes,
    in the manner of diffrax's multistep solvers: the solver state (step counters, previous step sizes, ...)
    is the sampler's own, the slots' levels are passed in. All quantities are scalars of the grid; no
    per-mode formula appears in a sampler. The engine starts every slot at the initial point.

    **Class facts** (besides those of `AbstractSampler`): `num_slots` ($\le 4$), `grid_slots` (which slots
    only ever hold grid levels; default all), and `uses_lower_order_warmup` documentation in subclasses.
    """

    num_slots: ClassVar[int] = 2
    needs_beta = False

    @property
    def grid_slots(self) -> tuple[bool, ...]:
        """Per slot: whether its level is always a grid point (accurate increments via the schedule)."""
        return (True,) * self.num_slots

    def init(self, schedule: AbstractSchedule, t0: Array) -> Any:
        """The sampler's own solver state before the first step (default: none)."""
        return None

    @abc.abstractmethod
    def step(
        self,
        schedule: AbstractSchedule,
        slots: tuple[Level, ...],
        next_level: Level,
        state: Any,
        info: StepInfo,
    ) -> tuple[tuple[tuple[int | None, Combination], ...], Any]:
        r"""One step from slot 0 (at `slots[0]`) to `next_level`.

        **Returns:** `(writes, state)`: `writes` is a tuple of `(target, combination)` applied in order, each
        combination reading the slots as they are after the previous writes; `target` is a slot index, or
        `None` to *push* (shift every slot down by one, dropping the last, and put the new point in slot 0).
        After the last write slot 0 must hold the point at `next_level`. The structure (number of writes, their
        targets and bases) must not depend on traced values.
        """

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        raise NotImplementedError(
            f"{type(self).__name__} is a multistep sampler: use gdj.simulate, which runs its combinations on particles."
        )


class AbstractLinearMultistepSampler(AbstractMultistepSampler):
    r"""A linear multistep sampler keeping its last `solver_order` evaluation points, one slot each (DPM-Solver++
    multistep, DEIS, LMS). Its first steps fall back to lower orders (there is no history yet), and a first-order
    step on a general grid leaves a local error $O(h^2)$: the run converges with order $\min(p, 2)$ for
    `solver_order` $p$ (KL $\sim N^{-4}$ for orders 2 and 3 alike). Subclasses have an int field `solver_order`."""

    @property
    def num_slots(self) -> int:  # type: ignore[override]
        return self.solver_order

    @property
    def order(self) -> int:  # type: ignore[override]
        return min(self.solver_order, 2)
