r"""PNDM / PLMS (Liu et al. 2022), pseudo numerical methods on DDIM's transfer, as diffusers' `PNDMScheduler` runs them.

Every update is DDIM's transfer with a combined noise prediction $e$ (diffusers' `_get_prev_sample`, formula (9)):
$x' = \sqrt{\bar a'/\bar a}\,x - (\bar a' - \bar a)\,e/\big(\bar a\sqrt{1 - \bar a'} + \sqrt{\bar a(1 - \bar a)\bar a'}\big)
= \frac{\alpha'}{\alpha}x + c\,e$, $c = \sigma' - \alpha'\sigma/\alpha$ (the form diffusers writes is the accurate one).
PLMS combines the last noise predictions with the *constant-step* Adams–Bashforth weights
$e = (55e_k - 59e_{k-1} + 37e_{k-2} - 9e_{k-3})/24$ (order 4; 3 and 2 in the warm-up: $(23, -16, 5)/12$, $(3, -1)/2$).

**Warm-up.** `skip_prk_steps=True` (Stable Diffusion's configuration): step 0 is a Heun step on DDIM's transfer,
$x' = \mathrm{DDIM}(x_0, e_0)$, $x_1 = \mathrm{DDIM}(x_0, (e_0 + e(x'))/2)$ (two evaluations, $e(x')$ not kept), then
AB2, AB3, AB4 — diffusers' timestep list repeats $t_1$ for the second evaluation, so `ts` lists each level once
and the run costs $N + 1$ evaluations. `skip_prk_steps=False` (the paper's PNDM): the first three steps are RK4 on
the transfer with midpoint level $t_k + f\,(t_{k+1} - t_k)$ (`prk_midpoint` $f$; diffusers puts it at training index
$i_k - \lfloor r/2\rfloor$ for a stride $r$ = `num_train_timesteps // N`, i.e. $f = \lfloor r/2\rfloor/r$), keeping
each step's first evaluation for AB4 from step 3 on; $N + 9$ evaluations.

**Slots.** The Heun stage point and the RK stages need room beside PLMS's four history points: slot $j < 4$ holds
$x_{k-j}$, then one scratch slot (`skip_prk_steps=True`, `num_slots` = 5) or two (`False`, 6), written at every
step (the structure of writes is static) and unused on PLMS steps. RK's four-stage sum is split so that two
stage slots suffice: $x_{k+1} = \tfrac56P + \tfrac16\mathrm{DDIM}(x_k, e_c)$ with the transfer
$P = \mathrm{DDIM}(x_k, (e_k + 2e_a + 2e_b)/5)$, a point near the exact trajectory (small deviation, kept by float32).

AB with constant weights assumes equal steps in the variable in which $e$ is smooth; on a general grid the
mismatch between $\bar\sigma$-increments and step counts leaves a local error $O(h^3)$, so the run converges
with order 2 (measured on uniform log-SNR grids, with either warm-up). Both warm-ups divide by $\alpha_0$ (the
Heun and RK stages restart from $x_0$ with a combined noise prediction): grids must start at $\bar\alpha(t_0) > 0$.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._core._errors import check
from ._multistep import AbstractMultistepSampler, Combination, Level, alpha_bar_difference
from ._registry import register

# Adams-Bashforth weights on (e_k, e_{k-1}, e_{k-2}, e_{k-3}) for orders 1..4 (constant steps).
ADAMS_BASHFORTH = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ddim_noise_weight(schedule, cur: Level, new: Level, *, on_grid: bool = True):
    r"""$c = \sigma' - \alpha'\sigma/\alpha = -(\bar a' - \bar a)/\big(\alpha(\alpha\sigma' + \sigma\alpha')\big)$: DDIM's weight on
    the noise prediction in $x' = \frac{\alpha'}{\alpha}x + c\,e$ (diffusers' `_get_prev_sample`), without cancellation.
    $-\bar\sigma$ onto $\sigma' = 0$; undefined (returned as $-\infty$) from $\bar\alpha = 0$."""
    d = alpha_bar_difference(schedule, cur, new, on_grid=on_grid)
    den = cur.alpha * (cur.alpha * new.sigma + cur.sigma * new.alpha)
    return jnp.where(den > 0, -d / jnp.where(den > 0, den, 1.0), -jnp.inf)


def ab_weights(order, count: int):
    """Adams-Bashforth weights on `count` history slots for a traced `order` (1..4)."""
    out = []
    for j in range(count):
        w = 0.0
        for q, row in enumerate(ADAMS_BASHFORTH, start=1):
            if j < q:
                w = jnp.where(order == q, row[j], w)
        out.append(w)
    return out


def _transfer(schedule, cur, new, eps_weights, num_slots, *, base=0, first=None, floor=0.0):
    r"""$\mathrm{DDIM}(x_{\rm base}\to$ `new`$, e)$ with $e = \sum_j w_je_j$ (weights on slots), as a `Combination`.

    Written $\frac{\alpha'}{\alpha}x + c\,e$; where `first` (a traced flag) the base slot's own weight is
    moved onto $D$: $\alpha'\frac{\alpha}{\max(\alpha, f)}D + (\sigma' + (w_{\rm base} - 1)c)\hat\varepsilon + \dots$, which
    is finite from $\bar\alpha = 0$ when $w = e_{\rm base}$ (a first step). `floor` $f$: diffusers' iPNDM divides by
    $\max(\alpha, 10^{-8})$."""
    safe_alpha = jnp.where(cur.alpha > 0, cur.alpha, 1.0)
    scale = new.alpha / safe_alpha
    c = ddim_noise_weight(schedule, cur, new)
    # Slots a combination does not read get a Python 0.0: the engine drops their terms (see `_core._multistep`).
    noise = [0.0 if w is None else c * w for w in eps_weights]
    data = [0.0] * num_slots
    if first is not None:
        # alpha'/max(alpha, f) (alpha D + sigma eps_b - sigma e) + sigma' e, with e = eps_b for a first step.
        w_base = eps_weights[base]
        kept = jnp.where(cur.alpha > 0, cur.alpha / jnp.maximum(cur.alpha, floor), 0.0) if floor else 1.0
        direct = new.sigma + (w_base - 1.0) * jnp.where(jnp.isfinite(c), c, 0.0)
        noise = [
            jnp.where(first, direct, n) if j == base else (n if isinstance(n, float) else jnp.where(first, 0.0, n))
            for j, n in enumerate(noise)
        ]
        data[base] = jnp.where(first, new.alpha * kept, 0.0)
        scale = jnp.where(first, 0.0, scale)
        # Dropping part of D (kept < 1, only at alpha < f) moves the mean: sum of data weights - alpha'.
        residual = jnp.where(first, new.alpha * (kept - 1.0), 0.0)
        return Combination(base, scale, tuple(data), tuple(noise), new, data_residual=residual)
    return Combination(base=base, scale=scale, data=tuple(data), noise=tuple(noise), level=new)


class PNDM(AbstractMultistepSampler):
    r"""PLMS / PNDM (`PNDMScheduler`): pseudo linear multistep on DDIM's transfer (module docstring).

    **Arguments** (diffusers' config names):

    - `skip_prk_steps`: `True` (PLMS, Stable Diffusion 1.x's default scheduler configuration): Heun warm-up;
      `False`: three pseudo Runge–Kutta (RK4) warm-up steps, as in the paper and diffusers' class default.
    - `prk_midpoint`: where the RK midpoint sits between $t_k$ and $t_{k+1}$ (0.5; see the module docstring for
      diffusers' rounding).

    **Facts:** $N + 1$ (`skip_prk_steps`) or $N + 9$ evaluations on $N$ steps (`num_evaluations`); deterministic;
    `num_slots` 5 or 6; convergence order 2 on general grids.

    To reproduce diffusers, `ts` holds the distinct levels of `scheduler.timesteps` and, last, the level of
    `final_alpha_cumprod` (training index 0, or $\bar\alpha = 1$ with `set_alpha_to_one`); only
    `timestep_spacing="leading"` steps consistently (see the report in the package docs).
    """

    skip_prk_steps: bool = True
    prk_midpoint: float = 0.5

    def __init__(self, skip_prk_steps: bool = True, prk_midpoint: float = 0.5):
        if not 0.0 < float(prk_midpoint) < 1.0:
            raise ValueError(f"PNDM: prk_midpoint must lie strictly between 0 and 1; got {prk_midpoint!r}.")
        self.skip_prk_steps, self.prk_midpoint = bool(skip_prk_steps), float(prk_midpoint)

    @property
    def num_slots(self) -> int:
        return 5 if self.skip_prk_steps else 6

    @property
    def order(self) -> int:  # type: ignore[override]
        return 2

    def num_evaluations(self, schedule, ts) -> int:
        n = int(jnp.shape(ts)[0]) - 1
        return n + 1 if self.skip_prk_steps else n + 3 * min(n, 3)

    def steps_for_nfe(self, nfe: int, *, ends_clean: bool = True) -> int:
        if self.skip_prk_steps:
            return max(int(nfe) - 1, 0)
        return max(int(nfe) - 9, 0) if nfe >= 12 else int(nfe) // 4

    def step(self, schedule, slots, next_level, state, info):
        writes = (self._plms_step if self.skip_prk_steps else self._prk_step)(schedule, slots, next_level, info)
        target, last = writes[-1]
        scale = check(
            last.scale,
            (info.index == 0) & ~(slots[0].alpha_bar > 0),
            "PNDM: the grid starts at abar = 0 (e.g. t = 1 on Cosine or Tangent), where the Heun / Runge-Kutta "
            "warm-up divides by alpha; start at t_0 < 1 (diffusers' tables never reach abar = 0) or use IPNDM.",
        )
        return writes[:-1] + ((target, last._replace(scale=scale)),), state

    def _plms_step(self, schedule, slots, new, info):
        k, cur = info.index, slots[0]
        heun = k == 0
        # Slot 4 (scratch): DDIM's predictor x' (used by step 0's Heun corrector only).
        predictor = _transfer(schedule, cur, new, [1.0, None, None, None, None], 5, first=jnp.ones((), dtype=bool))
        ab = ab_weights(jnp.minimum(k + 1, 4), 4)  # step k >= 1: AB of order min(k + 1, 4); step 0 is Heun
        weights = [jnp.where(heun, 0.5, ab[0])] + [jnp.where(heun, 0.0, w) for w in ab[1:]] + [jnp.where(heun, 0.5, 0.0)]
        update = _transfer(schedule, cur, new, weights, 5)
        return (4, predictor), (None, update)

    def _prk_step(self, schedule, slots, new, info):
        k, cur = info.index, slots[0]
        rk = k < 3
        t_mid = cur.t + self.prk_midpoint * (new.t - cur.t)
        mid = Level.at(schedule, t_mid)
        always = jnp.ones((), dtype=bool)
        # RK4 on the transfer: x_a = T(x_k -> mid, e_k), x_b = T(x_k -> mid, e_a), x_c = T(x_k -> new, e_b),
        # x_{k+1} = T(x_k -> new, (e_k + 2 e_a + 2 e_b + e_c)/6) = (5/6) P + (1/6) T(x_k -> new, e_c) with
        # P = T(x_k -> new, (e_k + 2 e_a + 2 e_b)/5): every stored point is a consistent transfer (close to the
        # exact trajectory), so the deviations stay small and float32 keeps them (an unevaluated point
        # x_k + kappa (e_k + 2 e_a + 2 e_b) at x_k's level would carry an O(1) deviation). On PLMS steps P is
        # the Adams-Bashforth step itself and x_{k+1} = P.
        stage_a = _transfer(schedule, cur, mid, [1.0, None, None, None, None, None], 6, first=always)
        stage_b = _transfer(schedule, cur, mid, [None, None, None, None, 1.0, None], 6)
        ab = ab_weights(jnp.asarray(4), 4)
        p_weights = [jnp.where(rk, 0.2, ab[0])] + [jnp.where(rk, 0.0, w) for w in ab[1:]] + [jnp.where(rk, 0.4, 0.0)] * 2
        partial = _transfer(schedule, cur, new, p_weights, 6)
        stage_c = _transfer(schedule, cur, new, [None, None, None, None, None, 1.0], 6)
        # (1/6) T(x_k -> new, e_c) = (alpha'/6) D_k + (alpha' sigma / (6 alpha)) eps_k + (c/6) e_c.
        c = ddim_noise_weight(schedule, cur, new)
        safe_alpha = jnp.where(cur.alpha > 0, cur.alpha, 1.0)
        update = Combination(
            base=4,
            scale=jnp.where(rk, 5 / 6, 1.0).astype(c.dtype),
            data=(jnp.where(rk, new.alpha / 6, 0.0), 0.0, 0.0, 0.0, 0.0, 0.0),
            noise=(jnp.where(rk, new.alpha * cur.sigma / safe_alpha / 6, 0.0), 0.0, 0.0, 0.0, 0.0,
                   jnp.where(rk, c / 6, 0.0)),
            level=new,
        )
        return (4, stage_a), (5, stage_b), (4, partial), (5, stage_c), (None, update)


register("plms", "PLMS (PNDM with skip_prk_steps: Heun warm-up; Stable Diffusion 1.x's scheduler)", PNDM,
         aliases=("pndm-plms",), defaults={"skip_prk_steps": True})
register("pndm", "PNDM with pseudo Runge-Kutta warm-up (diffusers PNDMScheduler's class default)", PNDM,
         aliases=("pndm-prk",), defaults={"skip_prk_steps": False})
