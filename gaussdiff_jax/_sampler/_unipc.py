r"""UniPC (Zhao et al. 2023): the unified predictor-corrector multistep solver, as diffusers' `UniPCMultistepScheduler` runs it.

With $\lambda = \log(\alpha/\sigma)$, $h = \lambda_t - \lambda_{s_0}$, $\hat h = -h$ (data prediction, `predict_x0`) or
$h$ (noise prediction), model outputs $m_i$ ($D$ or $\hat\varepsilon$) at earlier levels $s_i$ with
$r_i = (\lambda_{s_i} - \lambda_{s_0})/h$ and $D_i = (m_i - m_0)/r_i$:

- **UniP-$p$ (predictor)**: $x_t = \frac{\sigma_t}{\sigma_{s_0}}x + \alpha_t(1 - e^{-h})m_0 - \alpha_tB(h)\sum_{i<p}\rho^p_iD_i$
  (data prediction; noise prediction: $\frac{\alpha_t}{\alpha_{s_0}}x - \sigma_t(e^h - 1)m_0 - \sigma_tB(h)\sum\rho^p_iD_i$).
- **UniC-$p$ (corrector)**, once $m_t$ is evaluated at the predicted point: the same formula from the same $x$ with
  weights $\rho^c$ on $D_1, \dots, D_{p-1}$ and $D_t = m_t - m_0$.

$B(h) = \hat h$ (`bh1`) or $e^{\hat h} - 1$ (`bh2`); $\rho^c$ solves $\sum_j\rho_jr_j^{n} = b_{n+1}$ ($n < p$, $r_p = 1$) with
$b_n = n!\,\hat h\,\varphi_{n+1}(\hat h)/B(h)$, $\rho^p$ the same system without the last node; diffusers fixes
$\rho^p = 1/2$ for $p = 2$ and $\rho^c = 1/2$ for $p = 1$.

**How it fits the slots.** diffusers evaluates the model at the *predicted* point $x_k$, corrects it to $\tilde x_k$
(never evaluated) and predicts $x_{k+1}$ from $\tilde x_k$. Predictor and corrector from the same base share the
$x$-coefficient, so $\tilde x_k = x_k + (\text{model terms})$, and one write per step,
$x_{k+1} = a\,x_k + a(\tilde x_k - x_k) + (\text{predictor terms})$, needs only the evaluated points: slot $j$ holds
$x_{k-j}$, and `num_slots` = `solver_order` + 1 (the corrector of order $p$ reaches back to $m_{k-p}$).

**Schedule of orders** (diffusers): the predictor at step $k$ of $N$ has order $\min(p, k + 1)$, and
$\min(p, N - k)$ with `lower_order_final` (for every $N$, unlike DPM-Solver's and DEIS's "fewer than 15 steps");
the corrector applied at step $k$ has the order of the predictor of step $k - 1$, and is skipped at $k = 0$ and when
$k - 1$ is in `disable_corrector`. Where diffusers divides by zero we choose the limit: a last step onto
$\sigma = 0$ is first order, and history points at $\bar\alpha = 0$ (infinite $|\lambda|$) are dropped (lower order,
no corrector across an infinite step).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp

from ._lagrange import solve_transposed_vandermonde
from ._multistep import AbstractMultistepSampler, Combination, half_log_snr_step, phi
from ._registry import register


def log_snr_step(schedule, a, b):
    r"""`half_log_snr_step` with $h = +\infty$ whenever `b` is clean ($1 - \bar\alpha_b = 0$): the schedule's rounded
    increment can leave $-\Delta\bar\alpha/(1 - \bar\alpha_a)$ a hair above $-1$, i.e. $h \approx 18$ instead of $\infty$
    (LinearBeta, $t_a = 0.07 \to 0$), and $e^{-h} \approx 10^{-8}$ would then break the stated mean transport of
    the clean jump."""
    h = half_log_snr_step(schedule, a, b)
    return jnp.where(b.one_minus_alpha_bar == 0, jnp.inf, h)


def _b_coefficients(hh, solver_type: str, count: int):
    r"""$B(h)$ and $b_n = n!\,\hat h\varphi_{n+1}(\hat h)/B(h)$ for $n = 1..$`count`, cancellation-free."""
    if solver_type == "bh1":  # B = hh: b_n = n! phi_{n+1}(hh)
        B, denominator = hh, 1.0
    else:  # B = expm1(hh) = hh phi_1(hh): b_n = n! phi_{n+1}(hh) / phi_1(hh)
        B, denominator = jnp.expm1(hh), phi(1, hh)
    out, fact = [], 1.0
    for n in range(1, count + 1):
        fact *= n
        out.append(fact * phi(n + 1, hh) / denominator)
    return B, out


def _rhos(r, b, order: int, corrector: bool):
    """diffusers' rhos_p (predictor, order >= 2) or rhos_c (corrector): weights on D_1..D_{p-1} (and D_t)."""
    if corrector:
        return [0.5] if order == 1 else solve_transposed_vandermonde(list(r[: order - 1]) + [1.0], b[:order])
    if order == 1:
        return []
    return [0.5] if order == 2 else solve_transposed_vandermonde(list(r[: order - 1]), b[: order - 1])


class _Geometry:
    """One UniPC step's scalars: base level s0, target t, h, the history ratios r_i, B(h), b_n, K = alpha_t B or sigma_t B."""

    def __init__(self, sampler, schedule, s0, t, history, lands_clean):
        self.h = log_snr_step(schedule, s0, t)
        ok = jnp.isfinite(self.h) & (self.h > 0)
        h_safe = jnp.where(ok, self.h, 1.0)
        # H_i = lambda_{s0} - lambda_{s_i} > 0; r_i = -H_i / h. Non-finite H_i: a history point at abar = 0.
        self.H = [half_log_snr_step(schedule, level, s0) for level in history]
        self.r = [-H / h_safe for H in self.H]
        hh = -h_safe if sampler.predict_x0 else h_safe
        self.B, self.b = _b_coefficients(hh, sampler.solver_type, sampler.solver_order)
        self.K = (t.alpha if sampler.predict_x0 else t.sigma) * self.B
        self.lands_clean = lands_clean
        self.finite = ok

    def usable_order(self, order):
        """`order` lowered so that no history point with infinite H enters (or 1 onto sigma = 0)."""
        for i, H in enumerate(self.H):  # history point i + 1 enters from order i + 2 on
            order = jnp.where(jnp.isfinite(H), order, jnp.minimum(order, i + 1))
        return jnp.where(self.lands_clean, 1, order)

    def safe_r(self, q, order):
        """r_i for candidate order q (valid when q <= order), distinct placeholders otherwise (NaN-free)."""
        return [jnp.where(q <= order, r, -(i + 1.0)) for i, r in enumerate(self.r)]


class UniPC(AbstractMultistepSampler):
    r"""UniPC multistep predictor-corrector (`UniPCMultistepScheduler`) of order 1–3 (module docstring).

    **Arguments** (diffusers' config names):

    - `solver_order`: 1, 2 or 3 (`solver_order`; diffusers recommends 2 for guided, 3 for unconditional sampling).
    - `solver_type`: `"bh1"` or `"bh2"` (`solver_type`, the $B(h)$ of the paper).
    - `lower_order_final`: the last steps use orders $\min(p, N - k)$ (every $N$).
    - `disable_corrector`: step indices $j$ whose predicted point is *not* corrected (the corrector that runs at
      step $j + 1$ is skipped), as in diffusers.
    - `predict_x0`: data prediction (`True`, diffusers' default) or noise prediction.
    - `corrector`: `False` runs the predictor UniP alone (as if `disable_corrector` held every step).

    **Facts:** one evaluation per step; deterministic; `num_slots` = `solver_order` + 1 with the corrector. The
    convergence order of the run (`order`): with the corrector, 2 with `lower_order_final` (its last step is an
    uncorrected DDIM step) and $\min(p + 1, 3)$ without (the corrected first step has local error $O(h^3)$), 2 if
    step 0 is in `disable_corrector`; without the corrector $\min(p, 2)$, like DPM-Solver.
    """

    solver_order: int = 2
    solver_type: Literal["bh1", "bh2"] = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    predict_x0: bool = True
    corrector: bool = True

    def __init__(self, solver_order: int = 2, solver_type: Literal["bh1", "bh2"] = "bh2", lower_order_final: bool = True,
                 disable_corrector=(), predict_x0: bool = True, corrector: bool = True):
        if solver_order not in (1, 2, 3):
            raise ValueError(f"UniPC: solver_order must be 1, 2 or 3; got {solver_order!r}.")
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"UniPC: solver_type must be 'bh1' or 'bh2'; got {solver_type!r}.")
        steps = tuple(int(j) for j in disable_corrector)
        if any(j < 0 for j in steps):
            raise ValueError(f"UniPC: disable_corrector holds step indices >= 0; got {tuple(disable_corrector)!r}.")
        self.solver_order, self.solver_type = int(solver_order), solver_type
        self.lower_order_final, self.disable_corrector = bool(lower_order_final), tuple(sorted(set(steps)))
        self.predict_x0, self.corrector = bool(predict_x0), bool(corrector)

    @property
    def num_slots(self) -> int:
        return self.solver_order + (1 if self.corrector else 0)

    @property
    def order(self) -> int:  # type: ignore[override]
        if not self.corrector:
            return min(self.solver_order, 2)
        if self.lower_order_final or 0 in self.disable_corrector:
            return 2
        return min(self.solver_order + 1, 3)

    def _predictor_order(self, k, n):
        order = jnp.minimum(self.solver_order, k + 1)
        return jnp.minimum(order, n - k) if self.lower_order_final else order

    def _corrector_active(self, k, geometry: _Geometry):
        if not self.corrector:
            return jnp.zeros((), dtype=bool)
        active = (k >= 1) & geometry.finite
        for j in self.disable_corrector:
            active = active & (k - 1 != j)
        return active

    def _predictor_weights(self, g: _Geometry, order):
        """Weights of sum_i rho^p_i D_i on (m_0, m_1, ..., m_{p-1}) times -K, per candidate order, selected."""
        p = self.solver_order
        weights = [jnp.zeros_like(g.K) for _ in range(p)]
        for q in range(2, p + 1):
            r = g.safe_r(q, order)
            rho = _rhos(r, g.b, q, corrector=False)
            for i in range(1, q):  # D_i = (m_i - m_0) / r_i
                w = jnp.where(order == q, -g.K * rho[i - 1] / r[i - 1], 0.0)
                weights[i] = weights[i] + w
                weights[0] = weights[0] - w
        return weights

    def _correction_weights(self, g: _Geometry, order):
        """x_corrected - x_predicted on (m_t, m_0, m_1, ..., m_{p-1}) for the corrector of order `order`."""
        p = self.solver_order
        weights = [jnp.zeros_like(g.K) for _ in range(p + 1)]  # index 0: m_t; index 1 + i: m_i
        for q in range(1, p + 1):
            r = g.safe_r(q, order)
            rho_c = _rhos(r, g.b, q, corrector=True)
            rho_p = _rhos(r, g.b, q, corrector=False)
            pick = order == q
            for i in range(1, q):
                w = jnp.where(pick, -g.K * (rho_c[i - 1] - rho_p[i - 1]) / r[i - 1], 0.0)
                weights[1 + i] = weights[1 + i] + w
                weights[1] = weights[1] - w
            w_t = jnp.where(pick, -g.K * rho_c[q - 1], 0.0)  # D_t = m_t - m_0
            weights[0] = weights[0] + w_t
            weights[1] = weights[1] - w_t
        return weights

    def step(self, schedule, slots, next_level, state, info):
        k, n, p = info.index, info.num_steps, self.solver_order
        cur, new = slots[0], next_level
        lands_clean = new.one_minus_alpha_bar == 0
        pred = _Geometry(self, schedule, cur, new, slots[1:p], lands_clean)
        order = pred.usable_order(self._predictor_order(k, n))
        if self.predict_x0:
            scale = jnp.where(cur.sigma > 0, new.sigma / jnp.where(cur.sigma > 0, cur.sigma, 1.0), 0.0)
            first = -new.alpha * jnp.expm1(-pred.h)  # alpha_t (1 - e^{-h}); alpha_t at h = inf
        else:
            # alpha_t / alpha_s x - sigma_t (e^h - 1) m0; the limit onto sigma_t = 0 is -alpha_t sigma_s / alpha_s.
            safe_alpha = jnp.where(cur.alpha > 0, cur.alpha, 1.0)
            scale = new.alpha / safe_alpha
            h_safe = jnp.where(pred.finite, pred.h, 1.0)
            first = jnp.where(new.sigma > 0, -new.sigma * jnp.expm1(h_safe), -new.alpha * cur.sigma / safe_alpha)
        weights = self._predictor_weights(pred, order)
        weights[0] = weights[0] + first
        weights += [jnp.zeros_like(first)] * (self.num_slots - p)
        if self.corrector:
            # The corrector of step k acts on x_k (slot 0) from x_{k-1} (slot 1), with the previous step's geometry.
            corr = _Geometry(self, schedule, slots[1], cur, slots[2 : p + 1], jnp.zeros((), dtype=bool))
            active = self._corrector_active(k, corr)
            c_order = corr.usable_order(jnp.maximum(self._predictor_order(k - 1, n), 1))
            delta = self._correction_weights(corr, c_order)
            for j in range(p + 1):
                weights[j] = weights[j] + jnp.where(active, scale * delta[j], 0.0)
        if not self.predict_x0:
            # First step, noise prediction: DDIM written on D and eps_hat (finite even from abar = 0).
            direct = k == 0
            scale = jnp.where(direct, 0.0, scale)
            weights = [jnp.where(direct, 0.0, w) for w in weights]
            data = tuple(jnp.where(direct & (j == 0), new.alpha, 0.0) for j in range(self.num_slots))
            weights[0] = jnp.where(direct, new.sigma, weights[0])
            cmb = Combination(base=0, scale=scale, data=data, noise=tuple(weights), level=new)
        else:
            zeros = tuple(0.0 for _ in range(self.num_slots))
            cmb = Combination(base=0, scale=scale, data=tuple(weights), noise=zeros, level=new)
        return ((None, cmb),), state


register("unipc", "UniPC multistep predictor-corrector, bh2, order 2 (diffusers' default)", UniPC,
         aliases=("unipc-2m", "unipc-bh2"), defaults={"solver_order": 2})
register("unipc-3m", "UniPC, order 3 (bh2)", UniPC, defaults={"solver_order": 3})
register("unipc-bh1", "UniPC, bh1 variant (diffusers' advice for unconditional sampling), order 3", UniPC,
         defaults={"solver_order": 3, "solver_type": "bh1"})
register("unip", "UniP: UniPC's predictor alone (no corrector), order 2", UniPC,
         defaults={"solver_order": 2, "corrector": False})
