r"""Literal multistep samplers in full coordinates (numpy float64, independent of the package).

Written from the update rules of Lu et al. (DPM-Solver / DPM-Solver++) as diffusers' `DPMSolverMultistepScheduler`
states them: the state is the full vector $x \in \mathbb R^d$ (a batch `(n, d)`), the model is the exact posterior
mean of $\mathcal N(\mu, \Sigma)$ with a dense $\Sigma_t^{-1}$ (`_mc.Problem`), optionally plus an independent Gaussian
error of known per-eigen-direction variance at each model evaluation (a synthetic imperfect network). Grids are
given as $\bar\alpha$ values (any schedule), decreasing noise, ending at 1 for the clean jump.
"""

from __future__ import annotations

import math

import numpy as np


def exact_denoiser(problem, x: np.ndarray, abar: float) -> np.ndarray:
    """E[x0 | x_t = x] for rows x (Tweedie with the dense exact score)."""
    if abar >= 1.0:
        return x
    return (x + (1 - abar) * problem.score(x, abar)) / math.sqrt(abar)


def noisy_denoiser(problem, error_std_fn=None, rng=None):
    """The exact denoiser plus, if `error_std_fn(abar)` is given (per-eigen-direction std, shape (d,)), an
    independent N(0, U diag(std^2) U^T) error at every call."""

    def model(x, abar):
        d = exact_denoiser(problem, x, abar)
        if error_std_fn is None:
            return d
        std = error_std_fn(abar)
        return d + (rng.standard_normal(x.shape) * std) @ problem.U.T

    return model


# A synthetic imperfect network on 3 eigen-directions: error variances (rows: log-SNR levels) piecewise linear in log-SNR.
ERROR_LOG_SNR = np.array([-10.0, -2.0, 2.0, 10.0])
ERROR_MOMENTS = np.array([[0.3, 0.05, 0.2], [0.05, 0.2, 0.01], [0.02, 0.01, 0.03], [0.001, 0.002, 0.0]])


def piecewise_error_denoiser(problem, rng):
    """`noisy_denoiser` with the per-direction error variances `ERROR_MOMENTS` interpolated linearly in log-SNR
    (the law the package gets from `gdj.ErrorProfile(ERROR_LOG_SNR, ERROR_MOMENTS)`)."""

    def std(abar):
        level = math.log(abar / (1 - abar))
        return np.sqrt(np.array([np.interp(level, ERROR_LOG_SNR, ERROR_MOMENTS[:, i]) for i in range(3)]))

    return noisy_denoiser(problem, std, rng)


def dpm_solver_multistep(model, abars, x, rng, *, order=2, algorithm="dpmsolver++", lower_order_final=True):
    """diffusers' DPMSolverMultistepScheduler loop (midpoint second order), data or noise prediction, ODE or SDE.

    `abars`: decreasing-noise sequence abar_0 < ... < abar_N (the last may be 1). Returns the final samples."""
    n = len(abars) - 1
    alphas = np.sqrt(abars)
    sigmas = np.sqrt(1 - np.asarray(abars))
    with np.errstate(divide="ignore"):
        lambdas = np.log(alphas) - np.log(sigmas)
    outputs = []
    for k in range(n):
        a, s = alphas[k], sigmas[k]
        D = model(x, abars[k])
        m_out = D if algorithm.endswith("++") else (x - a * D) / s
        outputs.append(m_out)
        o = min(order, k + 1)
        lands_clean = sigmas[k + 1] == 0
        if k == n - 1 and ((lower_order_final and n < 15) or lands_clean):
            o = 1
        if k == n - 2 and lower_order_final and n < 15:
            o = min(o, 2)
        at, st = alphas[k + 1], sigmas[k + 1]
        h = lambdas[k + 1] - lambdas[k]
        sde = algorithm.startswith("sde")
        D0 = outputs[-1]
        if o >= 2:
            r0 = (lambdas[k] - lambdas[k - 1]) / h
            D1 = (outputs[-1] - outputs[-2]) / r0
        noise = rng.standard_normal(x.shape) if sde else 0.0
        if algorithm == "dpmsolver++":
            x = (st / s) * x - at * (math.exp(-h) - 1) * D0 if st > 0 else at * D0
            if o == 2:
                x = x - 0.5 * at * (math.exp(-h) - 1) * D1
        elif algorithm == "sde-dpmsolver++":
            x = (st / s * math.exp(-h)) * x + at * (1 - math.exp(-2 * h)) * D0 + st * math.sqrt(1 - math.exp(-2 * h)) * noise
            if o == 2:
                x = x + 0.5 * at * (1 - math.exp(-2 * h)) * D1
        elif algorithm == "dpmsolver":
            x = (at / a) * x - st * (math.exp(h) - 1) * D0
            if o == 2:
                x = x - 0.5 * st * (math.exp(h) - 1) * D1
        else:
            raise ValueError(algorithm)
    return x
