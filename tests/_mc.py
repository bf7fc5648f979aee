r"""Literal Monte Carlo simulation of diffusion samplers in full coordinates (independent of the package).

Everything here is plain numpy float64 and is written from the samplers' textbook definitions: the
state is the full vector $x \in \mathbb R^d$ (a batch of samples, shape `(n, d)`), the score is the exact
score of $p_t = \mathcal N(\sqrt{\bar\alpha}\mu,\ \Sigma_t)$, $\Sigma_t = \bar\alpha\Sigma + (1-\bar\alpha)I$, formed as a
dense $d\times d$ matrix, and no per-mode (eigen-coordinate) formula of the package is used. The
schedules are re-typed from their definitions ($\bar\alpha(t)$ and $\beta(t) = -\frac{d}{dt}\log\bar\alpha$ in
closed form), so the only thing shared with the package is the convention of MATH.md section 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


# ----------------------------------------------------------------------------------------------
# Schedules (closed forms, numpy)


@dataclass(frozen=True)
class NumpySchedule:
    """`alpha_bar(t)` and `beta(t) = -d/dt log alpha_bar(t)` as plain numpy functions of a scalar t."""

    alpha_bar: Callable[[float], float]
    beta: Callable[[float], float]


def linear_beta(beta_min: float = 0.1, beta_max: float = 20.0) -> NumpySchedule:
    return NumpySchedule(
        alpha_bar=lambda t: math.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t * t)),
        beta=lambda t: beta_min + (beta_max - beta_min) * t,
    )


def cosine(s: float = 0.008) -> NumpySchedule:
    # abar = cos^2(a(t)) / cos^2(a(0)), a(t) = pi/2 (t + s)/(1 + s); beta = -d log abar/dt = 2 a' tan(a).
    def angle(t):
        return 0.5 * math.pi * (t + s) / (1 + s)

    return NumpySchedule(
        alpha_bar=lambda t: math.cos(angle(t)) ** 2 / math.cos(angle(0.0)) ** 2,
        beta=lambda t: math.pi / (1 + s) * math.tan(angle(t)),
    )


# ----------------------------------------------------------------------------------------------
# The Gaussian problem in full coordinates


@dataclass(frozen=True)
class Problem:
    """Data law N(mu, Sigma), Sigma = U diag(lam) U^T, in full coordinates."""

    U: np.ndarray  # (d, d) rotation
    lam: np.ndarray  # (d,)
    mu: np.ndarray  # (d,) full-coordinate mean

    @property
    def Sigma(self) -> np.ndarray:
        return (self.U * self.lam) @ self.U.T

    @property
    def mean_coordinates(self) -> np.ndarray:
        """m = U^T mu, the mean in the eigenbasis (what the package takes)."""
        return self.U.T @ self.mu

    def marginal_cov(self, abar: float) -> np.ndarray:
        return abar * self.Sigma + (1 - abar) * np.eye(len(self.lam))

    def score(self, x: np.ndarray, abar: float) -> np.ndarray:
        r"""Exact score of p_t at x (rows): $-\Sigma_t^{-1}(x - \sqrt{\bar\alpha}\mu)$, with a dense inverse."""
        prec = np.linalg.inv(self.marginal_cov(abar))
        return -(x - math.sqrt(abar) * self.mu) @ prec  # prec is symmetric


def random_problem(rng: np.random.Generator, lam) -> Problem:
    lam = np.asarray(lam, dtype=np.float64)
    d = len(lam)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    U = q * np.sign(np.diag(r))  # Haar-distributed rotation
    mu = rng.normal(0.0, 1.0, d) + 0.5
    return Problem(U=U, lam=lam, mu=mu)


def initial_samples(problem: Problem, sched: NumpySchedule, t0: float, init: str, n: int, rng) -> np.ndarray:
    """x_{t0} ~ N(0, I) ('standard') or ~ p_{t0} ('exact'), shape (n, d)."""
    d = len(problem.lam)
    z = rng.standard_normal((n, d))
    if init == "standard":
        return z
    abar = sched.alpha_bar(t0)
    L = np.linalg.cholesky(problem.marginal_cov(abar))
    return math.sqrt(abar) * problem.mu + z @ L.T


# ----------------------------------------------------------------------------------------------
# Samplers, each one step from forward time t to t_next < t (textbook update rules)


def _pf_ode_rhs(problem, sched):
    """dx/dt of the probability-flow ODE: -1/2 beta(t) (x + s(x, t))."""

    def f(x, t):
        return -0.5 * sched.beta(t) * (x + problem.score(x, sched.alpha_bar(t)))

    return f


def step_euler_maruyama(problem, sched, x, t, tn, rng):
    # Reverse SDE dx = [-1/2 beta x - beta s] dt + sqrt(beta) dw, run with dt = -(t - tn).
    h, b = t - tn, sched.beta(t)
    drift = -0.5 * b * x - b * problem.score(x, sched.alpha_bar(t))
    return x - h * drift + math.sqrt(b * h) * rng.standard_normal(x.shape)


def step_exponential_integrator(problem, sched, x, t, tn, rng):
    # In reverse time tau the SDE is dx = (beta/2) x dtau + beta s dtau + sqrt(beta) dw. Freeze the score at
    # (x, t) and integrate exactly: with D = 1/2 int_tn^t beta = 1/2 log(abar(tn)/abar(t)),
    # x' = e^D x + 2 (e^D - 1) s + sqrt(e^{2D} - 1) z.
    D = 0.5 * math.log(sched.alpha_bar(tn) / sched.alpha_bar(t))
    s = problem.score(x, sched.alpha_bar(t))
    return math.exp(D) * x + 2 * (math.exp(D) - 1) * s + math.sqrt(math.exp(2 * D) - 1) * rng.standard_normal(x.shape)


def make_ddpm(beta: str, variance: str):
    def step(problem, sched, x, t, tn, rng):
        ab, abn = sched.alpha_bar(t), sched.alpha_bar(tn)
        beta_k = 1 - ab / abn if beta == "discrete" else (t - tn) * sched.beta(t)
        var = beta_k if variance == "beta" else beta_k * (1 - abn) / (1 - ab)
        s = problem.score(x, ab)
        return (x + beta_k * s) / math.sqrt(1 - beta_k) + math.sqrt(var) * rng.standard_normal(x.shape)

    return step


def step_euler(problem, sched, x, t, tn, rng):
    f = _pf_ode_rhs(problem, sched)
    return x - (t - tn) * f(x, t)


def step_heun(problem, sched, x, t, tn, rng):
    f, h = _pf_ode_rhs(problem, sched), t - tn
    k1 = f(x, t)
    k2 = f(x - h * k1, tn)
    return x - 0.5 * h * (k1 + k2)


def step_rk4(problem, sched, x, t, tn, rng):
    f, h = _pf_ode_rhs(problem, sched), -(t - tn)  # signed step in t
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def make_ddim(eta: float):
    def step(problem, sched, x, t, tn, rng):
        # Song, Meng, Ermon: predict x0 and eps from the score, then re-noise to the next level.
        ab, abn = sched.alpha_bar(t), sched.alpha_bar(tn)
        s = problem.score(x, ab)
        eps_hat = -math.sqrt(1 - ab) * s
        x0_hat = (x - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
        sig2 = eta**2 * (1 - abn) / (1 - ab) * (1 - ab / abn)
        return (
            math.sqrt(abn) * x0_hat
            + math.sqrt(1 - abn - sig2) * eps_hat
            + math.sqrt(sig2) * rng.standard_normal(x.shape)
        )

    return step


def step_edm_heun(problem, sched, x, t, tn, rng):
    # Karras et al. Algorithm 1 (no churn) on xbar = x / sqrt(abar) in sigma = sqrt((1 - abar)/abar),
    # with the denoiser D(xbar; sigma) = E[x0 | x] from the exact VP score (Tweedie).
    ab, abn = sched.alpha_bar(t), sched.alpha_bar(tn)
    sig, sign = math.sqrt((1 - ab) / ab), math.sqrt(max(1 - abn, 0.0) / abn)

    def denoise(xbar, abar):
        x_vp = math.sqrt(abar) * xbar
        return (x_vp + (1 - abar) * problem.score(x_vp, abar)) / math.sqrt(abar)

    xbar = x / math.sqrt(ab)
    d = (xbar - denoise(xbar, ab)) / sig
    xbar_next = xbar + (sign - sig) * d
    if sign > 0:
        d_next = (xbar_next - denoise(xbar_next, abn)) / sign
        xbar_next = xbar + (sign - sig) * 0.5 * (d + d_next)
    return math.sqrt(abn) * xbar_next


def simulate(problem, sched, step, ts, init, n, rng) -> np.ndarray:
    """Run `step` along the decreasing grid `ts` from `init` samples; returns the final samples (n, d)."""
    x = initial_samples(problem, sched, float(ts[0]), init, n, rng)
    for t, tn in zip(ts[:-1], ts[1:]):
        x = step(problem, sched, x, float(t), float(tn), rng)
    return x


# ----------------------------------------------------------------------------------------------
# z-scores of sample moments against a claimed Gaussian law


def moment_z_scores(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""z-scores of the sample mean (per coordinate) and sample covariance (per upper-triangle entry).

    Under $x_i \sim \mathcal N(\text{mean}, \text{cov})$ i.i.d., the sample mean has standard error
    $\sqrt{C_{jj}/n}$ and the sample covariance entry $S_{jk}$ has variance $(C_{jj}C_{kk} + C_{jk}^2)/n$
    (to leading order), so both z-scores are approximately standard normal.
    """
    n, d = x.shape
    m_hat = x.mean(axis=0)
    z_mean = (m_hat - mean) / np.sqrt(np.diag(cov) / n)
    xc = x - m_hat
    S = xc.T @ xc / (n - 1)
    iu = np.triu_indices(d)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    z_cov = ((S - cov) / se)[iu]
    return z_mean, z_cov


def all_z_scores(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    r"""All z-scores of the claim $x \sim \mathcal N(\text{mean}, \text{cov})$: the raw full-coordinate moments,
    and the same moments after whitening by the claimed law ($L^{-1}(x - \text{mean})$, $LL^\top = \text{cov}$,
    which must be $\mathcal N(0, I)$). Whitening gives every direction, including the low-variance ones
    that the raw entries barely see, a relative precision of about $\sqrt{2/n}$.
    """
    L = np.linalg.cholesky(cov)
    y = np.linalg.solve(L, (x - mean).T).T
    d = x.shape[1]
    return np.concatenate(moment_z_scores(x, mean, cov) + moment_z_scores(y, np.zeros(d), np.eye(d)))
