r"""DEIS (Zhang & Chen 2023), the log-$\rho$ multistep exponential integrator, as diffusers' `DEISMultistepScheduler` runs it.

In $\bar x = x/\alpha$ and $\rho = \sigma/\alpha$ the probability-flow ODE is $d\bar x/d\rho = \hat\varepsilon$. DEIS ("deis"
algorithm, `logrho` solver) interpolates the last $p$ noise predictions by a polynomial in $\log\rho$ and integrates
it exactly: $x_t = \frac{\alpha_t}{\alpha_s}x_s + \alpha_t\sum_j\hat\varepsilon_j\int_{\rho_s}^{\rho_t}L_j(\log\rho)\,d\rho$.
With $v = \log\rho - \log\rho_s$ the Lagrange basis $L_j(v) = \sum_n c_{jn}v^n$ has nodes $v_j = \lambda_s - \lambda_{s_j}$
($\lambda = -\log\rho$, half the log-SNR) and the moments are $\varphi$-functions of $h = \lambda_t - \lambda_s$:
$\alpha_t\int_{\rho_s}^{\rho_t}v^n\,d\rho = \sigma_t\,n!\,(-h)^{n+1}\varphi_{n+1}(h)$ (limit $\alpha_t\rho_s(-1)^{n+1}n!$ onto $\sigma_t = 0$).
diffusers writes the same integrals as differences of antiderivatives (`ind_fn`), which cancel in float32; these
weights do not. Order 1 is DDIM.

Warm-up and end (diffusers): step $k$ has order $\min(p, k + 1)$; with `lower_order_final` and fewer than 15 steps
the last step is first order and the one before at most second order. diffusers' DEIS ends at the first training
level, not at $\sigma = 0$ (`final_sigmas_type` is absent): `ts` should end at that level to reproduce it.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ._lagrange import lagrange_monomials
from ._multistep import AbstractLinearMultistepSampler, Combination, half_log_snr_step, phi
from ._registry import register
from ._unipc import log_snr_step


def _moments(h, new, cur, count: int):
    r"""$\alpha_t\int_{\rho_s}^{\rho_t}(\log\rho - \log\rho_s)^n\,d\rho$ for $n < $ `count` (module docstring)."""
    ok = jnp.isfinite(h) & (h > 0)
    h_safe = jnp.where(ok, h, 1.0)
    clean = new.sigma <= 0
    rho_s = cur.sigma / jnp.where(cur.alpha > 0, cur.alpha, 1.0)
    out = []
    for n in range(count):
        # sigma_t n! (-h)^{n+1} phi_{n+1}(h) = sigma_t n! (-1)^{n+1} h^{n+1} phi_{n+1}(h)
        sign_fact = (-1.0) ** (n + 1) * math.factorial(n)
        regular = new.sigma * sign_fact * h_safe ** (n + 1) * phi(n + 1, h_safe)
        out.append(jnp.where(clean, new.alpha * rho_s * sign_fact, regular))
    return out


class DEIS(AbstractLinearMultistepSampler):
    r"""DEIS multistep, log-$\rho$ polynomial extrapolation of the noise prediction, order 1–3 (`DEISMultistepScheduler`).

    **Arguments** (diffusers' config names):

    - `solver_order`: 1, 2 or 3 (diffusers recommends 2 for guided, 3 for unconditional sampling).
    - `lower_order_final`: first- and second-order last steps when the run has fewer than 15 steps.

    **Facts:** one evaluation per step; deterministic; `num_slots` = `solver_order`; convergence order of the run
    $\min(p, 2)$ (the first-order first step has local error $O(h^2)$), like DPM-Solver. History points at
    $\bar\alpha = 0$ (infinite $\log\rho$) are dropped from the interpolation (its limit), so grids may start at
    $\bar\alpha(t_0) = 0$.
    """

    solver_order: int = 2
    lower_order_final: bool = True

    def __init__(self, solver_order: int = 2, lower_order_final: bool = True):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"DEIS: solver_order must be 1, 2 or 3; got {solver_order!r}.")
        self.solver_order, self.lower_order_final = int(solver_order), bool(lower_order_final)

    def _order(self, k, n, nodes):
        p = self.solver_order
        short = self.lower_order_final & (n < 15)
        order = jnp.minimum(p, k + 1)
        order = jnp.where((k == n - 2) & short, jnp.minimum(order, 2), order)
        order = jnp.where((k == n - 1) & short, 1, order)
        for i, v in enumerate(nodes):  # history point i + 1 enters from order i + 2 on
            order = jnp.where(jnp.isfinite(v), order, jnp.minimum(order, i + 1))
        return order

    def step(self, schedule, slots, next_level, state, info):
        p, k = self.solver_order, info.index
        cur, new = slots[0], next_level
        h = log_snr_step(schedule, cur, new)
        nodes = [half_log_snr_step(schedule, level, cur) for level in slots[1:p]]  # v_j = lambda_s - lambda_{s_j} > 0
        order = self._order(k, info.num_steps, nodes)
        moments = _moments(h, new, cur, p)
        weights = [jnp.zeros_like(h) for _ in range(p)]
        for q in range(1, p + 1):
            # Candidate order q on nodes 0, v_1, ..., v_{q-1}; placeholders where q exceeds the order (NaN-free).
            safe = [0.0] + [jnp.where(q <= order, v, i + 1.0) for i, v in enumerate(nodes[: q - 1])]
            basis = lagrange_monomials(safe)
            for j in range(q):
                w = sum((c * mu for c, mu in zip(basis[j], moments)), 0.0)
                weights[j] = weights[j] + jnp.where(order == q, w, 0.0)
        # First step (order 1 = DDIM): written on D and eps_hat, finite from abar = 0 too; later steps
        # x' = (alpha'/alpha) x + sum_j w_j eps_hat_j.
        first = k == 0
        scale = jnp.where(first, 0.0, new.alpha / jnp.where(cur.alpha > 0, cur.alpha, 1.0))
        noise = [jnp.where(first, new.sigma if j == 0 else 0.0, w) for j, w in enumerate(weights)]
        data = tuple(jnp.where(first & (j == 0), new.alpha, 0.0) for j in range(p))
        cmb = Combination(base=0, scale=scale, data=data, noise=tuple(noise), level=new)
        return ((None, cmb),), state


register("deis", "DEIS multistep (log-rho), order 2", DEIS, aliases=("deis-2m",), defaults={"solver_order": 2})
register("deis-3m", "DEIS multistep (log-rho), order 3", DEIS, defaults={"solver_order": 3})
