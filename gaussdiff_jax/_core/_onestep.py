r"""The engine for one-step samplers: per mode, one affine map per step (MATH.md section 2).

The law of the output is $\mathcal N(g\,m, v)$ per mode. Rather than iterating $(g, v)$ directly,
the engine iterates their deviations from the exact marginal $p_t$, which is what the divergences need
and what float32 can hold on fine grids:

- mean deviation $\epsilon_k = g_k - \sqrt{\bar\alpha(t_k)}$: $\epsilon_{k+1} = A_k\epsilon_k + \text{mean defect}_k$;
- relative variance deviation $\delta_k = v_k/R^2(t_k) - 1$: $\delta_{k+1} = e_k + (1 + e_k - Q_k/R^2_{k+1})\,\delta_k$,
  where $e_k$ is the step's relative variance defect $(A_k^2R_k^2 + Q_k)/R^2_{k+1} - 1$.

Both recursions are exact identities; they only move the cancellation into the per-step defects, which
samplers give in closed form or which are assembled from $O(h)$ terms that each carry full relative
precision. Modes whose exact marginal variance vanishes at a grid point (a zero eigenvalue at $t = 0$)
fall back to the plain variance recursion $v_{k+1} = A_k^2 v_k + Q_k$, which is also carried.

A network's denoiser error (`ErrorProfile`) enters each evaluation of a step with the step's weight on the
denoiser output (`AffineStep.evaluations`): an extra variance $\sum w^2 s^2$ in both recursions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from .._sampler import AbstractSampler, marginal
from .._schedule import AbstractSchedule
from ._model_error import ErrorProfile


class OneStepState(NamedTuple):
    """Per mode: mean deviation, relative variance deviation, plain variance."""

    mean_deviation: Array
    relative_deviation: Array
    variance: Array


def initial_state(schedule: AbstractSchedule, t0, lam, init_variance) -> OneStepState:
    """Exact start (`init_variance=None`) or $x_{t_0} \\sim \\mathcal N(0, c)$ in VP units."""
    mg = marginal(schedule, t0, lam)
    if init_variance is None:
        return OneStepState(jnp.zeros_like(lam), jnp.zeros_like(lam), mg.variance)
    c = jnp.asarray(init_variance, dtype=lam.dtype)
    # c / R^2 - 1 = ((c - 1) + abar (1 - lam)) / R^2, exact for the standard start c = 1.
    return OneStepState(
        jnp.broadcast_to(-mg.sqrt_alpha_bar, lam.shape).astype(lam.dtype),
        ((c - 1) + mg.alpha_bar * (1 - lam)) / mg.variance,
        jnp.broadcast_to(c, lam.shape).astype(lam.dtype),
    )


def error_variance(step, schedule: AbstractSchedule, model_error: ErrorProfile | None, lam) -> Array | float:
    """Extra variance of one step from the model's error at its evaluations: sum of w^2 s^2(log-SNR)."""
    if model_error is None:
        return 0.0
    if step.evaluations is None:
        raise ValueError(
            "sample_law(..., model_error=...): this sampler does not state the weights of its denoiser "
            "evaluations (AffineStep.evaluations), so a model's error cannot be propagated through it."
        )
    total = 0.0
    for t_eval, weight in step.evaluations:
        total = total + weight**2 * model_error(schedule.log_snr(t_eval))
    return total * jnp.ones_like(lam)


def onestep_step(
    sampler: AbstractSampler,
    schedule: AbstractSchedule,
    lam: Array,
    model_error: ErrorProfile | None,
    state: OneStepState,
    times: tuple,
) -> OneStepState:
    """One step of a one-step sampler on the per-mode state (`times` = (t, t_next) or (t, t_next, t_after))."""
    eps, delta, v = state
    t, t_next = times[0], times[1]
    if sampler.lookahead:
        step = sampler.step(schedule, t, t_next, lam, t_after=times[2])
    else:
        step = sampler.step(schedule, t, t_next, lam)
    a, Q = step.gain_minus_one, step.noise_variance
    Q = Q + error_variance(step, schedule, model_error, lam)
    mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
    ok = mg_next.variance > 0
    # One reciprocal, two products: divisions dominate a step's cost on CPUs (~4x a multiply).
    inv_R2_next = 1 / jnp.where(ok, mg_next.variance, 1.0)
    if step.variance_defect is None:
        # e R'^2 = (R^2 - R'^2) + (2 + a) a R^2 + Q, with R^2 - R'^2 = (1 - lam)(abar' - abar).
        d_ab = schedule.alpha_bar_increment(t, t_next)
        defect = ((1 - lam) * d_ab + (2 + a) * a * mg.variance + Q) * inv_R2_next
    else:
        defect = step.variance_defect + (Q - step.noise_variance) * inv_R2_next
    if step.mean_defect is None:
        d_sqrt_ab = schedule.alpha_bar_increment(t, t_next) / (mg_next.sqrt_alpha_bar + mg.sqrt_alpha_bar)
        mean_defect = a * mg.sqrt_alpha_bar + step.offset - d_sqrt_ab
    else:
        mean_defect = step.mean_defect
    # delta + (small) delta rather than (1 + small) delta: the rounding is then relative to the small factor,
    # which keeps an initial deviation (standard start) through 10^4 float32 steps.
    delta_next = jnp.where(ok, defect + delta + (defect - Q * inv_R2_next) * delta, 0.0)
    gain = step.gain
    near_one = jnp.abs(a) < 0.5  # same for the mean, unless the gain is far from 1 (a stiff step)
    eps_next = jnp.where(near_one, eps + a * eps, gain * eps) + mean_defect
    return OneStepState(eps_next, delta_next, gain**2 * v + Q)
