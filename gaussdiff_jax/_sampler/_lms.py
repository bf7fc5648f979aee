r"""Linear multistep in $\sigma$ (k-diffusion `sample_lms`, diffusers' `LMSDiscreteScheduler`), order up to 4.

In $\bar x = x/\alpha$ and the VE noise level $\bar\sigma = \sigma/\alpha$ the probability-flow ODE is
$d\bar x/d\bar\sigma = \hat\varepsilon$. LMS integrates the Lagrange polynomial (in $\bar\sigma$) through the last $p$
derivatives: $\bar x_{k+1} = \bar x_k + \sum_j c_j\hat\varepsilon_{k-j}$, $c_j = \int_{\bar\sigma_k}^{\bar\sigma_{k+1}}L_j(\tau)\,d\tau$
with nodes $\bar\sigma_k, \bar\sigma_{k-1}, \dots$ (variable-step Adams–Bashforth). diffusers and k-diffusion integrate
$L_j$ numerically (`scipy.integrate.quad`); it is a polynomial, so with $\tau = \bar\sigma_k + s\Delta$,
$\Delta = \bar\sigma_{k+1} - \bar\sigma_k$ and nodes $s_i = (\bar\sigma_{k-i} - \bar\sigma_k)/\Delta$,
$c_j = \Delta\sum_n c_{jn}/(n + 1)$ exactly (the same values to rounding). Differences of $\bar\sigma$ come from the
schedule's accurate $\bar\alpha$ increments. Step $k$ has order $\min(p, k + 1)$; there is no lower-order end
(the last step onto $\bar\sigma = 0$ is an ordinary polynomial integral).

In VP coordinates $x_{k+1} = \frac{\alpha_{k+1}}{\alpha_k}x_k + \alpha_{k+1}\sum_jc_j\hat\varepsilon_{k-j}$; the first
(Euler, = DDIM) step is written $\alpha_1D_0 + \sigma_1\hat\varepsilon_0$ so that a start at $\bar\alpha = 0$ works.
Pipelines in $\sigma$ start from $\bar x = \bar\sigma_{\max}z$: `sample_law(..., init=1 - abar(t_0))`.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._lagrange import lagrange_monomials
from ._multistep import AbstractLinearMultistepSampler, Combination, Level, alpha_bar_difference
from ._registry import register


def ve_sigma_difference(schedule, a: Level, b: Level) -> jnp.ndarray:
    r"""$\bar\sigma_b - \bar\sigma_a$ without cancellation: $(\bar\alpha_a - \bar\alpha_b)/(\bar\alpha_a\bar\alpha_b(\bar\sigma_a + \bar\sigma_b))$
    ($-\infty$ or $+\infty$ when one level has $\bar\alpha = 0$; 0 for equal levels)."""
    d = alpha_bar_difference(schedule, a, b, on_grid=True)  # abar_b - abar_a
    total = a.ve_sigma + b.ve_sigma
    ok = (a.alpha_bar > 0) & (b.alpha_bar > 0) & (total > 0)
    safe = jnp.where(ok, a.alpha_bar * b.alpha_bar * total, 1.0)
    return jnp.where(ok, -d / safe, jnp.where(total > 0, b.ve_sigma - a.ve_sigma, 0.0))


def lms_coefficients(delta, nodes):
    r"""$c_j = \Delta\int_0^1 L_j(s)\,ds$ on nodes `[0, s_1, ..., s_{p-1}]` (in units of $\Delta$)."""
    basis = lagrange_monomials(nodes)
    return [delta * sum((c / (n + 1) for n, c in enumerate(row)), 0.0) for row in basis]


class LMS(AbstractLinearMultistepSampler):
    r"""Linear multistep in $\sigma$ of order `solver_order` (k-diffusion `sample_lms`, diffusers `LMSDiscreteScheduler`).

    **Arguments:**

    - `solver_order`: 1–4 (k-diffusion's and diffusers' `order`, default 4).

    **Facts:** one evaluation per step; deterministic; `num_slots` = `solver_order`; convergence order of the run
    $\min(p, 2)$: the Euler first step has local error $O(h^2)$. History points at $\bar\sigma = \infty$ are dropped
    (the limit of the interpolation).
    """

    solver_order: int = 4

    def __init__(self, solver_order: int = 4):
        if solver_order not in (1, 2, 3, 4):
            raise ValueError(f"LMS: solver_order must be 1, 2, 3 or 4; got {solver_order!r}.")
        self.solver_order = int(solver_order)

    def step(self, schedule, slots, next_level, state, info):
        p, k = self.solver_order, info.index
        cur, new = slots[0], next_level
        delta = ve_sigma_difference(schedule, cur, new)
        ok = jnp.isfinite(delta) & (delta < 0)
        delta_safe = jnp.where(ok, delta, -1.0)
        back = [ve_sigma_difference(schedule, cur, level) for level in slots[1:p]]  # sigma_{k-i} - sigma_k > 0
        order = jnp.minimum(p, k + 1)
        for i, b in enumerate(back):  # history point i + 1 enters from order i + 2 on
            order = jnp.where(jnp.isfinite(b), order, jnp.minimum(order, i + 1))
        weights = [jnp.zeros_like(delta) for _ in range(p)]
        for q in range(1, p + 1):
            nodes = [0.0] + [jnp.where(q <= order, b / delta_safe, -(i + 1.0)) for i, b in enumerate(back[: q - 1])]
            for j, c in enumerate(lms_coefficients(delta_safe, nodes)):
                weights[j] = weights[j] + jnp.where(order == q, new.alpha * c, 0.0)
        first = k == 0
        scale = jnp.where(first, 0.0, new.alpha / jnp.where(cur.alpha > 0, cur.alpha, 1.0))
        noise = tuple(jnp.where(first, new.sigma if j == 0 else 0.0, w) for j, w in enumerate(weights))
        data = tuple(jnp.where(first & (j == 0), new.alpha, 0.0) for j in range(p))
        cmb = Combination(base=0, scale=scale, data=data, noise=noise, level=new)
        return ((None, cmb),), state


register("lms", "linear multistep in sigma, order 4 (k-diffusion sample_lms, diffusers LMSDiscreteScheduler)", LMS,
         aliases=("lms-discrete", "k-lms"), defaults={"solver_order": 4})
