r"""Stages shared by the samplers that step in the VE noise level (k-diffusion, EDM, diffusers' Karras family).

Those samplers work on $\bar x = x/\alpha$ with noise level $\bar\sigma = \sigma/\alpha$ (VP $x = \alpha x_0 + \sigma\varepsilon$),
where the derivative of the probability-flow ODE is $d = (\bar x - D)/\bar\sigma = \hat\varepsilon$. In VP coordinates:

- an **Euler step** in $\bar\sigma$ from level $a$ to level $b$ is DDIM:
  $x_b = \frac{\sigma_b}{\sigma_a}x_a + \alpha_b(1 - e^{-h})D_a$, with $h = \lambda_b - \lambda_a$, $\lambda = -\log\bar\sigma$
  (half the log-SNR) and $e^{-h} = \bar\sigma_b/\bar\sigma_a$;
- a step that moves $\bar x$ by $(\bar\sigma_b - \bar\sigma_a)$ times the noise prediction of *another* point $x_j$
  is $x_b = \frac{\alpha_b}{\alpha_a}x_a - \frac{\alpha_b}{\alpha_a}\sigma_a(1 - e^{-h})\hat\varepsilon_j$;
- **churn** (Karras et al. Algorithm 2) raises the noise level from $\bar\sigma$ to $\hat\sigma = (1 + \gamma)\bar\sigma$
  with fresh noise: $\hat x = \frac{\hat\alpha}{\alpha}x + \hat\alpha\sqrt{\hat\sigma^2 - \bar\sigma^2}\,\xi$.

Every weight is written from an accurate $h$ (`half_log_snr_step`) through `exp`/`expm1`, so each stays relatively
accurate in float32 (the engine computes the per-mode defect analytically from the weights).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from .._core._errors import check
from .._core._numerics import safe_sqrt
from ._multistep import Combination, Level, half_log_snr_step


class SigmaStep(NamedTuple):
    r"""A step between two levels: $h$ (set to 1 where the true $h$ is $+\infty$, flagged by `infinite`),
    $e^{-h} = \bar\sigma_b/\bar\sigma_a$ and $1 - e^{-h}$ (both exact also for $h = +\infty$)."""

    h: Array
    ratio: Array
    one_minus_ratio: Array
    infinite: Array


def sigma_step(schedule, a: Level, b: Level, *, on_grid: bool) -> SigmaStep:
    """The `SigmaStep` from level `a` down to level `b` (`on_grid`: both are grid levels of `schedule`)."""
    h = half_log_snr_step(schedule, a, b, on_grid=on_grid)
    infinite = ~jnp.isfinite(h)
    safe = jnp.where(infinite, 1.0, h)  # keeps values and gradients finite in the unused branch
    ratio = jnp.where(infinite, 0.0, jnp.exp(-safe))
    one_minus = jnp.where(infinite, 1.0, -jnp.expm1(-safe))
    return SigmaStep(safe, ratio, one_minus, infinite)


def level_from_ve_sigma_squared(s2: Array) -> Level:
    r"""The level with $\bar\sigma^2 = $ `s2` (not a grid point): $\bar\alpha = 1/(1 + \bar\sigma^2)$."""
    return Level(jnp.full_like(s2, jnp.nan), 1 / (1 + s2), s2 / (1 + s2))


def select_level(pred: Array, a: Level, b: Level) -> Level:
    """`a` where `pred` holds, else `b` (field by field)."""
    return Level(*(jnp.where(pred, x, y) for x, y in zip(a, b)))


def slot_weights(num_slots: int, entries: dict) -> tuple:
    """A tuple of `num_slots` weights, `entries[j]` at slot j and 0.0 elsewhere."""
    return tuple(entries.get(j, 0.0) for j in range(num_slots))


def euler_stage(schedule, a: Level, b: Level, *, base: int, num_slots: int, on_grid: bool) -> Combination:
    r"""The Euler step in $\bar\sigma$ (= DDIM) from slot `base` (at level `a`) to level `b`."""
    st = sigma_step(schedule, a, b, on_grid=on_grid)
    scale = b.sigma / jnp.where(a.sigma > 0, a.sigma, 1.0)
    return Combination(
        base=base,
        scale=scale,
        data=slot_weights(num_slots, {base: b.alpha * st.one_minus_ratio}),
        noise=slot_weights(num_slots, {}),
        level=b,
    )


def ancestral_split(st: SigmaStep, eta) -> tuple[Array, Array]:
    r"""k-diffusion's `get_ancestral_step` as fractions: $\sigma_{\rm up}^2 = u\,\bar\sigma_b^2$ and
    $\sigma_{\rm down} = \bar\sigma_b\sqrt{1 - u}$, with $u = \min(1, \eta^2(1 - e^{-2h}))$. Returns $(u, \sqrt{1 - u})$."""
    one_minus_sq = jnp.where(st.infinite, 1.0, -jnp.expm1(-2 * st.h))  # (sigma_a^2 - sigma_b^2)/sigma_a^2
    u = jnp.minimum(1.0, jnp.asarray(eta) ** 2 * one_minus_sq)
    return u, safe_sqrt(1 - u)  # u = 1 (capped, or a jump to sigma = 0): constant there, gradient 0


def finite_sigma_state(schedule, t0, name: str) -> Array:
    r"""A scalar solver state (0) that carries the check that the grid starts at a finite VE noise level
    ($\bar\alpha(t_0) > 0$; $\bar\alpha$ only grows along the grid): a `ValueError` for concrete grids, a runtime error
    inside jit."""
    alpha_bar = jnp.asarray(schedule.alpha_bar(t0))
    return check(
        jnp.zeros((), dtype=alpha_bar.dtype),
        ~(alpha_bar > 0),
        f"{name} steps in the VE noise level sigma = sqrt((1 - abar)/abar), which is infinite at abar = 0: "
        "start the grid at t_0 < 1 (a finite sigma_max, as in diffusers and k-diffusion).",
    )
