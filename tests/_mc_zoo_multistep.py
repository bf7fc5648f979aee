r"""Literal multistep samplers of the diffusers zoo in full coordinates (numpy float64, independent of the package).

Each function runs one sampler's loop as diffusers' scheduler runs it (`step()` after `step()`, keeping the same
history lists), written from the schedulers' code and the papers with plain numpy: linear systems by
`np.linalg.solve`, integrals by Gauss-Legendre quadrature, the $\varphi$-recursions as diffusers writes them. The
state is a batch of full vectors `(n, d)`; `model(x, abar)` is the denoiser (e.g. `_mc_multistep.noisy_denoiser`),
from which the noise prediction is $\hat\varepsilon = (x - \sqrt{\bar\alpha}D)/\sqrt{1 - \bar\alpha}$. Grids are given as
decreasing-noise sequences of $\bar\alpha$ (the last may be 1: the clean jump), plus midpoints where a sampler needs
them. Nothing here imports the package.
"""

from __future__ import annotations

import math

import numpy as np


def _eps(model, x, abar):
    d = model(x, abar)
    return (x - math.sqrt(abar) * d) / math.sqrt(1 - abar), d


def _alpha_sigma_lambda(abar):
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    lam = math.log(alpha) - math.log(sigma) if sigma > 0 else math.inf
    return alpha, sigma, lam


# ----------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023; diffusers UniPCMultistepScheduler, B(h) variants)


def _unipc_update(x, m_list, lams, alphas, sigmas, s_idx, t_idx, order, predict_x0, solver_type, m_t=None):
    """UniP (m_t None) or UniC (m_t given) from x at level s_idx to t_idx; m_list[-1 - i] at level s_idx - i."""
    h = lams[t_idx] - lams[s_idx]
    m0 = m_list[-1]
    rks, D1s = [], []
    for i in range(1, order):
        rk = (lams[s_idx - i] - lams[s_idx]) / h
        rks.append(rk)
        D1s.append((m_list[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    rks = np.array(rks)
    hh = -h if predict_x0 else h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    B_h = hh if solver_type == "bh1" else math.expm1(hh)
    R, b = [], []
    for i in range(1, order + 1):
        R.append(rks ** (i - 1))
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(R), np.array(b)
    if predict_x0:
        base = sigmas[t_idx] / sigmas[s_idx] * x - alphas[t_idx] * h_phi_1 * m0
        K = alphas[t_idx] * B_h
    else:
        base = alphas[t_idx] / alphas[s_idx] * x - sigmas[t_idx] * h_phi_1 * m0
        K = sigmas[t_idx] * B_h
    if m_t is None:  # predictor
        if not D1s:
            return base
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        return base - K * sum(r * d for r, d in zip(rhos, D1s))
    rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
    corr = sum((r * d for r, d in zip(rhos[:-1], D1s)), 0.0)
    return base - K * (corr + rhos[-1] * (m_t - m0))


def unipc(model, abars, x, *, order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=()):
    """diffusers' UniPC loop on the levels `abars` (N + 1 values). Returns the final samples."""
    n = len(abars) - 1
    alphas, sigmas, lams = zip(*(_alpha_sigma_lambda(a) for a in abars))
    outputs, last_sample, this_order = [], None, None
    for k in range(n):
        eps, d = _eps(model, x, abars[k])
        m = d if predict_x0 else eps
        if k > 0 and (k - 1) not in disable_corrector:
            x = _unipc_update(last_sample, outputs, lams, alphas, sigmas, k - 1, k, this_order, predict_x0, solver_type, m_t=m)
        outputs = (outputs + [m])[-order:]
        this_order = min(order, n - k) if lower_order_final else order
        this_order = min(this_order, k + 1)
        last_sample = x
        x = _unipc_update(x, outputs, lams, alphas, sigmas, k, k + 1, this_order, predict_x0, solver_type)
    return x


# ----------------------------------------------------------------------------------------------
# DEIS (Zhang & Chen 2023; diffusers DEISMultistepScheduler, "deis" / "logrho"), antiderivative form


def _deis_ind2(t, b, c):
    return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _deis_ind3(t, b, c, d):
    lt, lc, ld = math.log(t), math.log(c), math.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((math.log(b) - lc) * (math.log(b) - ld))


def deis(model, abars, x, *, order=2, lower_order_final=True):
    """diffusers' DEIS loop (noise prediction, polynomial in log rho, rho = sigma/alpha). Returns the final samples."""
    n = len(abars) - 1
    alphas, sigmas, _ = zip(*(_alpha_sigma_lambda(a) for a in abars))
    rho = [s / a for a, s in zip(alphas, sigmas)]
    eps_list = []
    for k in range(n):
        eps, _ = _eps(model, x, abars[k])
        eps_list = (eps_list + [eps])[-order:]
        short = lower_order_final and n < 15
        o = min(order, k + 1)
        if k == n - 2 and short:
            o = min(o, 2)
        if k == n - 1 and short:
            o = 1
        a_t, a_s = alphas[k + 1], alphas[k]
        if o == 1:
            h = math.log(a_t / sigmas[k + 1]) - math.log(a_s / sigmas[k])
            x = (a_t / a_s) * x - sigmas[k + 1] * math.expm1(h) * eps_list[-1]
        elif o == 2:
            rt, r0, r1 = rho[k + 1], rho[k], rho[k - 1]
            c1 = _deis_ind2(rt, r0, r1) - _deis_ind2(r0, r0, r1)
            c2 = _deis_ind2(rt, r1, r0) - _deis_ind2(r0, r1, r0)
            x = a_t * (x / a_s + c1 * eps_list[-1] + c2 * eps_list[-2])
        else:
            rt, r0, r1, r2 = rho[k + 1], rho[k], rho[k - 1], rho[k - 2]
            c1 = _deis_ind3(rt, r0, r1, r2) - _deis_ind3(r0, r0, r1, r2)
            c2 = _deis_ind3(rt, r1, r2, r0) - _deis_ind3(r0, r1, r2, r0)
            c3 = _deis_ind3(rt, r2, r0, r1) - _deis_ind3(r0, r2, r0, r1)
            x = a_t * (x / a_s + c1 * eps_list[-1] + c2 * eps_list[-2] + c3 * eps_list[-3])
    return x


# ----------------------------------------------------------------------------------------------
# LMS (k-diffusion sample_lms, diffusers LMSDiscreteScheduler): Adams-Bashforth in sigma, Gauss-Legendre integrals


def lms_coefficient(sigmas, order, i, j):
    """int_{sigma_i}^{sigma_{i+1}} prod_{k != j} (tau - sigma_{i-k}) / (sigma_{i-j} - sigma_{i-k}) d tau (k-diffusion)."""
    nodes, weights = np.polynomial.legendre.leggauss(8)  # exact for the degree <= 3 integrand
    a, b = sigmas[i], sigmas[i + 1]
    tau = 0.5 * (b - a) * nodes + 0.5 * (a + b)
    prod = np.ones_like(tau)
    for k in range(order):
        if k != j:
            prod *= (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k])
    return 0.5 * (b - a) * float(np.sum(weights * prod))


def lms(model, abars, x, *, order=4):
    """k-diffusion's sample_lms in VP coordinates: x_bar = x / alpha, d = eps_hat, x_bar' = x_bar + sum c_j d_j."""
    n = len(abars) - 1
    sig = [math.sqrt((1 - a) / a) for a in abars]
    xbar = x / math.sqrt(abars[0])
    ds = []
    for i in range(n):
        eps, _ = _eps(model, xbar * math.sqrt(abars[i]), abars[i])
        ds = (ds + [eps])[-order:]
        o = min(i + 1, order)
        coeffs = [lms_coefficient(sig, o, i, j) for j in range(o)]
        xbar = xbar + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return xbar * math.sqrt(abars[-1])


# ----------------------------------------------------------------------------------------------
# PNDM / PLMS (Liu et al. 2022; diffusers PNDMScheduler) and iPNDM (diffusers IPNDMScheduler)


def _pndm_prev(x, a, a_prev, e):
    """diffusers' PNDMScheduler._get_prev_sample (formula (9) of the paper), from abar a to a_prev."""
    denom = a * math.sqrt(1 - a_prev) + math.sqrt(a * (1 - a) * a_prev)
    return math.sqrt(a_prev / a) * x - (a_prev - a) * e / denom


def _ab(ets):
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24


def plms(model, abars, x):
    """PNDMScheduler with skip_prk_steps: the timestep list t_0, t_1, t_1, t_2, ... with its counter logic."""
    n = len(abars) - 1
    evals = [0, 1] + list(range(1, n))  # level index of each model call (t_1 twice)
    ets, cur_sample = [], None
    for counter, lev in enumerate(evals):
        eps, _ = _eps(model, x, abars[lev])
        if counter == 1:  # Heun's second evaluation: average, restart from x_0, level 0 -> 1
            x = _pndm_prev(cur_sample, abars[0], abars[1], (eps + ets[-1]) / 2)
            continue
        ets = (ets + [eps])[-4:]
        if counter == 0:
            cur_sample = x
            x = _pndm_prev(x, abars[0], abars[1], eps)
        else:
            x = _pndm_prev(x, abars[lev], abars[lev + 1], _ab(ets))
    return x


def pndm_prk(model, abars, mids, x):
    """PNDMScheduler without skip_prk_steps: three RK4 steps on the transfer (midpoint levels `mids[k]`), then AB4."""
    n = len(abars) - 1
    ets = []
    for k in range(n):
        eps, _ = _eps(model, x, abars[k])
        ets = (ets + [eps])[-4:]
        if k < 3:
            a, am, an = abars[k], mids[k], abars[k + 1]
            x_a = _pndm_prev(x, a, am, eps)
            e2, _ = _eps(model, x_a, am)
            x_b = _pndm_prev(x, a, am, e2)
            e3, _ = _eps(model, x_b, am)
            x_c = _pndm_prev(x, a, an, e3)
            e4, _ = _eps(model, x_c, an)
            x = _pndm_prev(x, a, an, (eps + 2 * e2 + 2 * e3 + e4) / 6)
        else:
            x = _pndm_prev(x, abars[k], abars[k + 1], _ab(ets))
    return x


def ipndm(model, abars, x, *, alpha_floor=1e-8, mean=None):
    """IPNDMScheduler: ets = noise prediction, AB of growing order, pred = (x - sigma e) / max(alpha, floor).

    At abar = 0 the noise prediction is x itself and pred is 0 (diffusers, floor > 0) or the exact denoiser,
    the data mean `mean` (floor 0)."""
    n = len(abars) - 1
    ets = []
    for k in range(n):
        a, s = math.sqrt(abars[k]), math.sqrt(1 - abars[k])
        if a > 0:
            eps, _ = _eps(model, x, abars[k])
        else:  # pure noise: x = eps exactly
            eps = x
        ets = (ets + [eps])[-4:]
        e = _ab(ets)
        if a > 0 or alpha_floor > 0:
            pred = (x - s * e) / max(a, alpha_floor)
        else:
            pred = np.broadcast_to(mean, x.shape)
        x = math.sqrt(abars[k + 1]) * pred + math.sqrt(1 - abars[k + 1]) * e
    return x
