r"""DPM-Solver and DPM-Solver++ multistep (Lu et al. 2022), ODE and SDE variants, as diffusers runs them.

With $\lambda = \log(\alpha/\sigma)$ and $h = \lambda_{k+1} - \lambda_k$, the first-order step is DDIM:
$x' = \frac{\sigma'}{\sigma}x + \alpha'(1 - e^{-h})D_k$ (data prediction, "++"), or
$x' = \frac{\alpha'}{\alpha}x - \sigma'(e^h - 1)\hat\varepsilon_k$ (noise prediction). Order $p$ adds divided
differences of the last $p$ model outputs with $r_j = h_{k-j}/h$: $D_1 = (m_0 - m_1)/r_0$ ("midpoint" weight
$\frac12\alpha'(1 - e^{-h})$, "heun" weight $\alpha'h\varphi_2(-h)$), and for order 3
$D_1 = D_{1,0} + \frac{r_0}{r_0 + r_1}(D_{1,0} - D_{1,1})$, $D_2 = \frac{D_{1,0} - D_{1,1}}{r_0 + r_1}$ with weights
$\alpha'h\varphi_2(-h)$ and $\alpha'h\varphi_3(-h)$. The SDE variants contract by $e^{-h}$ more and add noise
$\sigma'^2(1 - e^{-2h})$ (SDE-DPM-Solver++), or use twice the noise weight and noise $\sigma'^2(e^{2h} - 1)$.

Warm-up and the end follow diffusers' `DPMSolverMultistepScheduler`: step $k$ uses order $\min(p, k + 1)$; the
last step is first order when `euler_at_final`, when `lower_order_final` and fewer than 15 steps, or when it
lands on $\sigma = 0$; the second-to-last is at most second order when `lower_order_final` and fewer than 15
steps. All coefficients are written with `expm1` / `phi` of an accurate $h$ (float32 keeps them).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from ._multistep import AbstractLinearMultistepSampler, Combination, half_log_snr_step, phi
from ._registry import register

Algorithm = Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


def _divided_difference_weights(order, r0, r1, c1, c2):
    """Weights on (m0, m1, m2) of c1 D1 + c2 D2 (order 3) or c1 D1 (order 2), D1/D2 from the divided differences."""
    if order == 2:
        return c1 / r0, -c1 / r0, 0.0
    q = 1 / (r0 + r1)
    a0 = c1 * (1 + r0 * q) + c2 * q  # on D1_0 = (m0 - m1)/r0
    a1 = -c1 * r0 * q - c2 * q  # on D1_1 = (m1 - m2)/r1
    return a0 / r0, -a0 / r0 + a1 / r1, -a1 / r1


class DPMSolverMultistep(AbstractLinearMultistepSampler):
    r"""DPM-Solver(++) multistep of order 1–3 (`DPMSolverMultistepScheduler`; `dpmpp-2m` is Stable Diffusion's default).

    **Arguments:**

    - `solver_order`: 1, 2 or 3 (diffusers' `solver_order`; the run's convergence order is `order` =
      min(solver_order, 2), because the warm-up steps are of lower order).
    - `algorithm`: `"dpmsolver++"` (data prediction), `"sde-dpmsolver++"`, `"dpmsolver"` (noise prediction) or
      `"sde-dpmsolver"` (diffusers' `algorithm_type`).
    - `solver_type`: `"midpoint"` or `"heun"` (the second-order weight).
    - `lower_order_final`, `euler_at_final`: as in diffusers (see the module docstring).
    """

    solver_order: int = 2
    algorithm: Algorithm = "dpmsolver++"
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False

    def __init__(self, solver_order: int = 2, algorithm: Algorithm = "dpmsolver++", solver_type="midpoint",
                 lower_order_final: bool = True, euler_at_final: bool = False):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"DPMSolverMultistep: solver_order must be 1, 2 or 3; got {solver_order!r}.")
        if algorithm not in ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"):
            raise ValueError(f"DPMSolverMultistep: unknown algorithm {algorithm!r}.")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"DPMSolverMultistep: solver_type must be 'midpoint' or 'heun'; got {solver_type!r}.")
        if solver_order == 3 and algorithm == "sde-dpmsolver":
            raise ValueError("DPMSolverMultistep: order 3 is not defined for 'sde-dpmsolver' (diffusers has none).")
        self.solver_order, self.algorithm, self.solver_type = int(solver_order), algorithm, solver_type
        self.lower_order_final, self.euler_at_final = bool(lower_order_final), bool(euler_at_final)

    @property
    def is_deterministic(self) -> bool:
        return not self.algorithm.startswith("sde")

    def _effective_order(self, info, lands_clean):
        k, n = info.index, info.num_steps
        order = jnp.minimum(self.solver_order, k + 1)
        short = self.lower_order_final & (n < 15)
        final = (k == n - 1) & (self.euler_at_final | short | lands_clean)
        second = (k == n - 2) & short
        order = jnp.where(second, jnp.minimum(order, 2), order)
        return jnp.where(final, 1, order)

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        h = half_log_snr_step(schedule, cur, new)
        lands_clean = new.one_minus_alpha_bar == 0
        order = self._effective_order(info, lands_clean)
        # Ratios of previous step sizes (only used when the order allows; guarded against 0/0 at warm-up).
        h_safe = jnp.where(jnp.isfinite(h) & (h > 0), h, 1.0)
        r0 = half_log_snr_step(schedule, slots[1], cur) / h_safe if self.solver_order >= 2 else 1.0
        r1 = half_log_snr_step(schedule, slots[2], slots[1]) / h_safe if self.solver_order >= 3 else 1.0
        r0 = jnp.where(order >= 2, r0, 1.0)
        r1 = jnp.where(order >= 3, r1, 1.0)
        sde, plus = self.algorithm.startswith("sde"), self.algorithm.endswith("++")
        noise_res, fresh = 0.0, 0.0
        if plus:
            # Data prediction: x' = a x + w0 D0 + c1 D1 + c2 D2 (+ noise); a = sigma'/sigma (* e^{-h} for SDE).
            hh = 2 * h_safe if sde else h_safe
            one_minus = -jnp.expm1(-2 * h) if sde else -jnp.expm1(-h)  # 1 - e^{-h} (or e^{-2h})
            scale = new.sigma / cur.sigma * (jnp.exp(-h) if sde else 1.0)
            w0 = new.alpha * one_minus
            c1_third = new.alpha * hh * phi(2, -hh)  # the third-order formula has no midpoint variant
            c1 = 0.5 * w0 if self.solver_type == "midpoint" else c1_third
            c2 = new.alpha * hh * phi(3, -hh)
            if sde:
                fresh = new.sigma**2 * one_minus
                noise_res = new.sigma * jnp.expm1(-h)  # sum of noise weights minus sigma'
        else:
            # Noise prediction: x' = (alpha'/alpha) x - k sigma' (e^h - 1) eps0 - ... (k = 2 for the SDE variant).
            k = 2.0 if sde else 1.0
            scale = new.alpha / cur.alpha
            em1 = jnp.where(new.sigma > 0, jnp.expm1(h_safe), 0.0)
            w0 = -k * new.sigma * em1
            c1_third = -k * new.sigma * h_safe * phi(2, h_safe)
            c1 = -0.5 * k * new.sigma * em1 if self.solver_type == "midpoint" else c1_third
            c2 = -new.sigma * h_safe * phi(3, h_safe)
            if sde:
                fresh = new.sigma**2 * jnp.expm1(2 * h_safe)
                noise_res = -new.sigma * em1
        weights = [w0, 0.0, 0.0][: self.solver_order]
        if self.solver_order >= 2:
            second = _divided_difference_weights(2, r0, r1, c1, c2)
            third = _divided_difference_weights(3, r0, r1, c1_third, c2) if self.solver_order >= 3 else second
            for j in range(self.solver_order):
                extra = jnp.where(order >= 3, third[j], jnp.where(order == 2, second[j], 0.0))
                weights[j] = weights[j] + extra
        zeros = tuple(0.0 for _ in range(self.solver_order))
        cmb = Combination(
            base=0,
            scale=scale,
            data=tuple(weights) if plus else zeros,
            noise=zeros if plus else tuple(weights),
            level=new,
            fresh=fresh,
            noise_residual=noise_res,
        )
        return ((None, cmb),), state


register("dpmpp-2m", "DPM-Solver++(2M), multistep, data prediction (Stable Diffusion's default)",
         DPMSolverMultistep, aliases=("dpm++2m", "dpmpp2m", "dpmsolver++"), defaults={"solver_order": 2})
register("dpmpp-3m", "DPM-Solver++(3M), third-order multistep", DPMSolverMultistep, defaults={"solver_order": 3})
register("dpmpp-2m-sde", "SDE-DPM-Solver++(2M), stochastic multistep", DPMSolverMultistep,
         aliases=("dpm++2m-sde",), defaults={"solver_order": 2, "algorithm": "sde-dpmsolver++"})
register("dpmpp-3m-sde", "SDE-DPM-Solver++(3M)", DPMSolverMultistep,
         defaults={"solver_order": 3, "algorithm": "sde-dpmsolver++"})
register("dpm-2m", "DPM-Solver(2M), multistep, noise prediction", DPMSolverMultistep,
         defaults={"solver_order": 2, "algorithm": "dpmsolver"})
