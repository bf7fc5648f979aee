r"""Literal multi-stage, ancestral and flow-matching samplers in full coordinates (numpy float64, independent of
the package): the update rules as k-diffusion (`sampling.py`), Karras et al. (Algorithm 2) and diffusers' schedulers
(`step`) write them, each in its own coordinates ($\bar x$ and $\bar\sigma$ for k-diffusion / EDM / diffusers' Karras
family, the flow state $x_f = (1-s)x_0 + sz$ for flow matching, the VP state for DDPM and DPM-Solver).

The model is the exact posterior mean of $\mathcal N(\mu, \Sigma)$ with a dense $\Sigma_t^{-1}$ (`_mc.Problem`), evaluated at
the noise level the rule asks for. Batches are `(n, d)`. Grids are the samplers' own: VE sigmas (ending at 0),
flow sigmas (ending at 0), or VP $\bar\alpha$ values (ending at 1).
"""

from __future__ import annotations

import math

from _mc_multistep import exact_denoiser


def ve_denoiser(problem, xbar, sigma):
    """D(xbar; sigma) = E[x0 | x0 + sigma z = xbar], through the VP state x = xbar / sqrt(1 + sigma^2)."""
    if sigma == 0:
        return xbar
    abar = 1.0 / (1.0 + sigma * sigma)
    return exact_denoiser(problem, xbar * math.sqrt(abar), abar)


def _to_d(problem, x, sigma):
    return (x - ve_denoiser(problem, x, sigma)) / sigma


def _ancestral_step(sigma_from, sigma_to, eta):
    """k-diffusion get_ancestral_step with eta."""
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - up**2), up


def dpm_2_ancestral(problem, x, sigmas, rng, *, eta=1.0, s_noise=1.0):
    """k-diffusion sample_dpm_2_ancestral (eta = 0: sample_dpm_2 without churn)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = _to_d(problem, x, s)
        down, up = _ancestral_step(s, s_next, eta)
        if down == 0:
            x = x + d * (down - s)
        else:
            mid = math.exp(0.5 * (math.log(s) + math.log(down)))
            x_2 = x + d * (mid - s)
            x = x + _to_d(problem, x_2, mid) * (down - s)
        if up > 0:
            x = x + rng.standard_normal(x.shape) * s_noise * up
    return x


def euler_ancestral(problem, x, sigmas, rng, *, eta=1.0, s_noise=1.0):
    """k-diffusion sample_euler_ancestral."""
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        d = _to_d(problem, x, s)
        down, up = _ancestral_step(s, sigmas[i + 1], eta)
        x = x + d * (down - s)
        if up > 0:
            x = x + rng.standard_normal(x.shape) * s_noise * up
    return x


def edm_stochastic(problem, x, sigmas, rng, *, s_churn, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0, heun=True):
    """Karras et al. (2022) Algorithm 2 (k-diffusion sample_heun / sample_euler with churn)."""
    n = len(sigmas) - 1
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (1 + gamma)
        if gamma > 0:
            x = x + rng.standard_normal(x.shape) * s_noise * math.sqrt(s_hat**2 - s**2)
        d = _to_d(problem, x, s_hat)
        x_next = x + (s_next - s_hat) * d
        if heun and s_next != 0:
            d_next = _to_d(problem, x_next, s_next)
            x_next = x + (s_next - s_hat) * 0.5 * (d + d_next)
        x = x_next
    return x


def diffusers_euler_churn(problem, x, sigmas, rng, *, s_churn, s_tmin=0.0, s_tmax=math.inf, s_noise=1.0,
                          sigma_data=None):
    """diffusers EDMEulerScheduler (sigma_data given) / EulerDiscreteScheduler (epsilon, sigma_data None) with churn:
    the model output is computed on the sample before the churn noise, then `step` adds the noise and forms
    pred = c_skip(sigma_hat) x_hat + c_out(sigma_hat) F (or x_hat - sigma_hat * eps)."""
    n = len(sigmas) - 1
    for i in range(n):
        s = sigmas[i]
        D = ve_denoiser(problem, x, s)  # the pipeline's model call, on the pre-churn sample
        if sigma_data is None:
            output = (x - D) / s  # epsilon
        else:
            c_skip = sigma_data**2 / (s**2 + sigma_data**2)
            c_out = s * sigma_data / math.sqrt(s**2 + sigma_data**2)
            output = (D - c_skip * x) / c_out
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = s * (gamma + 1)
        if gamma > 0:
            x = x + rng.standard_normal(x.shape) * s_noise * math.sqrt(s_hat**2 - s**2)
        if sigma_data is None:
            pred = x - s_hat * output
        else:
            c_skip = sigma_data**2 / (s_hat**2 + sigma_data**2)
            c_out = s_hat * sigma_data / math.sqrt(s_hat**2 + sigma_data**2)
            pred = c_skip * x + c_out * output
        x = x + (x - pred) / s_hat * (sigmas[i + 1] - s_hat)
    return x


def _flow_velocity(problem, x_f, s):
    """v = z_hat - x0_hat for the flow state x_f = (1 - s) x0 + s z (exact model), s in (0, 1]."""
    scale = math.sqrt((1 - s) ** 2 + s**2)
    abar = (1 - s) ** 2 / scale**2
    x0 = exact_denoiser(problem, x_f / scale, abar) if s < 1 else problem.mu + 0 * x_f
    return (x_f - x0) / s  # z_hat - x0_hat with z_hat = (x_f - (1 - s) x0_hat)/s


def flow_match_euler(problem, x, sigmas, rng, *, stochastic_sampling=False):
    """diffusers FlowMatchEulerDiscreteScheduler.step (sigmas end with 0)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = _flow_velocity(problem, x, s)
        if stochastic_sampling:
            x0 = x - s * v
            x = (1 - s_next) * x0 + s_next * rng.standard_normal(x.shape)
        else:
            x = x + (s_next - s) * v
    return x


def flow_match_heun(problem, x, sigmas, rng=None):
    """diffusers FlowMatchHeunDiscreteScheduler without churn: Heun in s, Euler onto s = 0."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = _flow_velocity(problem, x, s)
        x_pred = x + (s_next - s) * v
        if s_next == 0:
            x = x_pred
        else:
            x = x + (s_next - s) * 0.5 * (v + _flow_velocity(problem, x_pred, s_next))
    return x


def ddpm_diffusers(problem, x, abars, rng, *, variance_type, last_timestep_is_zero):
    """diffusers DDPMScheduler.step along abar_0 < ... < abar_N = 1 (the last step to the clean sample), epsilon
    prediction, no clipping; noise only `if t > 0`, i.e. on every step but a last one from training index 0."""
    n = len(abars) - 1
    for k in range(n):
        a_t, a_prev = abars[k], abars[k + 1]
        eps = (x - math.sqrt(a_t) * exact_denoiser(problem, x, a_t)) / math.sqrt(1 - a_t)
        beta = 1 - a_t / a_prev
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        x = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
        if k == n - 1 and last_timestep_is_zero:
            continue
        small = max((1 - a_prev) / (1 - a_t) * beta, 1e-20)
        var = beta if variance_type == "fixed_large" else small
        x = x + math.sqrt(var) * rng.standard_normal(x.shape)
    return x


def _order_list(n, order, lower_order_final, clean):
    """diffusers DPMSolverSinglestepScheduler.get_order_list (with its forced lower_order_final)."""
    lower_order_final = lower_order_final or n % order != 0 or clean
    if lower_order_final:
        if order == 3:
            orders = [1, 2, 3] * (n // 3 - 1) + [1, 2, 1] if n % 3 == 0 else [1, 2, 3] * (n // 3) + [1, 2][: n % 3]
        elif order == 2:
            orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
        else:
            orders = [1] * n
    else:
        orders = {3: [1, 2, 3], 2: [1, 2], 1: [1]}[order] * (n // order)
    if clean:
        orders[-1] = 1
    return orders


def dpm_solver_singlestep(problem, x, abars, rng, *, order, algorithm="dpmsolver++", solver_type="midpoint",
                          lower_order_final=True):
    """diffusers DPMSolverSinglestepScheduler loop (VP state, abar grid ending at 1 or not)."""
    n = len(abars) - 1
    clean = abars[-1] == 1.0
    orders = _order_list(n, order, lower_order_final, clean)
    alpha = [math.sqrt(a) for a in abars]
    sigma = [math.sqrt(1 - a) for a in abars]
    lam = [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alpha, sigma)]
    outputs, start = [], None
    for k in range(n):
        D = exact_denoiser(problem, x, abars[k])
        outputs.append(D if algorithm != "dpmsolver" else (x - alpha[k] * D) / sigma[k])
        o = orders[k]
        if o == 1:
            start = x
        s = k - o + 1  # index of the group's start
        a_t, s_t = alpha[k + 1], sigma[k + 1]
        h = lam[k + 1] - lam[s]
        noise = rng.standard_normal(x.shape) if algorithm == "sde-dpmsolver++" else None
        m = outputs[-o:][::-1]  # m0 = newest
        if algorithm == "dpmsolver++":
            x_new = (s_t / sigma[s]) * start + a_t * (1 - math.exp(-h)) * m[-1] if s_t > 0 else a_t * m[-1]
        elif algorithm == "dpmsolver":
            x_new = (a_t / alpha[s]) * start - s_t * (math.exp(h) - 1) * m[-1]
        else:
            e = math.exp(-h)
            x_new = (s_t / sigma[s] * e) * start + a_t * (1 - e * e) * m[-1] + s_t * math.sqrt(1 - e * e) * noise
        if o == 2:
            r0 = (lam[k] - lam[s]) / h
            D1 = (m[0] - m[1]) / r0
            if algorithm == "dpmsolver++":
                w = 0.5 * a_t * (1 - math.exp(-h)) if solver_type == "midpoint" else a_t * ((math.exp(-h) - 1) / h + 1)
            elif algorithm == "dpmsolver":
                w = -0.5 * s_t * (math.exp(h) - 1) if solver_type == "midpoint" else -s_t * ((math.exp(h) - 1) / h - 1)
            else:
                w = (0.5 * a_t * (1 - math.exp(-2 * h)) if solver_type == "midpoint"
                     else a_t * ((1 - math.exp(-2 * h)) / (-2 * h) + 1))
            x_new = x_new + w * D1
        elif o == 3:
            r0, r1 = (lam[k] - lam[s]) / h, (lam[k - 1] - lam[s]) / h
            D1_0, D1_1 = (m[1] - m[2]) / r1, (m[0] - m[2]) / r0
            if algorithm == "dpmsolver++":
                w1, w2 = a_t * ((math.exp(-h) - 1) / h + 1), -a_t * ((math.exp(-h) - 1 + h) / h**2 - 0.5)
            elif algorithm == "dpmsolver":
                w1, w2 = -s_t * ((math.exp(h) - 1) / h - 1), -s_t * ((math.exp(h) - 1 - h) / h**2 - 0.5)
            else:
                w1 = a_t * ((1 - math.exp(-2 * h)) / (-2 * h) + 1)
                w2 = a_t * ((1 - math.exp(-2 * h) - 2 * h) / (4 * h * h) - 0.5)
            if solver_type == "midpoint":
                x_new = x_new + w1 * D1_1
            else:
                D1 = (r0 * D1_0 - r1 * D1_1) / (r0 - r1)
                D2 = 2 * (D1_1 - D1_0) / (r0 - r1)
                x_new = x_new + w1 * D1 + w2 * D2
        x = x_new
    return x
