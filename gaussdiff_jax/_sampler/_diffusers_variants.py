r"""Samplers as diffusers runs them where diffusers departs from the published method.

**SDE-DPM-Solver++(3M).** diffusers 0.42's `DPMSolverMultistepScheduler.multistep_dpm_solver_third_order_update`
weights the second divided difference $D_2 = (D_{1,0} - D_{1,1})/(r_0 + r_1)$ by
$\alpha_t\big(\frac{1 - e^{-2h} - 2h}{(2h)^2} - \frac12\big)$, where the exponential integrator of the SDE (and
k-diffusion's `sample_dpmpp_3m_sde`, $-\varphi_3$ with $\varphi_3 = \varphi_2/h_\eta - \frac12$) has
$\alpha_t\big(\frac{1 - e^{-2h} - 2h}{(2h)^2} + \frac12\big) = \alpha_t\,2h\,\varphi_3(-2h)$: the sign of $\frac12$ is
flipped. The difference, $-\alpha_t D_2$ with $D_2 = O(h^2)$, is a local error $O(h^2)$: diffusers' third-order SDE
solver converges with order 1 only. `DiffusersSDEDPMSolver3M` is `DPMSolverMultistep(3, "sde-dpmsolver++")` with
that weight (its noise, mean transport and warm-up are unchanged: the extra weights sum to 0).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._dpm_solver import DPMSolverMultistep
from ._multistep import half_log_snr_step
from ._registry import register


@register("dpmpp-3m-sde-diffusers", "SDE-DPM-Solver++(3M) with diffusers 0.42's D2 weight (first order)")
class DiffusersSDEDPMSolver3M(DPMSolverMultistep):
    r"""diffusers 0.42's SDE-DPM-Solver++(3M): `DPMSolverMultistep(3, "sde-dpmsolver++")` plus $-\alpha_t D_2$ on the
    third-order steps (module docstring). Converges with order 1."""

    order = 1  # type: ignore[assignment]

    def __init__(self, lower_order_final: bool = True, euler_at_final: bool = False):
        super().__init__(3, "sde-dpmsolver++", "midpoint", lower_order_final, euler_at_final)

    def step(self, schedule, slots, next_level, state, info):
        ((target, cmb),), state = super().step(schedule, slots, next_level, state, info)
        cur, new = slots[0], next_level
        h = half_log_snr_step(schedule, cur, new)
        order = self._effective_order(info, new.one_minus_alpha_bar == 0)
        h_safe = jnp.where(jnp.isfinite(h) & (h > 0), h, 1.0)
        r0 = jnp.where(order >= 3, half_log_snr_step(schedule, slots[1], cur) / h_safe, 1.0)
        r1 = jnp.where(order >= 3, half_log_snr_step(schedule, slots[2], slots[1]) / h_safe, 1.0)
        # D2 = (D1_0 - D1_1)/(r0 + r1), D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1: weights on (m0, m1, m2).
        q = 1 / (r0 + r1)
        d2 = (q / r0, -q * (1 / r0 + 1 / r1), q / r1)
        extra = jnp.where(order >= 3, -new.alpha, 0.0)
        data = tuple(w + extra * dw for w, dw in zip(cmb.data, d2))
        return ((target, cmb._replace(data=data)),), state
