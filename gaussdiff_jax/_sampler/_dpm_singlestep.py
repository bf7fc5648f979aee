r"""DPM-Solver singlestep (Lu et al. 2022; diffusers' `DPMSolverSinglestepScheduler`): DPM-Solver-2S / -3S and their
data-prediction (++) and SDE variants, with the intermediate points on the grid.

diffusers runs one model evaluation per timestep and groups the timesteps by its *order list*
(`get_order_list`): `[1, 2, 3, 1, 2, 3, ...]` for `solver_order=3`. A step of order $p$ goes from the start of its
group, $x_s$ ($p - 1$ grid points back), to the next grid point using the outputs at the $p$ points of the group so
far: the first step of a group is DDIM, the others the singlestep updates (module `_dpm_solver` has the multistep
formulas; here $h = \lambda_t - \lambda_s$ spans the whole group and $r_j$ are the positions of the intermediate
points, $h_j/h$). The list ends with a lower order: with `lower_order_final`, a last step that would complete a group
of the full order is first order, and a last step onto $\sigma = 0$ (`final_sigmas_type="zero"`) is always first
order. diffusers forces `lower_order_final=True` when $N$ is not a multiple of `solver_order` or the grid ends at
$\sigma = 0$ (its default); the rule above gives the same list in every case.

In slot form the start of the group is slot $p - 1$; its point enters through $D_s$ and $\hat\varepsilon_s$
($x_s = \alpha_sD_s + \sigma_s\hat\varepsilon_s$): the first-order part of every variant is then $\alpha_tD_s + \sigma_t\hat\varepsilon_s$
($\sigma_te^{-h}\hat\varepsilon_s$ plus fresh noise for SDE-DPM-Solver++) exactly, with no cancellation.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from ._multistep import AbstractMultistepSampler, Combination, half_log_snr_step, phi
from ._registry import register

Algorithm = Literal["dpmsolver++", "dpmsolver", "sde-dpmsolver++"]


def _ratio(num, den, use):
    """num/den where `use` (den > 0 there), 1.0 elsewhere (unused candidate orders at warm-up)."""
    ok = use & (den != 0) & jnp.isfinite(den) & jnp.isfinite(num)
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 1.0)


@register("dpm-singlestep", "DPM-Solver(++) singlestep, orders 1-3 (diffusers DPMSolverSinglestepScheduler)",
          aliases=("dpmsolver-singlestep",))
class DPMSolverSinglestep(AbstractMultistepSampler):
    r"""DPM-Solver(++) singlestep of order 1–3 as diffusers runs it (module docstring).

    **Arguments** (diffusers' names):

    - `solver_order`: 1, 2 or 3.
    - `algorithm`: `"dpmsolver++"`, `"dpmsolver"` or `"sde-dpmsolver++"` (diffusers' `algorithm_type`).
    - `solver_type`: `"midpoint"` or `"heun"` (the weights of the higher differences).
    - `lower_order_final`: diffusers' flag and default (see the module docstring; the last step onto $\sigma = 0$ is
      first order regardless, and a last partial group is lower order anyway, so the default reproduces diffusers'
      forced `lower_order_final=True` on its default grids).
    - `sde_third_order`: `"diffusers"` reproduces diffusers' weight on $D_2$ for `"sde-dpmsolver++"`, `"heun"`, order 3,
      $\alpha_t\big((1 - e^{-2h} - 2h)/(4h^2) - \tfrac12\big) \to -\alpha_t$ as $h \to 0$, which makes that step inconsistent;
      `"correct"` uses $\alpha_t\big((1 - e^{-2h} - 2h)/(4h^2) + \tfrac12\big) = 2h\alpha_t\varphi_3(-2h)$ (the exponential
      integrator's weight). No effect on other configurations.

    **Facts:** 1 evaluation per step, `solver_order` slots (all grid levels). Order of the run: `solver_order` for
    the ODE variants when $N$ is a multiple of it and `lower_order_final=False` (the last group then has full
    order), else at most 2 (one first-order last step); 1 for `"sde-dpmsolver++"`, except 0 (no convergence) for
    its order-3 `"heun"` variant with diffusers' weight. **Init:** `"standard"`
    (diffusers' `init_noise_sigma = 1`).
    """

    solver_order: int = 2
    algorithm: Algorithm = "dpmsolver++"
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = False
    sde_third_order: Literal["diffusers", "correct"] = "diffusers"

    stochastic = True  # the SDE variant draws noise (`is_deterministic` says per instance)

    def __check_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"DPMSolverSinglestep: solver_order must be 1, 2 or 3; got {self.solver_order!r}.")
        if self.algorithm not in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"):
            raise ValueError(
                f"DPMSolverSinglestep: algorithm must be 'dpmsolver++', 'dpmsolver' or 'sde-dpmsolver++' (diffusers has "
                f"no singlestep 'sde-dpmsolver'); got {self.algorithm!r}."
            )
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"DPMSolverSinglestep: solver_type must be 'midpoint' or 'heun'; got {self.solver_type!r}.")
        if self.sde_third_order not in ("diffusers", "correct"):
            raise ValueError(f"DPMSolverSinglestep: sde_third_order must be 'diffusers' or 'correct'; got {self.sde_third_order!r}.")

    @property
    def num_slots(self) -> int:  # type: ignore[override]
        return self.solver_order

    @property
    def is_deterministic(self) -> bool:
        return not self.algorithm.startswith("sde")

    @property
    def order(self) -> int:  # type: ignore[override]
        if not self.is_deterministic:
            broken = self.solver_order == 3 and self.solver_type == "heun" and self.sde_third_order == "diffusers"
            return 0 if broken else 1
        return self.solver_order if not self.lower_order_final else min(self.solver_order, 2)

    def step_order(self, info, lands_clean):
        """Order of step `info.index` (traced): diffusers' order list (module docstring)."""
        natural = info.index % self.solver_order + 1
        last = info.index == info.num_steps - 1
        lower = last & ((self.lower_order_final & (natural == self.solver_order)) | lands_clean)
        return jnp.where(lower, 1, natural)

    def _coefficients(self, new, h):
        """(first-order noise weight, c1 = weight of D1 (2nd order, heun) or D1_1 (3rd, midpoint), c2 on D2,
        c1 of 2nd-order midpoint, fresh noise, noise residual) for a group of log-SNR length h."""
        a_t, s_t = new.alpha, new.sigma
        if self.algorithm == "dpmsolver++":
            c1 = a_t * h * phi(2, -h)
            return s_t, c1, a_t * h * phi(3, -h), 0.5 * a_t * -jnp.expm1(-h), 0.0, 0.0
        if self.algorithm == "dpmsolver":
            c1 = -s_t * h * phi(2, h)
            return s_t, c1, -s_t * h * phi(3, h), -0.5 * s_t * jnp.expm1(h), 0.0, 0.0
        e2 = -jnp.expm1(-2 * h)  # 1 - e^{-2h}
        c1 = a_t * 2 * h * phi(2, -2 * h)
        if self.sde_third_order == "correct":
            c2 = a_t * 2 * h * phi(3, -2 * h)
        else:  # diffusers: alpha_t ((1 - e^{-2h} - 2h)/(4h^2) - 1/2) = -alpha_t (phi_2(-2h) + 1/2)
            c2 = -a_t * (phi(2, -2 * h) + 0.5)
        return s_t * jnp.exp(-h), c1, c2, 0.5 * a_t * e2, new.one_minus_alpha_bar * e2, s_t * jnp.expm1(-h)

    def step(self, schedule, slots, next_level, state, info):
        o, new = self.solver_order, next_level
        lands_clean = new.one_minus_alpha_bar == 0
        order = self.step_order(info, lands_clean)
        plus = self.algorithm != "dpmsolver"  # corrections on D (data prediction) or on eps_hat
        data, noise = [0.0] * o, [0.0] * o
        fresh, noise_res = 0.0, 0.0
        for p in range(1, o + 1):
            use = order == p
            start = slots[p - 1]
            h_true = half_log_snr_step(schedule, start, new)
            h = jnp.where(jnp.isfinite(h_true) & (h_true > 0), h_true, 1.0)
            # On sigma' = 0 (h = inf, order 1) every term but alpha' D_s carries a factor sigma' = 0.
            first_noise, c1, c2, c1_mid, q, nr = self._coefficients(new, h)
            extra = [0.0] * o  # correction weights on the model outputs m_0 (slot 0), m_1, m_2
            if p == 2:
                r0 = _ratio(half_log_snr_step(schedule, start, slots[0]), h, use)
                c = c1_mid if self.solver_type == "midpoint" else c1
                extra[0], extra[1] = c / r0, -c / r0
            elif p == 3:
                r0 = _ratio(half_log_snr_step(schedule, start, slots[0]), h, use)
                r1 = _ratio(half_log_snr_step(schedule, start, slots[1]), h, use)
                if self.solver_type == "midpoint":  # c1 * D1_1, D1_1 = (m0 - m2)/r0
                    extra[0], extra[2] = c1 / r0, -c1 / r0
                else:  # c1 D1 + c2 D2 on D1_0 = (m1 - m2)/r1 and D1_1 = (m0 - m2)/r0
                    gap = _ratio(jnp.ones_like(r0), r0 - r1, use)  # 1/(r0 - r1)
                    on_10 = (c1 * r0 - 2 * c2) * gap
                    on_11 = (2 * c2 - c1 * r1) * gap
                    extra[0], extra[1], extra[2] = on_11 / r0, on_10 / r1, -on_10 / r1 - on_11 / r0
            outputs = data if plus else noise
            for j in range(o):
                outputs[j] = outputs[j] + jnp.where(use, extra[j], 0.0)
            data[p - 1] = data[p - 1] + jnp.where(use, new.alpha, 0.0)
            noise[p - 1] = noise[p - 1] + jnp.where(use, first_noise, 0.0)
            fresh = fresh + jnp.where(use, q, 0.0)
            noise_res = noise_res + jnp.where(use, nr, 0.0)
        cmb = Combination(
            base=0,
            scale=jnp.zeros_like(new.alpha),
            data=tuple(data),
            noise=tuple(noise),
            level=new,
            fresh=fresh,
            noise_residual=noise_res,
        )
        return ((None, cmb),), state


register("dpmpp-2s", "DPM-Solver++(2S) singlestep (diffusers' DPMSolverSinglestepScheduler default)",
         DPMSolverSinglestep, aliases=("dpm++2s",), defaults={"solver_order": 2, "algorithm": "dpmsolver++"})
register("dpmpp-3s", "DPM-Solver++(3S) singlestep", DPMSolverSinglestep,
         defaults={"solver_order": 3, "algorithm": "dpmsolver++"})
register("dpm-2s", "DPM-Solver-2S singlestep (noise prediction)", DPMSolverSinglestep,
         defaults={"solver_order": 2, "algorithm": "dpmsolver"})
register("dpmpp-2s-sde", "SDE-DPM-Solver++(2S) singlestep", DPMSolverSinglestep,
         defaults={"solver_order": 2, "algorithm": "sde-dpmsolver++"})
