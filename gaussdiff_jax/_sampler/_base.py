"""The sampler strategy: one step of a sampler, per mode, as an affine Gaussian map (MATH.md section 2)."""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._numerics import safe_sqrt
from .._schedule import AbstractSchedule

Modes = Float[Array, "*batch d"]


class AffineStep(NamedTuple):
    r"""One step $y' = A\,y + C\,m + \sqrt{Q}\,\xi$ of a sampler, per mode (arrays broadcast to `(*batch, d)`).

    $A$ is stored as `gain_minus_one` $= A - 1$: for fine grids $A$ is within $O(h)$ of 1 and the small
    part is what float32 must keep. The optional defects are exact closed forms of quantities the engine
    would otherwise get by cancellation (see `sample_law`):

    - `variance_defect` $= (A^2R^2 + Q)/R'^2 - 1$, with $R^2 = \bar\alpha\lambda + 1 - \bar\alpha$ at $t$ and
      $R'^2$ at $t_{\rm next}$: the relative variance error of one step started on the exact marginal.
    - `mean_defect` $= A\sqrt{\bar\alpha} + C - \sqrt{\bar\alpha'}$: its mean error.
    - `exact_gain`: $A$ computed directly, for steps where $A$ can be much smaller than 1 (a jump to
      $\bar\alpha' \approx 1$ on a tiny eigenvalue), where $1 + (A - 1)$ would lose its relative precision.
    - `evaluations`: the step's denoiser evaluations as `(t_eval, weight)` pairs: forward time of the
      evaluation and the weight (per mode) with which an error in the denoiser output $D$ (the $x_0$
      prediction) there enters $y'$. Used to propagate a network's error (`ErrorProfile`); `None` if the
      sampler does not state them.
    """

    gain_minus_one: Modes
    offset: Modes
    noise_variance: Modes
    variance_defect: Modes | None = None
    mean_defect: Modes | None = None
    exact_gain: Modes | None = None
    evaluations: tuple[tuple[Array, Modes], ...] | None = None

    @property
    def gain(self) -> Modes:
        r"""$A$ itself: `exact_gain` when the sampler gives it (accurate where $|A| \ll 1$), else `1 + gain_minus_one`."""
        return 1 + self.gain_minus_one if self.exact_gain is None else self.exact_gain


class Marginal(NamedTuple):
    r"""The exact marginal of every mode at one time: $x_t \sim \mathcal N(\sqrt{\bar\alpha}\,m,\ R^2)$."""

    alpha_bar: Array
    one_minus_alpha_bar: Array
    variance: Modes  # R^2 = abar * lam + 1 - abar

    @property
    def sqrt_alpha_bar(self) -> Array:
        return safe_sqrt(self.alpha_bar)


def marginal(schedule: AbstractSchedule, t, lam: Modes) -> Marginal:
    """The exact marginal `Marginal` of modes with eigenvalues `lam` at forward time `t` (scalar)."""
    ab, omab = schedule.alpha_bar(t), schedule.one_minus_alpha_bar(t)
    return Marginal(ab, omab, ab * lam + omab)


class AbstractSampler(eqx.Module):
    r"""A diffusion sampler run with the exact score of a Gaussian source.

    One-step samplers implement `step`, the affine map of one step from forward time `t` down to
    `t_next < t`, per mode; the engine (`sample_law`) runs it along a grid. Multistep samplers derive
    from `AbstractMultistepSampler` instead.

    **Facts every sampler declares** (class attributes, so that grids, the CLI and Monte Carlo need no
    `isinstance` chains):

    - `evaluations_per_step`: network evaluations (NFE) per step.
    - `order`: order of convergence of the output law as the grid is refined (1 for Euler-type schemes).
    - `needs_beta`: whether the sampler uses the instantaneous rate $\beta(t)$ (samplers in $t$), rather
      than only $\bar\alpha$ at the grid points (samplers in $\sigma$, which accept $\bar\alpha = 0$).
    - `stochastic`: whether it draws fresh noise (`is_deterministic` may refine it per instance).
    - `lookahead`: 1 for samplers whose step from $t_k$ to $t_{k+1}$ also needs $t_{k+2}$ (Jain–Zhang); their
      `step` takes `t_after=` and a run on $N + 1$ points makes $N - 1$ steps, ending at $t_{N-1}$.

    `literal_step` is the textbook update rule on particles, used by `gdj.simulate` (Monte Carlo with any
    score, e.g. a Gaussian mixture's).
    """

    evaluations_per_step: ClassVar[int] = 1
    order: ClassVar[int] = 1
    needs_beta: ClassVar[bool] = True
    stochastic: ClassVar[bool] = False
    lookahead: ClassVar[int] = 0

    @property
    def is_deterministic(self) -> bool:
        """Whether the sampler is a deterministic map of its initial state (a flow map)."""
        return not self.stochastic

    def step(self, schedule: AbstractSchedule, t: Array, t_next: Array, lam: Modes) -> AffineStep:
        r"""The affine step from `t` to `t_next` (scalars, `t_next < t`) for eigenvalues `lam` `(*batch, d)`."""
        raise NotImplementedError(f"{type(self).__name__} does not define a one-step affine map (step).")

    def num_evaluations(self, schedule: AbstractSchedule, ts) -> int:
        """Network evaluations (NFE) this sampler spends on the grid `ts` (`N + 1` points)."""
        return self.evaluations_per_step * (int(np.shape(ts)[0]) - 1)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        r"""The largest number of steps whose NFE fits the budget `nfe` (0 if none does).

        `ends_clean`: whether the grid ends at $\sigma = 0$ (samplers whose last step is cheaper there)."""
        return int(nfe) // self.evaluations_per_step

    def literal_step(self, schedule: AbstractSchedule, t, t_next, x, score_fn, denoiser_fn, noise):
        r"""One literal step for one particle `x` `(d,)` from `t` down to `t_next`.

        `score_fn(x, t)` is the score; `denoiser_fn(x, t)` the posterior mean $\mathbb E[x_0 | x_t]$ (or `None`:
        Tweedie's formula from the score); `noise` a standard normal draw of the shape of `x`."""
        raise NotImplementedError(f"{type(self).__name__} has no literal update rule for Monte Carlo.")


def denoise(schedule: AbstractSchedule, t, x, score_fn, denoiser_fn):
    r"""The posterior mean $\mathbb E[x_0 | x_t = x]$: `denoiser_fn` if given, else Tweedie's formula."""
    if denoiser_fn is not None:
        return denoiser_fn(x, t)
    return (x + schedule.one_minus_alpha_bar(t) * score_fn(x, t)) / jnp.sqrt(schedule.alpha_bar(t))
