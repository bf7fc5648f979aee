r"""diffusers' own scheduler loops, run with the exact model of a diagonal Gaussian, with the output law read off exactly.

The data law is $\mathcal N(m, \mathrm{diag}(\lambda))$ per mode. Every scheduler `step` is linear in (sample, model
output, noise) and the exact model is affine in its input, so the sample is an affine function of the initial draw
$z$ and of the noise draws $\xi_k$. The loop runs on a tensor of rows: row 0 is the sample for $z = 0$ and no noise
(the model applied with its offset), row 1 its coefficient on $z$ (starting at `init_noise_sigma`), row $1 + k$ its
coefficient on the $k$-th draw of `randn_tensor` (patched to return the $k$-th unit row). The output law is
mean = row 0, variance = the sum of the squares of the other rows. No Monte Carlo, no formula of gaussdiff_jax.

**float64.** diffusers builds its tables in float32 and some `step`s cast the sample to float32. `use_float64`
replaces the names `np` and `torch` *inside one scheduler module* by proxies whose `float32` is `float64`: the
scheduler's code runs unchanged, in double precision (tables, sigmas, the sample). Tests run both ways: float64 to
1e-10, and the unpatched float32 scheduler at a tolerance that allows for its rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _torch(*arrays):
    return tuple(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in arrays)


def epsilon_model(lam, mean):
    """VP-input epsilon predictor: eps(x) = sigma (x - alpha m) / R^2 at signal fraction abar."""
    lam, mean = _torch(lam, mean)

    def model(x, abar):
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        R2 = abar * lam + 1 - abar
        return s / R2 * x, -s * a * mean / R2  # (linear part applied to x, offset)

    return model


def flow_model(lam, mean):
    """Flow-matching velocity v = eps_hat - D on the flow state x_f = x_VP / (alpha + sigma)."""
    lam, mean = _torch(lam, mean)

    def model(x, abar):
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        R2 = abar * lam + 1 - abar
        x_vp = (a + s) * x
        gain = (s - lam * a) / R2  # (eps_hat - D) = gain (x_vp - a m) - m
        return gain * x_vp, -gain * a * mean - mean

    return model


def edm_model(lam, mean, sigma_data):
    """EDM-preconditioned network output F = (D - c_skip x) / c_out for input c_in(sigma) x (EDMEulerScheduler, epsilon)."""
    lam, mean = _torch(lam, mean)

    def model(x_in, abar):
        sig2 = (1 - abar) / abar
        c_in = 1 / math.sqrt(sig2 + sigma_data**2)
        c_skip = sigma_data**2 / (sig2 + sigma_data**2)
        c_out = math.sqrt(sig2) * sigma_data / math.sqrt(sig2 + sigma_data**2)
        x = x_in / c_in  # the VE state
        g = lam / (lam + sig2)  # D = m + g (x - m)
        return (g - c_skip) / c_out * x, (1 - g) * mean / c_out

    return model


class _Float64Proxy:
    """A module stand-in whose `float32` is `float64` (everything else: the real module)."""

    def __init__(self, module):
        self._module = module
        self.float32 = module.float64

    def __getattr__(self, name):
        return getattr(self._module, name)


def use_float64(module, monkeypatch):
    """Make scheduler `module` compute in float64 (see the module docstring); undone by `monkeypatch`."""
    for name, real in (("np", np), ("torch", torch)):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, _Float64Proxy(real))


class _Draws:
    """Stand-in for diffusers' `randn_tensor`: the k-th call returns the unit row 2 + k (shape (rows, d))."""

    def __init__(self):
        self.count = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None, **kwargs):
        out = torch.zeros(shape, dtype=dtype or torch.float64)
        if 2 + self.count >= shape[0]:
            raise RuntimeError("more noise draws than rows: pass a larger noise_rows")
        out[2 + self.count] = 1.0
        self.count += 1
        return out


def run(scheduler, model, level, *, d, init_scale, module=None, monkeypatch=None, scale_input=True, step_kwargs=None,
        noise_rows=64):
    """Run the scheduler loop over `scheduler.timesteps` (already set); return (mean, variance) per mode (numpy).

    - `model(x, abar)` -> (linear part, offset): the exact model output for input rows `x` at signal fraction abar;
    - `level(scheduler, t)` -> abar of the model evaluation at timestep `t` (called after `scale_model_input`);
    - `init_scale`: the initial sample is `init_scale * z`;
    - `module`, `monkeypatch`: the scheduler's module, whose `randn_tensor` is replaced (stochastic schedulers);
    - `noise_rows`: room for that many noise draws.
    """
    if module is not None:
        monkeypatch.setattr(module, "randn_tensor", _Draws())
    latents = torch.zeros((2 + noise_rows, d), dtype=torch.float64)
    latents[1] = float(init_scale)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(latents, t) if scale_input else latents
        linear, offset = model(x_in.to(torch.float64), level(scheduler, t))
        out = linear
        out[0] = out[0] + offset
        latents = scheduler.step(out, t, latents, **(step_kwargs or {})).prev_sample.to(torch.float64)
    rows = latents.numpy()
    return rows[0], np.sum(rows[1:] ** 2, axis=0)


# --- noise level of the model evaluation, per scheduler family (mirrors each `scale_model_input`) ---------------


def ve_level(sigma):
    sigma = float(sigma)
    return 1.0 / (1.0 + sigma * sigma)


def level_sigmas(scheduler, t):
    """Euler / Heun / EDM schedulers: sigmas[step_index]."""
    return ve_level(scheduler.sigmas[scheduler.step_index])


def level_kdpm2(scheduler, t):
    if scheduler.state_in_first_order:
        return ve_level(scheduler.sigmas[scheduler.step_index])
    return ve_level(scheduler.sigmas_interpol[scheduler.step_index])


def level_kdpm2_ancestral(scheduler, t):
    if scheduler.state_in_first_order:
        return ve_level(scheduler.sigmas[scheduler.step_index])
    return ve_level(scheduler.sigmas_interpol[scheduler.step_index - 1])


def level_flow(scheduler, t):
    if scheduler.step_index is None:
        scheduler._init_step_index(t)
    s = float(scheduler.sigmas[scheduler.step_index])
    return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)


def level_table(scheduler, t):
    """DDPM / DPM-Solver: the training table at the (integer) timestep."""
    return float(scheduler.alphas_cumprod[int(t)])
