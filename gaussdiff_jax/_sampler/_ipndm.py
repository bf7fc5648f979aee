r"""iPNDM (Zhang & Chen 2023's improved PNDM; diffusers' `IPNDMScheduler`, k-diffusion/ComfyUI `sample_ipndm`).

PLMS without its Runge–Kutta or Heun warm-up: step $k$ is DDIM's transfer (Euler in $\bar\sigma$ on $\bar x = x/\alpha$)
with the constant-step Adams–Bashforth combination of the last $\min(k + 1, 4)$ noise predictions,
$x' = \alpha'\,(x - \sigma e)/\alpha + \sigma' e$ (diffusers' `_get_prev_sample`), one evaluation per step.

diffusers' `IPNDMScheduler` brings its own levels: with $s_k = 1 - k/N$ its "betas" are the VP noise scales
$\sigma_k = \sin^2(\pi s_k/2)$ and $\alpha_k = \sqrt{1 - \sigma_k^2}$, and the model (a v-prediction network, whose
`ets` $= \sigma x + \alpha v$ is the noise prediction) is called at $t_k = \frac2\pi\operatorname{atan2}(\sigma_k, \alpha_k)$.
That is `Cosine(s=0)` with `ts` = those $t_k$ and a final 0. Its first level has $\alpha_0 = 0$, where diffusers
divides by $\max(\alpha, 10^{-8})$: the denoised estimate $(x - \sigma e)/\alpha$ is replaced by 0 on the first step,
so the data mean is dropped there (`alpha_floor=1e-8`, the default, reproduces it; `alpha_floor=0` keeps DDIM's
limit $\alpha'D(x)$, the exact transfer).
"""

from __future__ import annotations

import jax.numpy as jnp

from ._multistep import AbstractMultistepSampler
from ._pndm import _transfer, ab_weights
from ._registry import register


class IPNDM(AbstractMultistepSampler):
    r"""iPNDM: pseudo linear multistep (Adams–Bashforth 1, 2, 3, then 4) on DDIM's transfer (`IPNDMScheduler`).

    **Arguments:**

    - `alpha_floor`: the first step's denoised estimate is scaled by $\alpha_0/\max(\alpha_0, f)$ (diffusers:
      $f = 10^{-8}$, which only matters at $\bar\alpha(t_0) = 0$; 0 gives the exact transfer).

    **Facts:** one evaluation per step; deterministic; `num_slots` = 4; convergence order 2 (the Euler first step
    and the constant-step weights on a general grid).
    """

    alpha_floor: float = 1e-8
    num_slots = 4

    def __init__(self, alpha_floor: float = 1e-8):
        if not float(alpha_floor) >= 0.0:
            raise ValueError(f"IPNDM: alpha_floor must be >= 0; got {alpha_floor!r}.")
        self.alpha_floor = float(alpha_floor)

    @property
    def order(self) -> int:  # type: ignore[override]
        return 2

    def step(self, schedule, slots, next_level, state, info):
        k = info.index
        weights = ab_weights(jnp.minimum(k + 1, 4), 4)
        cmb = _transfer(schedule, slots[0], next_level, weights, 4, first=k == 0, floor=self.alpha_floor)
        return ((None, cmb),), state


register("ipndm", "iPNDM: Adams-Bashforth 1-4 on DDIM's transfer (diffusers IPNDMScheduler)", IPNDM)
