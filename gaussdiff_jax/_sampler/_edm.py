r"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2; k-diffusion `sample_heun` / `sample_euler` with
`s_churn`) and diffusers' Euler schedulers with churn (`EDMEulerScheduler`, `EulerDiscreteScheduler`).

One step from $\bar\sigma_i$ to $\bar\sigma_{i+1}$ (VE levels, $\bar x = x/\alpha$):

1. **churn**: $\gamma_i = \min(S_{\rm churn}/N, \sqrt2 - 1)$ if $S_{\rm tmin} \le \bar\sigma_i \le S_{\rm tmax}$ else 0
   ($N$ = number of steps), $\hat\sigma = (1 + \gamma_i)\bar\sigma_i$, $\hat x = \bar x + S_{\rm noise}\sqrt{\hat\sigma^2 - \bar\sigma_i^2}\,\xi$
   ($\hat\sigma$ is not a grid level);
2. **Heun** in $\bar\sigma$ from $(\hat x, \hat\sigma)$ to $\bar\sigma_{i+1}$: $d = \hat\varepsilon(\hat x)$,
   $\bar x_p = \hat x + (\bar\sigma_{i+1} - \hat\sigma)d$, $\bar x' = \hat x + (\bar\sigma_{i+1} - \hat\sigma)(d + \hat\varepsilon(\bar x_p))/2$;
   an Euler step ($\bar x' = \bar x_p$) where $\bar\sigma_{i+1} = 0$, or every step with `solver="euler"`.

**diffusers' Euler schedulers differ** (`churn_input="pre_churn"`): the pipeline evaluates the model on the
point *before* the churn (at $\bar\sigma_i$), and `step` then adds the churn noise and builds its $x_0$ prediction
from that output as if it had been computed at $\hat\sigma$: with EDM's preconditioning
($c_{\rm skip}(s) = \sigma_d^2/(s^2 + \sigma_d^2)$, $c_{\rm out}(s) \propto s/\sqrt{s^2 + \sigma_d^2}$; the network output is
$F = (D(x) - c_{\rm skip}(\bar\sigma_i)\bar x)/c_{\rm out}(\bar\sigma_i)$ for the exact denoiser) the prediction is
$c_{\rm skip}(\hat\sigma)\hat x + c_{\rm out}(\hat\sigma)F$; for $\varepsilon$-prediction (`sigma_data=None`,
`EulerDiscreteScheduler`) it is $\hat x - \hat\sigma\hat\varepsilon(x)$. That is not EDM's algorithm (the model never
sees the churned point; with EDM preconditioning the mean is not even transported exactly), but it is what those
schedulers compute; `churn_input="churned"` is the correct method.
"""

from __future__ import annotations

import math
from typing import Literal

import jax.numpy as jnp

from ._kdpm2 import _two_stage_evaluations, _two_stage_steps_for_nfe
from ._multistep import AbstractMultistepSampler, Combination
from ._registry import register
from ._stages import (
    euler_stage,
    finite_sigma_state,
    level_from_ve_sigma_squared,
    select_level,
    sigma_step,
    slot_weights,
)


@register("edm-stochastic", "EDM's stochastic sampler: churn + Heun in sigma (Karras et al. Algorithm 2)",
          aliases=("edm-sde", "edm-churn"))
class EDMStochastic(AbstractMultistepSampler):
    r"""EDM's stochastic sampler, and diffusers' Euler schedulers with churn (module docstring).

    **Arguments** (the names of k-diffusion and of diffusers' `step`):

    - `s_churn`, `s_tmin`, `s_tmax`, `s_noise`: Karras et al.'s $S_{\rm churn}$, $S_{\rm tmin}$, $S_{\rm tmax}$,
      $S_{\rm noise}$ ($S_{\rm tmin}$, $S_{\rm tmax}$ compare with the VE noise level $\bar\sigma_i$).
    - `solver`: `"heun"` (Algorithm 2, `sample_heun`) or `"euler"` (`sample_euler`, diffusers' Euler schedulers).
    - `churn_input`: `"churned"` (the model sees the churned point: EDM, k-diffusion) or `"pre_churn"` (diffusers'
      `EDMEulerScheduler` / `EulerDiscreteScheduler`; needs `solver="euler"`).
    - `sigma_data`: the preconditioning constant that `"pre_churn"` depends on (`EDMEulerScheduler`: its
      `sigma_data`, 0.5 by default; `None` = $\varepsilon$-prediction, `EulerDiscreteScheduler`).

    **Facts:** Heun: 2 evaluations per step, 1 on a last step to $\sigma = 0$; Euler: 1. Order 2 (Heun) or 1
    (Euler), with churn too: the churn noise takes the exact law at $\bar\sigma_i$ to the exact law at $\hat\sigma$,
    so only the ODE step errs ($\gamma = S_{\rm churn}/N$ shrinks with the steps); `"pre_churn"` converges with
    order 1; with churn and `s_noise != 1` the law does not converge (order 0). Slots: the point, the churned
    point (not a grid level) and, for Heun, the predictor. Needs $\bar\alpha(t_0) > 0$. **Init:** EDM and k-diffusion start from
    $\bar\sigma_{\max}z$ (`init = 1 - abar(t_0)`); `EDMEulerScheduler` from $\sqrt{\bar\sigma_{\max}^2 + 1}\,z$
    (`init = "standard"`).
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    solver: Literal["heun", "euler"] = "heun"
    churn_input: Literal["churned", "pre_churn"] = "churned"
    sigma_data: float | None = None

    stochastic = True

    def __check_init__(self):
        if self.solver not in ("heun", "euler"):
            raise ValueError(f"EDMStochastic: solver must be 'heun' or 'euler'; got {self.solver!r}.")
        if self.churn_input not in ("churned", "pre_churn"):
            raise ValueError(f"EDMStochastic: churn_input must be 'churned' or 'pre_churn'; got {self.churn_input!r}.")
        if self.churn_input == "pre_churn" and self.solver != "euler":
            raise ValueError("EDMStochastic: churn_input='pre_churn' (diffusers' Euler schedulers) needs solver='euler'.")
        if not (float(self.s_churn) >= 0 and float(self.s_noise) >= 0 and float(self.s_tmin) <= float(self.s_tmax)):
            raise ValueError("EDMStochastic: need s_churn >= 0, s_noise >= 0 and s_tmin <= s_tmax.")
        if self.sigma_data is not None and not float(self.sigma_data) > 0:
            raise ValueError(f"EDMStochastic: sigma_data must be > 0 or None; got {self.sigma_data!r}.")

    @property
    def is_deterministic(self) -> bool:
        return float(self.s_churn) == 0.0

    @property
    def order(self) -> int:  # type: ignore[override]
        if not self.is_deterministic and float(self.s_noise) != 1.0:
            return 0
        return 2 if self.solver == "heun" else 1

    @property
    def evaluations_per_step(self) -> int:  # type: ignore[override]
        return 2 if self.solver == "heun" else 1

    @property
    def num_slots(self) -> int:  # type: ignore[override]
        return 3 if self.solver == "heun" else 2

    @property
    def grid_slots(self) -> tuple[bool, ...]:
        return (True, False, True)[: self.num_slots]  # slot 1: the churned point

    def init(self, schedule, t0):
        return finite_sigma_state(schedule, t0, "EDMStochastic")

    def num_evaluations(self, schedule, ts) -> int:
        if self.solver == "heun":
            return _two_stage_evaluations(schedule, ts)
        return super().num_evaluations(schedule, ts)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        if self.solver == "heun":
            return _two_stage_steps_for_nfe(nfe, ends_clean)
        return int(nfe)

    def _churn(self, cur, info):
        """The churn write: level sigma_hat = (1 + gamma) sigma (the grid level itself where gamma = 0)."""
        sigma = cur.ve_sigma
        n = info.num_steps.astype(cur.alpha_bar.dtype)
        inside = (self.s_tmin <= sigma) & (sigma <= self.s_tmax)
        gamma = jnp.where(inside, jnp.minimum(self.s_churn / n, math.sqrt(2) - 1), 0.0)
        hat = select_level(gamma > 0, level_from_ve_sigma_squared((sigma * (1 + gamma)) ** 2), cur)
        scale = jnp.sqrt(hat.alpha_bar / cur.alpha_bar)
        cmb = Combination(
            base=0,
            scale=scale,
            data=slot_weights(self.num_slots, {}),
            noise=slot_weights(self.num_slots, {}),
            level=hat,
            fresh=hat.alpha_bar * (self.s_noise * sigma) ** 2 * gamma * (2 + gamma),  # alpha_hat^2 (sh^2 - s^2)
            noise_residual=-hat.alpha * sigma * gamma,  # alpha_hat (sigma - sigma_hat)
        )
        return cmb, hat

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        churn, hat = self._churn(cur, info)
        st = sigma_step(schedule, hat, new, on_grid=False)
        scale = jnp.sqrt(new.alpha_bar / hat.alpha_bar)  # alpha'/alpha_hat
        full = -scale * hat.sigma * st.one_minus_ratio  # alpha'(sigma' - sigma_hat), the Euler slope weight
        clean = new.one_minus_alpha_bar == 0
        if self.churn_input == "pre_churn":
            final = self._pre_churn_euler(cur, hat, new, st, scale)
            return ((1, churn), (0, final)), state
        if self.solver == "euler":
            final = Combination(1, scale, slot_weights(2, {}), slot_weights(2, {1: full}), new)
            return ((1, churn), (0, final)), state
        predictor = euler_stage(schedule, hat, new, base=1, num_slots=3, on_grid=False)
        half = 0.5 * full
        final = Combination(
            base=1,
            scale=scale,
            data=slot_weights(3, {}),
            noise=slot_weights(3, {1: jnp.where(clean, full, half), 2: jnp.where(clean, 0.0, half)}),
            level=new,
        )
        return ((1, churn), (2, predictor), (0, final)), state

    def _pre_churn_euler(self, cur, hat, new, st, scale):
        """diffusers: x' = (sigma'/sigma_hat) x_hat + (1 - sigma'/sigma_hat) pred, pred from the output at x (slot 0)."""
        sigma, sigma_hat = cur.ve_sigma, hat.ve_sigma
        if self.sigma_data is None:  # epsilon prediction: pred = x_hat - sigma_hat eps(x)
            k, k_hat, rho = 1.0, 1.0, sigma_hat / sigma
        else:
            sd2 = float(self.sigma_data) ** 2
            k, k_hat = sd2 / (sigma**2 + sd2), sd2 / (sigma_hat**2 + sd2)  # c_skip
            rho = sigma_hat / sigma * jnp.sqrt((sigma**2 + sd2) / (sigma_hat**2 + sd2))  # c_out(hat)/c_out
        a_new = new.alpha
        step_share = a_new * st.one_minus_ratio  # alpha' (1 - sigma'/sigma_hat)
        return Combination(
            base=1,
            scale=scale * (st.ratio + st.one_minus_ratio * k_hat),
            data=slot_weights(2, {0: step_share * rho * (1 - k)}),
            noise=slot_weights(2, {0: -step_share * rho * k * sigma}),
            level=new,
            data_residual=step_share * (rho * (1 - k) - (1 - k_hat)),
            noise_residual=step_share * (sigma_hat * k_hat - rho * k * sigma),
        )


register("edm-stochastic-euler", "EDM's churn with Euler steps (k-diffusion sample_euler with s_churn)",
         EDMStochastic, defaults={"solver": "euler", "churn_input": "churned"})
register("edm-euler-diffusers", "diffusers' EDMEulerScheduler with s_churn (model evaluated before the churn)",
         EDMStochastic, defaults={"solver": "euler", "churn_input": "pre_churn", "sigma_data": 0.5})
register("euler-diffusers-churn", "diffusers' EulerDiscreteScheduler with s_churn (epsilon prediction, model before churn)",
         EDMStochastic, defaults={"solver": "euler", "churn_input": "pre_churn", "sigma_data": None})
