r"""Steps that land off the grid: a sampler run to one level whose result is then used as if at another.

diffusers' `DDIMScheduler` and `PNDMScheduler` step from training index $i$ to $i - \lfloor T/N\rfloor$, whatever
the next timestep is. With `timestep_spacing="linspace"` (or `"trailing"` when $N \nmid T$) the next timestep is
a different index, and the pipeline simply evaluates the model there on the sample it has: the sample is
*relabelled* from the landing level $b$ to the next grid level $a'$ without being changed.

`Relabeled(inner, landing)` reproduces that for any multistep sampler: each step runs `inner` from the current
level to `landing[k]`, then one more write keeps the point and moves its label to the next grid level. The relabel
is the combination $x_{\rm new} = x_{\rm base}$ whose total weights are $\alpha_b$ on $D$ and $\sigma_b$ on
$\hat\varepsilon$, so its residuals are $\alpha_b - \alpha_{a'}$ and $\sigma_b - \sigma_{a'}$ (exact, and 0 when the
step lands where it should). `DDIMStep` is DDIM($\eta$) written as a combination, to be wrapped.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._numerics import safe_sqrt
from ._multistep import AbstractMultistepSampler, Combination, Level, alpha_bar_difference
from ._registry import register


@register("ddim-step", "DDIM (eta) as a one-slot combination (for wrapping, e.g. Relabeled)")
class DDIMStep(AbstractMultistepSampler):
    r"""DDIM($\eta$) as a multistep combination: $x' = \alpha' D + \sqrt{\sigma'^2 - s^2}\,\hat\varepsilon + s\,\xi$.

    $s^2 = \eta^2\frac{\sigma'^2}{\sigma^2}\cdot\frac{\bar\alpha' - \bar\alpha}{\bar\alpha'}$ (VP units,
    $\sigma^2 = 1 - \bar\alpha$). The same law as `DDIM(eta)` on a grid; use it where a combination is needed
    (`Relabeled`). Noise residual $\sqrt{\sigma'^2 - s^2} - \sigma' = -s^2/(\sqrt{\sigma'^2 - s^2} + \sigma')$.
    """

    eta: float = 0.0

    num_slots = 1
    stochastic = True

    def __check_init__(self):
        if not (0.0 <= float(self.eta) <= 1.0):
            raise ValueError(f"DDIMStep: eta must lie in [0, 1]; got {self.eta}.")

    @property
    def is_deterministic(self) -> bool:
        return float(self.eta) == 0.0

    def step(self, schedule, slots, next_level, state, info):
        cur, new = slots[0], next_level
        d_ab = alpha_bar_difference(schedule, cur, new, on_grid=True)
        safe_new_ab = jnp.where(new.alpha_bar > 0, new.alpha_bar, 1.0)
        safe_cur = jnp.where(cur.one_minus_alpha_bar > 0, cur.one_minus_alpha_bar, 1.0)
        s2 = jnp.asarray(self.eta) ** 2 * new.one_minus_alpha_bar / safe_cur * d_ab / safe_new_ab
        keep = safe_sqrt(new.one_minus_alpha_bar - s2)
        den = keep + new.sigma
        residual = jnp.where(den > 0, -s2 / jnp.where(den > 0, den, 1.0), 0.0)
        cmb = Combination(
            base=0, scale=0.0, data=(new.alpha,), noise=(keep,), level=new, fresh=s2, noise_residual=residual
        )
        return ((None, cmb),), state


class _Wrapper(AbstractMultistepSampler):
    """A multistep sampler that changes how `inner` is stepped: its facts, slots and initial state are `inner`'s."""

    inner: eqx.AbstractVar[AbstractMultistepSampler]

    @property
    def num_slots(self) -> int:  # type: ignore[override]
        return self.inner.num_slots

    @property
    def grid_slots(self) -> tuple[bool, ...]:
        return self.inner.grid_slots

    @property
    def evaluations_per_step(self) -> int:  # type: ignore[override]
        return self.inner.evaluations_per_step

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.inner.order

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.inner.stochastic

    @property
    def is_deterministic(self) -> bool:
        return self.inner.is_deterministic

    def init(self, schedule, t0):
        return self.inner.init(schedule, t0)


class Relabeled(_Wrapper):
    r"""Run `inner` from each grid level to `landing[k]`, then use the result as the point at the next grid level.

    **Arguments:**

    - `inner`: a multistep sampler (e.g. `DDIMStep(eta)`, a PLMS sampler).
    - `landing`: forward times `(N,)` where step $k$ lands (on the same schedule); `landing[k] = ts[k + 1]` is an
      ordinary step. The last entry should equal the grid's last time, so that the output is where it says.

    Facts (`evaluations_per_step`, `order`, `stochastic`, slots) are the inner sampler's; the run's convergence
    order is meaningless when the landing levels do not approach the grid.
    """

    inner: AbstractMultistepSampler
    landing: Float[Array, " N"]

    def __init__(self, inner: AbstractMultistepSampler, landing: Float[ArrayLike, " N"]):
        if not isinstance(inner, AbstractMultistepSampler):
            raise ValueError(  # noqa: TRY004 (house rule: bad input is a ValueError)
                f"Relabeled needs a multistep sampler (e.g. DDIMStep instead of DDIM); got {type(inner).__name__}."
            )
        landing = jnp.asarray(landing, dtype=jnp.result_type(float))
        if landing.ndim != 1 or landing.shape[0] < 1:
            raise ValueError(f"Relabeled: landing must be a 1-D array of landing times; got shape {landing.shape}.")
        self.inner, self.landing = inner, landing

    def step(self, schedule, slots, next_level, state, info):
        land = Level.at(schedule, self.landing[jnp.minimum(info.index, self.landing.shape[0] - 1)])
        writes, state = self.inner.step(schedule, slots, land, state, info)
        zeros = (0.0,) * self.inner.num_slots
        relabel = Combination(
            base=0,
            scale=1.0,
            data=zeros,
            noise=zeros,
            level=next_level,
            data_residual=land.alpha - next_level.alpha,
            noise_residual=land.sigma - next_level.sigma,
        )
        return (*writes, (0, relabel)), state


class Truncated(_Wrapper):
    r"""The first $N$ steps of a run of $N + $ `dropped` steps of `inner`: `inner` is told the longer step count.

    For multistep samplers whose rules depend on the step count (DPM-Solver's lower-order final steps), when the
    last `dropped` steps of a pipeline are identities (diffusers' `final_sigmas_type="sigma_min"` after a grid that
    already ends at $\sigma_{\min}$) and are left out of the grid, which must be strictly decreasing.
    """

    inner: AbstractMultistepSampler
    dropped: int = 1

    def __check_init__(self):
        if not isinstance(self.inner, AbstractMultistepSampler):
            raise ValueError(f"Truncated needs a multistep sampler; got {type(self.inner).__name__}.")  # noqa: TRY004
        if int(self.dropped) != self.dropped or self.dropped < 0:
            raise ValueError(f"Truncated: dropped must be a non-negative integer; got {self.dropped!r}.")

    def step(self, schedule, slots, next_level, state, info):
        longer = info._replace(num_steps=info.num_steps + self.dropped)
        return self.inner.step(schedule, slots, next_level, state, longer)
