"""Samplers that discretize the reverse SDE or the probability-flow ODE in forward time t ([PG]'s schemes).

Notation (MATH.md section 2): step from s = t down to s' = t_next, h = s - s' > 0, b = beta/2,
R^2 = abar*lam + 1 - abar. Per mode the probability-flow ODE (run backwards in t) is
dy/d(-t) = a_ode(s) y + c_ode(s) m with a_ode = b (lam - 1) abar / R^2 and c_ode = b sqrt(abar) / R^2.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax.numpy as jnp
from jaxtyping import Array

from .._core._errors import check
from .._schedule import AbstractSchedule
from ._base import AbstractSampler, AffineStep, Modes, marginal
from ._registry import register


def _score_weight(coefficient, mg, lam: Modes) -> Modes:
    r"""Weight of a denoiser error on a step that adds `coefficient` times the score: the score is
    $-(x - \sqrt{\bar\alpha}D)/(1 - \bar\alpha)$, so an error $e$ in $D$ moves it by $\sqrt{\bar\alpha}\,e/(1 - \bar\alpha)$."""
    om = mg.one_minus_alpha_bar
    return jnp.broadcast_to(coefficient * mg.sqrt_alpha_bar / jnp.where(om > 0, om, 1.0), jnp.shape(lam))


def ode_field(schedule: AbstractSchedule, s, lam: Modes) -> tuple[Modes, Modes]:
    r"""The probability-flow ODE's affine field $(a^o(s), c^o(s))$ per mode, in reverse time."""
    mg = marginal(schedule, s, lam)
    b_over_R2 = 0.5 * schedule.beta(s) / mg.variance  # one division per mode (the costly operation)
    return b_over_R2 * (lam - 1) * mg.alpha_bar, b_over_R2 * mg.sqrt_alpha_bar


@register("em", "Euler-Maruyama on the reverse SDE", aliases=("eulermaruyama", "euler-maruyama"))
class EulerMaruyama(AbstractSampler):
    r"""Euler–Maruyama on the reverse SDE: $A = 1 + h\,b(1 - 2/R^2)$, $C = 2hb\sqrt{\bar\alpha}/R^2$, $Q = 2hb$."""

    stochastic = True

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        hb = 0.5 * (t - t_next) * schedule.beta(t)
        return x + hb * (x + 2 * score_fn(x, t)) + jnp.sqrt(2 * hb) * noise

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        h = t - t_next
        mg = marginal(schedule, t, lam)
        hb = 0.5 * h * schedule.beta(t)
        inv_R2 = 1 / mg.variance
        return AffineStep(
            gain_minus_one=hb * (1 - 2 * inv_R2),
            offset=2 * hb * mg.sqrt_alpha_bar * inv_R2,
            noise_variance=jnp.broadcast_to(2 * hb, jnp.shape(lam)),
            evaluations=((t, _score_weight(2 * hb, mg, lam)),),
        )


@register("ei", "exponential integrator on the reverse SDE", aliases=("exponentialintegrator",))
class ExponentialIntegrator(AbstractSampler):
    r"""Exponential integrator on the reverse SDE: linear part exact, score frozen at the step start.

    With $\Delta = \frac12\int_{s'}^{s}\beta$: $A = 1 + \gamma_1(1 - 2/R^2)$, $C = 2\gamma_1\sqrt{\bar\alpha}/R^2$,
    $Q = 2\gamma_2$, where $\gamma_1 = e^\Delta - 1$, $\gamma_2 = \frac12(e^{2\Delta} - 1)$.
    """

    stochastic = True

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        two_delta = schedule.log_alpha_bar_ratio(t, t_next)
        g1 = jnp.expm1(0.5 * two_delta)
        return (1 + g1) * x + 2 * g1 * score_fn(x, t) + jnp.sqrt(jnp.expm1(two_delta)) * noise

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        mg = marginal(schedule, t, lam)
        two_delta = schedule.log_alpha_bar_ratio(t, t_next)
        g1 = jnp.expm1(0.5 * two_delta)
        inv_R2 = 1 / mg.variance
        return AffineStep(
            gain_minus_one=g1 * (1 - 2 * inv_R2),
            offset=2 * g1 * mg.sqrt_alpha_bar * inv_R2,
            noise_variance=jnp.broadcast_to(jnp.expm1(two_delta), jnp.shape(lam)),
            evaluations=((t, _score_weight(2 * g1, mg, lam)),),
        )


@register("ddpm", "DDPM ancestral sampling (Ho et al., discrete betas; ddpm-pg is Pierret-Galerne's linearized form)")
class DDPM(AbstractSampler):
    r"""DDPM ancestral sampling, $y' = (y + \beta_k\,\mathrm{score})/\sqrt{1-\beta_k} + \sqrt{Q}\,\xi$.

    **Arguments:**

    - `beta`: `"discrete"` (Ho et al.: $\beta_k = 1 - \bar\alpha(s)/\bar\alpha(s')$, exact for any grid) or
      `"linearized"` ([PG]'s form: $\beta_k = h\,\beta(s)$; needs $\beta_k < 1$).
    - `variance`: `"beta"` ($Q = \beta_k$) or `"posterior"` ($Q = \tilde\beta_k = \beta_k(1-\bar\alpha')/(1-\bar\alpha)$).
    """

    beta: Literal["discrete", "linearized"] = "discrete"
    variance: Literal["beta", "posterior"] = "beta"

    stochastic = True

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        ab, ab_n = schedule.alpha_bar(t), schedule.alpha_bar(t_next)
        if self.beta == "discrete":
            beta_k, keep = schedule.alpha_bar_increment(t, t_next) / ab_n, ab / ab_n
        else:
            beta_k = (t - t_next) * schedule.beta(t)
            keep = 1 - beta_k
        if self.variance == "beta":
            q = beta_k
        else:
            q = beta_k * schedule.one_minus_alpha_bar(t_next) / schedule.one_minus_alpha_bar(t)
        return (x + beta_k * score_fn(x, t)) / jnp.sqrt(keep) + jnp.sqrt(q) * noise

    def __check_init__(self):
        if self.beta not in ("discrete", "linearized"):
            raise ValueError(f"DDPM: beta must be 'discrete' or 'linearized'; got {self.beta!r}.")
        if self.variance not in ("beta", "posterior"):
            raise ValueError(f"DDPM: variance must be 'beta' or 'posterior'; got {self.variance!r}.")

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        mg, mg_next = marginal(schedule, t, lam), marginal(schedule, t_next, lam)
        inv_R2 = 1 / mg.variance
        if self.beta == "discrete":
            d_abar = schedule.alpha_bar_increment(t, t_next)
            beta_k = d_abar / mg_next.alpha_bar
            keep = mg.alpha_bar / mg_next.alpha_bar  # 1 - beta_k
            sqrt_keep = jnp.sqrt(keep)
            d_sqrt_abar = d_abar / (mg_next.sqrt_alpha_bar + mg.sqrt_alpha_bar)
            # A = (sqrt(abar abar') (lam - 1) + sqrt(keep)) / R^2, written as 1 + small part.
            gain_minus_one = ((lam - 1) * mg.sqrt_alpha_bar * d_sqrt_abar - beta_k / (1 + sqrt_keep)) * inv_R2
            offset = beta_k * mg_next.sqrt_alpha_bar * inv_R2
        else:
            beta_k = (t - t_next) * schedule.beta(t)
            beta_k = check(
                beta_k,
                ~(beta_k < 1),
                "DDPM(beta='linearized'): a step has h*beta(t) >= 1, so sqrt(1 - beta_k) is undefined. "
                "Use more steps (a finer grid where beta is large) or DDPM(beta='discrete').",
            )
            sqrt_keep = jnp.sqrt(1 - beta_k)
            gain_minus_one = (beta_k / (1 + sqrt_keep) - beta_k * inv_R2) / sqrt_keep
            offset = beta_k * mg.sqrt_alpha_bar / sqrt_keep * inv_R2
        if self.variance == "beta":
            noise = beta_k
        else:
            noise = beta_k * mg_next.one_minus_alpha_bar / mg.one_minus_alpha_bar
        error = _score_weight(beta_k / sqrt_keep, mg, lam)
        return AffineStep(gain_minus_one, offset, jnp.broadcast_to(noise, jnp.shape(lam)), evaluations=((t, error),))


class AbstractRungeKutta(AbstractSampler):
    r"""An explicit Runge–Kutta method on the probability-flow ODE in $t$ (deterministic).

    The field is affine in the state, $f(y, s) = a(s)y + c(s)m$, so every stage is affine too: stage $i$
    has slope $K_i y + L_i m$ with $K_i = a_i(1 + h\sum_j a_{ij}K_j)$, $L_i = a_i h\sum_j a_{ij}L_j + c_i$,
    and the step is $A - 1 = h\sum_i b_iK_i$, $C = h\sum_i b_iL_i$. Subclasses give the Butcher tableau.
    """

    nodes: ClassVar[tuple[float, ...]]
    matrix: ClassVar[tuple[tuple[float, ...], ...]]
    weights: ClassVar[tuple[float, ...]]

    def literal_step(self, schedule, t, t_next, x, score_fn, denoiser_fn, noise):
        # Probability-flow ODE in reverse time: dx/d(-t) = beta(t)/2 (x + s(x, t)).
        h = t - t_next
        ks = []
        for node, row in zip(self.nodes, self.matrix):
            y = x + h * sum((a * k for a, k in zip(row, ks) if a), jnp.zeros_like(x))
            s = t - node * h
            ks.append(0.5 * schedule.beta(s) * (y + score_fn(y, s)))
        return x + h * sum(w * k for w, k in zip(self.weights, ks) if w)

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        h = t - t_next
        Ks: list[Array] = []
        Ls: list[Array] = []
        fields: list[Array] = []
        error_slopes: list[Array] = []
        stage_times = []
        for i, node in enumerate(self.nodes):
            # The last stage sits at t_next itself: in float32, t - h can differ from t_next by ulp(t), which
            # is a large relative error when t_next << t (a final step to t_min = 1e-3 shifts beta(t_min)
            # and R^2(t_min) by ~1e-5 relative, and stiff steps amplify that by ~1/|A|).
            stage_time = t_next if node == 1 else t - node * h
            a_i, c_i = ode_field(schedule, stage_time, lam)
            fields.append(a_i)
            stage_times.append(stage_time)
            mg_i = marginal(schedule, stage_time, lam)
            error_slopes.append(_score_weight(0.5 * schedule.beta(stage_time), mg_i, lam))
            coeffs = self.matrix[i]
            stage_K = sum((coeffs[j] * Ks[j] for j in range(i) if coeffs[j]), jnp.zeros_like(a_i))
            stage_L = sum((coeffs[j] * Ls[j] for j in range(i) if coeffs[j]), jnp.zeros_like(a_i))
            Ks.append(a_i * (1 + h * stage_K))
            Ls.append(a_i * h * stage_L + c_i)
        gain_minus_one = h * sum(w * K for w, K in zip(self.weights, Ks) if w)
        offset = h * sum(w * L for w, L in zip(self.weights, Ls) if w)
        return AffineStep(gain_minus_one, offset, jnp.zeros_like(gain_minus_one),
                          evaluations=self._error_weights(h, fields, error_slopes, stage_times))

    def _error_weights(self, h, fields, error_slopes, stage_times):
        """Per stage i, the weight of a denoiser error there on the step's output: an error moves slope i by
        `error_slopes[i]`, and later stages see it through their state (slope = field * state)."""
        out = []
        for i in range(len(self.nodes)):
            d_slopes: list = []
            for l in range(len(self.nodes)):
                through = sum((self.matrix[l][j] * d_slopes[j] for j in range(l) if self.matrix[l][j]), 0.0)
                d_slopes.append(fields[l] * h * through + (error_slopes[i] if l == i else 0.0))
            out.append((stage_times[i], h * sum(w * d for w, d in zip(self.weights, d_slopes) if w)))
        return tuple(out)


@register("euler", "Euler on the probability-flow ODE in t")
class Euler(AbstractRungeKutta):
    r"""Euler on the probability-flow ODE in $t$: $A = 1 + h\,a^o(s)$, $C = h\,c^o(s)$ (order 1)."""

    nodes = (0.0,)
    matrix = ((),)
    weights = (1.0,)


@register("heun", "Heun (trapezoid) on the probability-flow ODE in t")
class Heun(AbstractRungeKutta):
    r"""Heun (Euler predictor, trapezoid corrector) on the probability-flow ODE in $t$, every step (order 2)."""

    evaluations_per_step = 2
    order = 2

    nodes = (0.0, 1.0)
    matrix = ((), (1.0,))
    weights = (0.5, 0.5)

    def step(self, schedule, t, t_next, lam) -> AffineStep:
        step = super().step(schedule, t, t_next, lam)
        # A = ((1 + h a) (1 + h a') + 1) / 2 directly: on stiff steps A can be << 1.
        h = t - t_next
        a, _ = ode_field(schedule, t, lam)
        a_next, _ = ode_field(schedule, t_next, lam)
        return step._replace(exact_gain=0.5 * ((1 + h * a) * (1 + h * a_next) + 1))


@register("rk4", "classical Runge-Kutta 4 on the probability-flow ODE in t")
class RK4(AbstractRungeKutta):
    r"""Classical RK4 on the probability-flow ODE in $t$ (stages at $s$, $s - h/2$ twice, $s'$; order 4)."""

    evaluations_per_step = 4
    order = 4

    nodes = (0.0, 0.5, 0.5, 1.0)
    matrix = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    weights = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


register("ddpm-pg", "DDPM ancestral, Pierret-Galerne linearized form", DDPM, aliases=("ddpm_pg",),
         defaults={"beta": "linearized"})
