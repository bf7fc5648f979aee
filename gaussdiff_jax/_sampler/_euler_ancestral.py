r"""Euler ancestral (k-diffusion `sample_euler_ancestral`; diffusers' `EulerAncestralDiscreteScheduler`).

One step from $\bar\sigma$ to $\bar\sigma'$ (VE levels, $\bar x = x/\alpha$): $\sigma_{\rm up}^2 = \min(\bar\sigma'^2,
\eta^2\bar\sigma'^2(\bar\sigma^2 - \bar\sigma'^2)/\bar\sigma^2)$, $\sigma_{\rm down} = \sqrt{\bar\sigma'^2 - \sigma_{\rm up}^2}$,
$\bar x' = \bar x + (\sigma_{\rm down} - \bar\sigma)\hat\varepsilon(x) + s_{\rm noise}\sigma_{\rm up}\xi$. In VP coordinates
$x' = \frac{\sigma'}{\sigma}\sqrt{1-u}\,x + \alpha'\big(1 - \tfrac{\sigma_{\rm down}}{\bar\sigma}\big)D(x) + s_{\rm noise}\sigma'\sqrt u\,\xi$ with
$u = \sigma_{\rm up}^2/\bar\sigma'^2$: for $\eta \le 1$ and $s_{\rm noise} = 1$ this is exactly DDIM($\eta$) (the same
$x_0$ prediction, the same share $u$ of $1 - \bar\alpha'$ redrawn; `tests/test_samplers_singlestep.py` checks it).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._multistep import AbstractMultistepSampler, Combination
from ._registry import register
from ._stages import ancestral_split, sigma_step


@register("euler-ancestral", "Euler ancestral (k-diffusion sample_euler_ancestral, diffusers EulerAncestral...)",
          aliases=("euler-a", "euler_a", "eulerancestral"))
class EulerAncestral(AbstractMultistepSampler):
    r"""Euler ancestral in $\bar\sigma$ (module docstring); `eta = 1`, `s_noise = 1` is diffusers' scheduler.

    **Arguments:** `eta` (k-diffusion's; > 1 caps $\sigma_{\rm up}$ at $\bar\sigma'$), `s_noise` (scale of the fresh noise).

    **Facts:** 1 evaluation per step, order 1 (0 with `s_noise != 1`: the law does not converge), 1 slot.
    Accepts $\bar\alpha(t_0) = 0$ (written in VP coordinates). **Init:** `init_noise_sigma` $\cdot z$ in $\bar x$:
    `init = 1 - abar(t_0)` for "linspace"/"trailing" spacings, `init = "standard"` for "leading".
    """

    eta: float = 1.0
    s_noise: float = 1.0

    stochastic = True
    num_slots = 1

    def __check_init__(self):
        if not (float(self.eta) >= 0.0 and float(self.s_noise) >= 0.0):
            raise ValueError(f"EulerAncestral: eta and s_noise must be >= 0; got {self.eta!r}, {self.s_noise!r}.")

    @property
    def is_deterministic(self) -> bool:
        return float(self.eta) == 0.0

    @property
    def order(self) -> int:  # type: ignore[override]
        return 1 if float(self.s_noise) == 1.0 or self.is_deterministic else 0

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        st = sigma_step(schedule, cur, new, on_grid=True)
        u, keep = ancestral_split(st, self.eta)
        shortfall = st.one_minus_ratio + st.ratio * u / (1 + keep)  # 1 - sigma_down / sigma
        cmb = Combination(
            base=0,
            scale=new.sigma / jnp.where(cur.sigma > 0, cur.sigma, 1.0) * keep,
            data=(new.alpha * shortfall,),
            noise=(0.0,),
            level=new,
            fresh=new.one_minus_alpha_bar * u * jnp.asarray(self.s_noise) ** 2,
            noise_residual=-new.sigma * u / (1 + keep),  # alpha'(sigma_down - sigma')
        )
        return ((None, cmb),), state
