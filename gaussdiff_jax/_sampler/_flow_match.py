r"""Flow-matching samplers (diffusers' `FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler`).

**Coordinates.** A flow-matching model moves $x_f = (1 - s)x_0 + s z$ with velocity $v = z - x_0$ (diffusers' `sigmas`
are $s$). This is the VP state up to a scale: with $\alpha, \sigma$ the VP coefficients of the same level
($\alpha^2 + \sigma^2 = 1$), $1 - s = \alpha/(\alpha + \sigma)$, $s = \sigma/(\alpha + \sigma)$ and
$$x_f = \frac{x_{\rm VP}}{\alpha + \sigma},\qquad \hat v = \hat\varepsilon - D .$$
So the flow coordinates are a function of the level alone: these samplers run on any schedule, and on
`gdj.RectifiedFlow(shift)` (whose $\bar\alpha = (1-s)^2/((1-s)^2 + s^2)$) at the grid $t_k$ with `flow_sigma(t_k)` = diffusers'
sigmas they are diffusers' schedulers.

- **Euler** $x_f' = x_f + (s' - s)\hat v$ is DDIM ($x' = \alpha'D + \sigma'\hat\varepsilon$ in VP).
- **Stochastic Euler** (`stochastic_sampling=True`): $x_f' = (1 - s')\hat x_0 + s'\xi$, i.e. $x' = \alpha'D(x) + \sigma'\xi$:
  the state is redrawn around the denoiser output at every step.
- **Heun** in $s$: $x_{f,p} = x_f + (s' - s)\hat v(x)$, $x_f' = x_f + (s' - s)(\hat v(x) + \hat v(x_p))/2$, and an Euler
  step where $s' = 0$ (diffusers: $2N - 1$ evaluations). Not EDM's Heun: the trapezoid rule in $s$ on $x_f$ differs
  from the one in $\bar\sigma = s/(1 - s)$ on $\bar x = x_f/(1 - s)$ (their Euler steps coincide).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._kdpm2 import _two_stage_evaluations, _two_stage_steps_for_nfe
from ._multistep import AbstractMultistepSampler, Combination, alpha_bar_difference
from ._registry import register
from ._stages import euler_stage


@register("flow-euler", "FlowMatch Euler (= DDIM); stochastic_sampling=True redraws the state every step",
          aliases=("flowmatch-euler", "flow-match-euler"))
class FlowMatchEuler(AbstractMultistepSampler):
    r"""diffusers' `FlowMatchEulerDiscreteScheduler`, deterministic or with `stochastic_sampling=True` (module docstring).

    **Facts:** 1 evaluation per step, 1 slot. Deterministic: DDIM, order 1. Stochastic: $x' = \alpha'D(x) + \sigma'\xi$
    is not a discretization of a marginal-preserving process: each step loses the conditional variance of $x_0$
    given $x$, so on a grid with fixed ends the law does not converge as $N$ grows (`order = 0`); on grids that
    end at $s = 0$ its error is set by the last noise levels. Diffusers' `s_churn` arguments of this scheduler's
    `step` are ignored by it. **Init:** diffusers starts from $x_f = z$ at $s_0$, i.e. VP variance
    $(\alpha_0 + \sigma_0)^2$: `init = 1 + 2 sqrt(abar_0 (1 - abar_0))` (`"standard"` at $s_0 = 1$, its default).
    """

    stochastic_sampling: bool = False

    stochastic = True
    num_slots = 1

    @property
    def is_deterministic(self) -> bool:
        return not self.stochastic_sampling

    @property
    def order(self) -> int:  # type: ignore[override]
        return 0 if self.stochastic_sampling else 1

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        if not self.stochastic_sampling:
            return ((None, euler_stage(schedule, cur, new, base=0, num_slots=1, on_grid=True)),), state
        cmb = Combination(
            base=0,
            scale=jnp.zeros_like(new.alpha),
            data=(new.alpha,),
            noise=(0.0,),
            level=new,
            fresh=new.one_minus_alpha_bar,
            noise_residual=-new.sigma,
        )
        return ((None, cmb),), state


@register("flow-heun", "FlowMatch Heun in the flow sigma (diffusers FlowMatchHeunDiscreteScheduler)",
          aliases=("flowmatch-heun", "flow-match-heun"))
class FlowMatchHeun(AbstractMultistepSampler):
    r"""diffusers' `FlowMatchHeunDiscreteScheduler` (module docstring), without churn.

    **Facts:** 2 evaluations per step, 1 on a last step to $s = 0$ ($2N - 1$), order 2, deterministic, 2 slots
    (the point and the predictor, both grid levels). diffusers' `step` also takes `s_churn`: it adds noise as
    in $\bar\sigma$-space ($x_f + \sqrt{\hat s^2 - s^2}\xi$), which does not move a flow state to the level $\hat s$, and
    rescales the velocity by $s/\hat s$; not reproduced (pipelines do not pass it). **Init:** as `FlowMatchEuler`.
    """

    evaluations_per_step = 2
    order = 2
    num_slots = 2

    def num_evaluations(self, schedule, ts) -> int:
        return _two_stage_evaluations(schedule, ts)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        return _two_stage_steps_for_nfe(nfe, ends_clean)

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        predictor = euler_stage(schedule, cur, new, base=0, num_slots=2, on_grid=True)
        # x' = ((alpha' + sigma')/(alpha + sigma)) x + c (v0 + v_p), c = (alpha' + sigma')(s' - s)/2 and
        # s' - s = (sigma' alpha - sigma alpha')/((alpha + sigma)(alpha' + sigma')), the numerator = (abar - abar')/(sigma' alpha + sigma alpha').
        d_ab = alpha_bar_difference(schedule, cur, new, on_grid=True)  # abar' - abar > 0
        flow_scale = cur.alpha + cur.sigma
        c = -d_ab / (2 * flow_scale * (new.sigma * cur.alpha + cur.sigma * new.alpha))
        clean = new.one_minus_alpha_bar == 0
        c0, cp = jnp.where(clean, 2 * c, c), jnp.where(clean, 0.0, c)  # Euler where s' = 0
        final = Combination(
            base=0,
            scale=(new.alpha + new.sigma) / flow_scale,
            data=(-c0, -cp),
            noise=(c0, cp),
            level=new,
        )
        return ((1, predictor), (0, final)), state


register("flow-euler-stochastic", "FlowMatch Euler with stochastic_sampling=True (x' = alpha' D + fresh noise)",
         FlowMatchEuler, defaults={"stochastic_sampling": True})
