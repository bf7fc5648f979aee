r"""KDPM2 (k-diffusion's `sample_dpm_2` / `sample_dpm_2_ancestral`; diffusers' `KDPM2DiscreteScheduler` and
`KDPM2AncestralDiscreteScheduler`): the midpoint method in $\log\bar\sigma$, optionally ancestral.

One step from $\bar\sigma$ to $\bar\sigma'$ (VE levels; $\bar x = x/\alpha$, $d = \hat\varepsilon$):

1. split the target: $\sigma_{\rm up}^2 = \eta^2\bar\sigma'^2(\bar\sigma^2 - \bar\sigma'^2)/\bar\sigma^2$ (capped at $\bar\sigma'^2$),
   $\sigma_{\rm down} = \sqrt{\bar\sigma'^2 - \sigma_{\rm up}^2}$ ($\eta = 0$: $\sigma_{\rm down} = \bar\sigma'$, no noise);
2. an Euler step to the midpoint $\sigma_{\rm mid} = \sqrt{\bar\sigma\,\sigma_{\rm down}}$ (geometric mean, i.e. the mean
   of the log-SNRs; not a grid level): $\bar x_{\rm mid} = \bar x + (\sigma_{\rm mid} - \bar\sigma)\hat\varepsilon(x)$;
3. the full step with the midpoint's slope: $\bar x' = \bar x + (\sigma_{\rm down} - \bar\sigma)\hat\varepsilon(x_{\rm mid}) +
   s_{\rm noise}\sigma_{\rm up}\xi$;

and where $\bar\sigma' = 0$ an Euler step to the clean sample ($\bar x' = D(x)$, one evaluation). This is what
diffusers runs: its `set_timesteps` interleaves the interpolated levels with the grid (timesteps
$t_0, \tilde t_1, t_1, \dots, \tilde t_{N-1}, t_{N-1}$: $2N - 1$ evaluations, the last step the Euler jump),
and `step` alternates the two stages. On the grid of diffusers' sigmas (plus the clean point) this sampler is
that scheduler, its midpoints included.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._multistep import AbstractMultistepSampler, Combination
from ._registry import register
from ._stages import (
    ancestral_split,
    euler_stage,
    finite_sigma_state,
    level_from_ve_sigma_squared,
    sigma_step,
    slot_weights,
)


def _two_stage_evaluations(schedule, ts) -> int:
    """2 evaluations per step, 1 for a last step that lands on sigma = 0 (an Euler step)."""
    n = int(np.shape(ts)[0]) - 1
    return 2 * n - (1 if n >= 1 and float(schedule.sigma(ts[-1])) == 0.0 else 0)


def _two_stage_steps_for_nfe(nfe: int, ends_clean: bool) -> int:
    return (int(nfe) + 1) // 2 if ends_clean else int(nfe) // 2


@register("kdpm2", "KDPM2: midpoint in log sigma (k-diffusion sample_dpm_2, diffusers KDPM2DiscreteScheduler)",
          aliases=("dpm2", "dpm-2"))
class KDPM2(AbstractMultistepSampler):
    r"""KDPM2, deterministic (`eta = 0`) or ancestral (`eta > 0`; diffusers' ancestral scheduler is `eta = 1`).

    **Arguments:**

    - `eta`: share of the step redrawn as fresh noise (k-diffusion's `eta`; 0 = `KDPM2DiscreteScheduler`,
      1 = `KDPM2AncestralDiscreteScheduler`).
    - `s_noise`: scale of that noise (k-diffusion's `s_noise`; 1 in diffusers).

    **Facts:** 2 evaluations per step (1 on a last step to $\sigma = 0$: $2N - 1$ on a clean-ending grid), order
    2, also ancestral: the noise $\sigma_{\rm up}$ takes the exact law at $\sigma_{\rm down}$ to the exact law at
    $\bar\sigma'$, so only the midpoint ODE step errs (with `s_noise != 1` the law does not converge: order 0);
    2 slots (the point and the midpoint, which is not a grid level). Needs a finite $\bar\sigma$ at every grid
    point but the last ($\bar\alpha(t_0) > 0$). float32 agrees with float64 to 1e-4 for every $N$ up to $10^4$
    (`eta = 0`) and for $N \ge 3$ (ancestral; $10^{-3}$ at $N = 2$): a single ancestral step across the whole range
    ($N = 1$ from $\bar\sigma = 150$) puts its midpoint far below $\bar\sigma'$, and its output is then a difference
    of terms $\bar\sigma_{\max}$ times larger than itself. **Init:** diffusers starts from `init_noise_sigma` $\cdot z$ in $\bar x$:
    `init = 1 - abar(t_0)` for `timestep_spacing` "linspace"/"trailing" ($\bar\sigma_{\max}z$), `init = "standard"`
    for "leading" ($\sqrt{\bar\sigma_{\max}^2 + 1}\,z$).
    """

    eta: float = 0.0
    s_noise: float = 1.0

    evaluations_per_step = 2
    stochastic = True
    num_slots = 2

    def __check_init__(self):
        if not float(self.eta) >= 0.0:
            raise ValueError(f"KDPM2: eta must be >= 0 (0 = deterministic, 1 = ancestral); got {self.eta!r}.")
        if not float(self.s_noise) >= 0.0:
            raise ValueError(f"KDPM2: s_noise must be >= 0; got {self.s_noise!r}.")

    @property
    def is_deterministic(self) -> bool:
        return float(self.eta) == 0.0

    @property
    def order(self) -> int:  # type: ignore[override]
        return 2 if self.is_deterministic or float(self.s_noise) == 1.0 else 0

    @property
    def grid_slots(self) -> tuple[bool, ...]:
        return (True, False)  # slot 1 holds the midpoint

    def init(self, schedule, t0):
        return finite_sigma_state(schedule, t0, "KDPM2")

    def num_evaluations(self, schedule, ts) -> int:
        return _two_stage_evaluations(schedule, ts)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        return _two_stage_steps_for_nfe(nfe, ends_clean)

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        full = sigma_step(schedule, cur, new, on_grid=True)
        u, keep = ancestral_split(full, self.eta)  # sigma_up^2 = u sigma'^2, sigma_down = sigma' keep
        # Midpoint between sigma and sigma_down in log sigma: sigma_mid^2 = sigma sigma' keep.
        mid = level_from_ve_sigma_squared(cur.ve_sigma * new.ve_sigma * keep)
        to_mid = euler_stage(schedule, cur, mid, base=0, num_slots=2, on_grid=False)
        clean = new.one_minus_alpha_bar == 0
        # 1 - sigma_down/sigma, written as (1 - e^{-h}) + e^{-h}(1 - keep), 1 - keep = u/(1 + keep): no cancellation.
        shortfall = full.one_minus_ratio + full.ratio * u / (1 + keep)
        if self.is_deterministic:
            data, noise, scale = self._data_form(schedule, cur, mid, new, shortfall, keep, clean)
        else:
            # xbar' = xbar + (sigma_down - sigma) eps_mid:  x' = (alpha'/alpha) x - (alpha'/alpha) sigma shortfall eps_mid.
            scale = jnp.sqrt(new.alpha_bar / cur.alpha_bar)
            data = slot_weights(2, {0: jnp.where(clean, new.alpha, 0.0)})  # Euler onto sigma = 0: x' = D(x)
            noise = slot_weights(2, {1: jnp.where(clean, 0.0, -scale * cur.sigma * shortfall)})
            scale = jnp.where(clean, 0.0, scale)
        final = Combination(
            base=0,
            scale=scale,
            data=data,
            noise=noise,
            level=new,
            fresh=new.one_minus_alpha_bar * u * jnp.asarray(self.s_noise) ** 2,
            noise_residual=-new.sigma * u / (1 + keep),  # alpha'(sigma_down - sigma')
        )
        return ((1, to_mid), (0, final)), state

    @staticmethod
    def _data_form(schedule, cur, mid, new, shortfall, keep, clean):
        r"""The second stage with $\bar x = \bar x_{\rm mid} - (\sigma_{\rm mid} - \bar\sigma)\hat\varepsilon(x)$ substituted:
        $\bar x' = \frac{\sigma_{\rm down}}{\bar\sigma}\bar x + (\bar\sigma - \sigma_{\rm down})\big[\frac{D_{\rm mid}}{\sigma_{\rm mid}}
        - D(x)\big(\frac1{\sigma_{\rm mid}} - \frac1{\bar\sigma}\big)\big]$. The same map as the $\hat\varepsilon_{\rm mid}$ form, with
        normalized weights $O(1)$ instead of $O(\bar\sigma/\bar\sigma')$ on modes far below the noise: float32 keeps one
        step across the whole range ($N = 1$). (For the ancestral variant the midpoint sits far below $\bar\sigma'$
        and the $\hat\varepsilon$ form rounds better.)"""
        half = sigma_step(schedule, cur, mid, on_grid=False)  # e^{h1} = sigma / sigma_mid
        data = slot_weights(2, {
            0: jnp.where(clean, new.alpha, -new.alpha * shortfall * jnp.expm1(half.h)),  # Euler onto 0: x' = D(x)
            1: jnp.where(clean, 0.0, new.alpha * shortfall * jnp.exp(half.h)),
        })
        scale = new.sigma / cur.sigma * keep  # (alpha'/alpha)(sigma_down/sigma); 0 on sigma' = 0
        return data, slot_weights(2, {}), scale


register("kdpm2-ancestral", "KDPM2 ancestral (k-diffusion sample_dpm_2_ancestral, diffusers KDPM2Ancestral...)",
         KDPM2, aliases=("dpm2-ancestral", "dpm2a", "kdpm2a"), defaults={"eta": 1.0})
