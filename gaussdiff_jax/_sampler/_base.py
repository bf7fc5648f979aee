"""The sampler strategy: one step of a sampler, per mode, as an affine Gaussian map (MATH.md section 2)."""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
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
    """

    gain_minus_one: Modes
    offset: Modes
    noise_variance: Modes
    variance_defect: Modes | None = None
    mean_defect: Modes | None = None
    exact_gain: Modes | None = None

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

    Concrete samplers implement `step`, the affine map of one step from forward time `t` down to
    `t_next < t`, per mode. The engine (`sample_law`) runs it along a grid.
    """

    @abc.abstractmethod
    def step(self, schedule: AbstractSchedule, t: Array, t_next: Array, lam: Modes) -> AffineStep:
        r"""The affine step from `t` to `t_next` (scalars, `t_next < t`) for eigenvalues `lam` `(*batch, d)`."""
