r"""Run diffusers' own scheduler loop with the exact model of a Gaussian source, in float64, and get its output law.

The loop is the pipelines' loop (`set_timesteps`, then for each timestep `scale_model_input`, the model, `step`),
with the scheduler's own code doing every update. The model is the exact denoiser of $\mathcal N(m, \mathrm{diag}\,\lambda)$
at the noise level the scheduler assigns to the sample, returned in the scheduler's parameterization.

**Float64.** diffusers holds its tables and sigmas in float32 and some `step()`s cast the sample to float32. The law
we compare with is the one of the levels diffusers holds, computed exactly, so:

- `upcast(scheduler)` turns every float32 tensor attribute into float64 with the *same values* (tables, sigmas), and
  recomputes in float64, with diffusers' own expressions, the arrays that `set_timesteps` derives from them and
  stores rounded (`sigmas_interpol`, `alpha_t`/`sigma_t`/`lambda_t`);
- `float64_steps()` makes `Tensor.to(torch.float32)` a no-op on float64 tensors while the loop runs, so that
  `sample.to(torch.float32)` inside `step()` keeps float64.

Nothing else is changed: the timesteps, the levels, the order of operations and every formula are diffusers'.

**Exact law by linearity.** With the exact (affine) model every scheduler is affine in the initial sample and in
its noise draws: $x_{\rm out} = c + G x_T + \sum_k q_k\xi_k$ per mode. `run_law` runs the loop twice on a batch:
once with the source mean and $x_T = 0$, no noise ($c$); once with mean 0, a row $x_T = 1$ ($G$) and one row per
noise draw, where `randn_tensor` (patched in the scheduler's module) returns 1 on that row for that draw and 0
elsewhere ($q_k$). Then mean $= c$ and variance $= G^2\,\mathrm{init\_noise\_sigma}^2 + \sum_k q_k^2$.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch

VP_INDEX = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler")  # the level is alphas_cumprod[timestep]
VP_SIGMA = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler",
            "DEISMultistepScheduler")
FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@contextlib.contextmanager
def float64_steps():
    """While active, `t.to(torch.float32)` (any signature) returns float64 for float64 tensors."""
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        if self.dtype == torch.float64:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            if kwargs.get("dtype") is torch.float32:
                kwargs["dtype"] = torch.float64
        return original(self, *args, **kwargs)

    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.to = original


def upcast(sched):
    """float32 tensor attributes -> float64 (same values); derived arrays recomputed in float64 (module docstring)."""
    for name, value in list(vars(sched).items()):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32 and name != "timesteps":
            setattr(sched, name, value.double())
    if type(sched).__name__ in ("KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):
        _kdpm2_arrays(sched)
    if type(sched).__name__ == "IPNDMScheduler":
        sched.alphas = (1.0 - sched.betas**2) ** 0.5  # diffusers' line in set_timesteps, in float64
    if hasattr(sched, "alpha_t") and hasattr(sched, "lambda_t"):
        ac = sched.alphas_cumprod
        sched.alpha_t = torch.sqrt(ac)
        sched.sigma_t = torch.sqrt(1 - ac)
        sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)


def _interleave(a):
    return torch.cat([a[:1], a[1:].repeat_interleave(2), a[-1:]])


def _kdpm2_arrays(sched):
    """KDPM2(A)'s arrays derived from its levels, recomputed in float64 with diffusers' own lines (set_timesteps)."""
    sig = sched.sigmas
    sigmas = torch.cat([sig[:1], sig[1::2]])[:-1]  # the levels before interleaving: [s0, ..., s_{N-1}, 0]
    if type(sched).__name__ == "KDPM2DiscreteScheduler":
        interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
    else:
        sigmas_next = sigmas.roll(-1)
        sigmas_next[-1] = 0.0
        sigmas_up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5
        sigmas_down = (sigmas_next**2 - sigmas_up**2) ** 0.5
        sigmas_down[-1] = 0.0
        interpol = sigmas.log().lerp(sigmas_down.log(), 0.5).exp()
        interpol[-2:] = 0.0
        # Loose check: diffusers' float32 sigmas_down = sqrt(next^2 - up^2) cancels (relative error ~ 6e-8 (s/next)^2;
        # it equals next^2 / s exactly), so only the formula, not the digits, can be compared.
        for name, value in (("sigmas_up", sigmas_up), ("sigmas_down", sigmas_down)):
            assert torch.allclose(_interleave(value).float().double(), getattr(sched, name), rtol=1e-2, atol=1e-30,
                                  equal_nan=True)
            setattr(sched, name, _interleave(value))
    assert torch.allclose(_interleave(interpol).float().double(), sched.sigmas_interpol, rtol=1e-2, equal_nan=True)
    sched.sigmas_interpol = _interleave(interpol)


# --- the exact model -------------------------------------------------------------------------------


def exact(x_vp, abar, lam, mean):
    """Exact denoiser D and noise prediction eps of N(mean, diag lam) for a VP sample at signal level abar."""
    r2 = abar * lam + 1 - abar
    u = x_vp - torch.sqrt(abar) * mean
    return mean + torch.sqrt(abar) * lam * u / r2, torch.sqrt(1 - abar) * u / r2


def _index(sched):
    return sched.step_index if sched.step_index is not None else 0


def level_and_input(sched, t, model_input):
    """(abar, VP sample) of a model call: the level the scheduler assigns to the sample and the input in VP units."""
    name = type(sched).__name__
    if name in VP_INDEX:
        return sched.alphas_cumprod[int(t)], model_input
    if name == "IPNDMScheduler":  # its "betas" are VP noise scales, "alphas" the signal scales
        return sched.alphas[_index(sched)] ** 2, model_input
    if name in FLOW or (name in VP_SIGMA and sched.config.get("use_flow_sigmas")):
        s = sched.sigmas[_index(sched)]
        scale = torch.sqrt((1 - s) ** 2 + s**2)
        return (1 - s) ** 2 / scale**2, model_input / scale
    if name == "KDPM2DiscreteScheduler" and not sched.state_in_first_order:
        sigma = sched.sigmas_interpol[_index(sched)]
    elif name == "KDPM2AncestralDiscreteScheduler" and not sched.state_in_first_order:
        sigma = sched.sigmas_interpol[_index(sched) - 1]  # as its scale_model_input
    else:
        sigma = sched.sigmas[_index(sched)]
    abar = 1 / (1 + sigma**2)
    if name in VP_SIGMA:
        return abar, model_input
    if name == "EDMEulerScheduler":
        x_ve = model_input * torch.sqrt(sigma**2 + sched.config.sigma_data**2)
        return abar, x_ve * torch.sqrt(abar)
    return abar, model_input  # Euler family: scale_model_input already divided by sqrt(sigma^2 + 1)


def model_output(sched, t, model_input, lam, mean):
    """The exact model's output in the scheduler's parameterization."""
    abar, x_vp = level_and_input(sched, t, model_input)
    D, eps = exact(x_vp, abar, lam, mean)
    name = type(sched).__name__
    if name in FLOW:
        return eps - D  # flow velocity dx/ds
    if name == "EDMEulerScheduler":
        sigma = sched.sigmas[_index(sched)]
        one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        c_skip = sched.precondition_outputs(one, zero, sigma)
        c_out = sched.precondition_outputs(zero, one, sigma)
        return (D - c_skip * model_input / sched._get_conditioning_c_in(sigma)) / c_out
    if name == "IPNDMScheduler":  # a v-prediction network: its step forms eps = sigma x + alpha v
        return torch.sqrt(abar) * eps - torch.sqrt(1 - abar) * D
    prediction = sched.config.get("prediction_type", "epsilon")
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return torch.sqrt(abar) * eps - torch.sqrt(1 - abar) * D
    if prediction == "sample":
        return D
    if prediction == "flow_prediction":
        return eps - D
    raise ValueError(f"prediction_type {prediction!r}")


# --- the loop --------------------------------------------------------------------------------------


class _Noise:
    """Replacement for `randn_tensor` in the scheduler's module: unit draws on chosen rows, or zeros."""

    def __init__(self, first_row: int | None):
        self.first_row, self.calls = first_row, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        out = torch.zeros(shape, dtype=torch.float64)
        if self.first_row is not None:
            row = self.first_row + self.calls
            assert row < shape[0], "more noise draws than rows"
            out[row] = 1.0
        self.calls += 1
        return out


def loop(sched, num_inference_steps, x, lam, mean, *, step_kwargs=None):
    """The pipelines' loop from `x` (the initial latents, already times init_noise_sigma); returns the output."""
    for t in sched.timesteps:
        # Flow-matching schedulers have no scale_model_input: their pipelines pass the latents as they are.
        model_input = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        out = model_output(sched, t, model_input, lam, mean)
        x = sched.step(out, t, x, **(step_kwargs or {})).prev_sample
    return x


def prepare(make, num_inference_steps):
    sched = make()
    sched.set_timesteps(num_inference_steps)
    upcast(sched)
    return sched


def run_law(make, num_inference_steps, lam, mean, *, step_kwargs=None, max_draws=None):
    """Exact output law (mean, variance per mode) and the number of noise draws, by linearity (module docstring)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    d = lam.shape[0]
    module = sys.modules[type(make()).__module__]
    rows = 1 + (max_draws if max_draws is not None else 3 * num_inference_steps + 2)
    original = getattr(module, "randn_tensor", None)
    # set_timesteps outside the float64 patch: the levels are the float32 numbers diffusers holds.
    sched_c, sched_l = prepare(make, num_inference_steps), prepare(make, num_inference_steps)
    x = torch.zeros(rows, d, dtype=torch.float64)
    x[0] = 1.0
    noise_c, noise = _Noise(None), _Noise(1)
    try:
        with float64_steps():
            if original is not None:
                module.randn_tensor = noise_c
            c = loop(sched_c, num_inference_steps, torch.zeros(1, d, dtype=torch.float64), lam, mean,
                     step_kwargs=step_kwargs)
            if original is not None:
                module.randn_tensor = noise
            lin = loop(sched_l, num_inference_steps, x, lam, torch.zeros_like(mean), step_kwargs=step_kwargs)
    finally:
        if original is not None:
            module.randn_tensor = original
    init = float(getattr(sched_l, "init_noise_sigma", 1.0))  # flow matching: pipelines use randn
    lin = lin.numpy()
    variance = lin[0] ** 2 * init**2 + np.sum(lin[1 : 1 + noise.calls] ** 2, axis=0)
    return c.numpy()[0], variance, noise.calls


def monte_carlo(make, num_inference_steps, lam, mean, *, samples, seed, step_kwargs=None):
    """Plain run of the scheduler (its own float32 handling and random draws) on `samples` latents."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    sched = make()
    sched.set_timesteps(num_inference_steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, lam.shape[0], generator=gen, dtype=torch.float64) * float(getattr(sched, "init_noise_sigma", 1.0))
    kwargs = {**(step_kwargs or {}), "generator": gen}
    x = loop(sched, num_inference_steps, x, lam, mean, step_kwargs=kwargs)
    return x.double().numpy()
