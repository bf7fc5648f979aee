"""Round trip against the real diffusers package: its schedulers accept every exported format, reproduce the
intended noise levels, and — run with the exact denoiser of a Gaussian source — produce the law gdj computes.

Needs the optional extra `[export]` (CPU torch + diffusers); skipped with that reason when it is missing.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional extra [export] not installed: pip install torch diffusers")
diffusers = pytest.importorskip("diffusers", reason="optional extra [export] not installed: pip install diffusers")

import jax.numpy as jnp

import gaussdiff_jax as gdj

LAM = np.array([0.03, 0.4, 1.0, 5.0])
MEAN = np.array([0.5, -1.0, 0.25, 2.0])


def _table(scheduler) -> gdj.Discrete:
    # diffusers builds its table in float32; use exactly those numbers so the comparison is exact.
    return gdj.Discrete(np.asarray(scheduler.alphas_cumprod, dtype=np.float64))


def _eps_model(alpha_bar):
    """The exact epsilon predictor E[z | x_t] of N(MEAN, diag(LAM)) at signal fraction alpha_bar (VP state)."""
    lam, m = torch.tensor(LAM), torch.tensor(MEAN)

    def eps(x):
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
        R2 = ab * lam + 1 - ab
        return torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * m) / R2

    return eps


def _law(schedule, sampler, ts):
    src = gdj.GaussianSource(LAM, mean=MEAN)
    return gdj.sample_law(src, schedule, sampler, jnp.asarray(ts))


def _affine_run(run):
    """A deterministic sampler is affine in x_T: return (gain, mean) per mode from two runs."""
    zero = run(torch.zeros(LAM.shape[0], dtype=torch.float64))
    one = run(torch.ones(LAM.shape[0], dtype=torch.float64))
    return (one - zero).numpy(), zero.numpy()


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_from_diffusers_matches_the_real_table(beta_schedule):
    # diffusers' class defaults are the linear range for every beta_schedule; from_diffusers defaults to
    # Stable Diffusion's range for "scaled_linear", so pass that range to the scheduler.
    extra = {"beta_start": 0.00085, "beta_end": 0.012} if beta_schedule == "scaled_linear" else {}
    sched = diffusers.DDPMScheduler(beta_schedule=beta_schedule, **extra)
    ours = np.asarray(gdj.Discrete.from_diffusers(beta_schedule).alphas_cumprod)
    np.testing.assert_allclose(ours, np.asarray(sched.alphas_cumprod, dtype=np.float64), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 3, 7, 10, 50, 999, 1000])
def test_spacings_reproduce_diffusers_timesteps(spacing, n):
    sched = diffusers.DDPMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(n)
    table = gdj.Discrete.from_diffusers("linear")
    ts = gdj.grids.make(spacing, table, n)
    assert gdj.to_diffusers(ts, table, "timesteps") == sched.timesteps.tolist()


def test_leading_with_steps_offset():
    sched = diffusers.DDPMScheduler(timestep_spacing="leading", steps_offset=1)
    sched.set_timesteps(20)
    table = gdj.Discrete.from_diffusers("linear")
    ts = gdj.grids.leading(table, 20, steps_offset=1)
    assert gdj.to_diffusers(ts, table, "timesteps") == sched.timesteps.tolist()


def test_ddpm_custom_timesteps_chain_and_law():
    """DDPMScheduler(timesteps=...) steps along the exported indices and ends at alpha_bar = 1 (t = 0); with the
    exact score its output law is DDIM(eta=1) = DDPM(discrete, posterior) on the grid (Monte Carlo, z-scores)."""
    sched = diffusers.DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    table = _table(sched)
    ts = gdj.grids.make("karras", table, 8)
    ts = gdj.grids.round_to_indices(ts, table)
    steps = gdj.to_diffusers(ts, table, "timesteps", scheduler=sched)
    sched.set_timesteps(timesteps=steps)
    chain = [int(sched.previous_timestep(t)) for t in sched.timesteps]
    assert chain == steps[1:] + [-1]  # -1: alpha_prod_t_prev = 1, the clean point t = 0
    np.testing.assert_allclose(np.asarray(table.time_of(np.asarray(steps))), np.asarray(ts[:-1]), rtol=1e-12)

    n = 40_000
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, LAM.shape[0], generator=gen, dtype=torch.float64)
    for t in sched.timesteps:
        eps = _eps_model(sched.alphas_cumprod[int(t)].double())(x)
        x = sched.step(eps, t, x, generator=gen).prev_sample
    law = _law(table, gdj.DDIM(eta=1.0), ts)
    law_ddpm = _law(table, gdj.DDPM(beta="discrete", variance="posterior"), ts)
    np.testing.assert_allclose(np.asarray(law.variance), np.asarray(law_ddpm.variance), rtol=1e-9)
    mean, var = x.mean(0).numpy(), x.var(0).numpy()
    v = np.asarray(law.variance)
    z_mean = (mean - np.asarray(law.mean_multiplier) * MEAN) / np.sqrt(v / n)
    z_var = (var - v) / (v * np.sqrt(2.0 / n))
    assert np.all(np.abs(z_mean) < 5) and np.all(np.abs(z_var) < 5), (z_mean, z_var)


@pytest.mark.parametrize("kind", ["sigmas", "timesteps"])
def test_euler_discrete_reproduces_sigmas_and_ddim_law(kind):
    """EulerDiscreteScheduler accepts both exports, holds the intended sigmas (trailing 0), maps them to our
    fractional training index, and run with the exact score equals gdj's DDIM law (to float32 sigma round-off)."""
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    table = _table(sched)
    ts = gdj.grids.make("karras", table, 12)  # not on integer indices
    if kind == "timesteps":
        ts = gdj.grids.round_to_indices(ts, table)
    exported = gdj.to_diffusers(ts, table, kind)
    sched.set_timesteps(**{kind: exported})
    sigma = np.asarray(table.sigma(ts))
    np.testing.assert_allclose(sched.sigmas.numpy(), sigma, rtol=2e-6)
    assert sched.sigmas[-1] == 0.0 and len(sched.sigmas) == len(ts)
    np.testing.assert_allclose(sched.timesteps.numpy(), np.asarray(table.index_of(ts[:-1])), atol=2e-3)

    # diffusers' quirk: with timestep_spacing "linspace"/"trailing" (Euler's default is "linspace") the initial
    # noise is scaled by sigma_max, not sqrt(sigma_max^2 + 1); the exact N(0, I) start in VP needs the latter.
    assert float(sched.init_noise_sigma) == pytest.approx(float(sched.sigmas[0]))
    with pytest.warns(gdj.ExportWarning, match="init_noise_sigma"):
        gdj.to_diffusers(ts, table, kind, scheduler=sched)

    def run(x_vp):
        x = x_vp * torch.sqrt(1 + sched.sigmas[0].double() ** 2)  # VE state x / sqrt(alpha_bar)
        for t in sched.timesteps:
            s = sched.sigmas[sched.step_index if sched.step_index is not None else 0].double()
            eps = _eps_model(1.0 / (1.0 + s**2))(sched.scale_model_input(x, t))
            x = sched.step(eps, t, x).prev_sample
        sched._step_index = None
        return x

    gain, offset = _affine_run(run)
    law = _law(table, gdj.DDIM(), ts)
    np.testing.assert_allclose(gain**2, np.asarray(law.variance), rtol=5e-5)
    np.testing.assert_allclose(offset, np.asarray(law.mean_multiplier) * MEAN, rtol=5e-5, atol=1e-7)


def test_ddim_scheduler_leading_matches_and_custom_warns():
    """DDIMScheduler cannot take custom timesteps; with 'leading' spacing (the one spacing whose step t -> t - T//N
    lands on the next timestep) and set_alpha_to_one=True its run equals gdj's DDIM law on the leading grid."""
    sched = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    table = _table(sched)
    n = 9
    sched.set_timesteps(n)
    ts = gdj.grids.leading(table, n)
    assert gdj.to_diffusers(ts, table) == sched.timesteps.tolist()

    def run(x):
        for t in sched.timesteps:
            eps = _eps_model(sched.alphas_cumprod[int(t)].double())(x)
            x = sched.step(eps, t, x).prev_sample
        return x

    gain, offset = _affine_run(run)
    law = _law(table, gdj.DDIM(), ts)
    np.testing.assert_allclose(gain**2, np.asarray(law.variance), rtol=1e-5)
    np.testing.assert_allclose(offset, np.asarray(law.mean_multiplier) * MEAN, rtol=1e-5, atol=1e-7)
    with pytest.warns(gdj.ExportWarning, match="no custom timesteps"):
        gdj.to_diffusers(gdj.grids.uniform(table, 10), table, scheduler=sched)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler_reproduces_sigmas_and_law(shift):
    """FlowMatchEulerDiscreteScheduler(sigmas=...) re-applies its shift; exporting with scheduler_shift pre-inverts it.
    Run with the exact velocity of the Gaussian source, its output equals gdj's DDIM law on RectifiedFlow."""
    flow = gdj.RectifiedFlow(shift=3.0)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ts = gdj.grids.uniform(flow, 10)
    exported = gdj.to_diffusers(ts, flow, "flow_sigmas", scheduler=sched, scheduler_shift=shift)
    assert len(exported) == 10 and all(0 < s <= 1 for s in exported)
    sched.set_timesteps(sigmas=exported)
    np.testing.assert_allclose(sched.sigmas.numpy(), np.asarray(flow.flow_sigma(ts)), rtol=1e-6, atol=1e-7)
    assert sched.sigmas[-1] == 0.0

    lam, m = torch.tensor(LAM), torch.tensor(MEAN)

    def velocity(x, s):
        # x = (1 - s) x0 + s z; VP state x / c, c^2 = (1-s)^2 + s^2, alpha_bar = (1-s)^2 / c^2.
        c = torch.sqrt((1 - s) ** 2 + s**2)
        ab = (1 - s) ** 2 / c**2
        x0 = m + lam * torch.sqrt(ab) * (x / c - torch.sqrt(ab) * m) / (ab * lam + 1 - ab)
        z = (x - (1 - s) * x0) / s
        return z - x0

    def run(x):  # x_T ~ N(0, I) is the flow state at s = 1
        for i, t in enumerate(sched.timesteps):
            x = sched.step(velocity(x, sched.sigmas[i].double()), t, x).prev_sample
        sched._step_index = None
        return x

    gain, offset = _affine_run(run)
    law = _law(flow, gdj.DDIM(), ts)
    np.testing.assert_allclose(gain**2, np.asarray(law.variance), rtol=1e-5)
    np.testing.assert_allclose(offset, np.asarray(law.mean_multiplier) * MEAN, rtol=1e-5, atol=1e-7)


def test_validation_against_real_schedulers():
    table = gdj.Discrete.from_diffusers("linear")
    ts = gdj.grids.uniform(table, 10)
    with pytest.warns(gdj.ExportWarning, match="clip_sample"):
        gdj.to_diffusers(ts, table, scheduler=diffusers.DDPMScheduler())  # clip_sample=True by default
    with pytest.raises(ValueError, match="alphas_cumprod differ"):
        gdj.to_diffusers(ts, table, scheduler=diffusers.DDPMScheduler(beta_schedule="scaled_linear", clip_sample=False))
    with pytest.raises(ValueError, match="use_karras"):
        gdj.to_diffusers(ts, table, scheduler=diffusers.EulerDiscreteScheduler(use_karras_sigmas=True))
    flow = gdj.RectifiedFlow(1.0)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        gdj.to_diffusers(
            gdj.grids.uniform(flow, 4),
            flow,
            "flow_sigmas",
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        )
    with pytest.warns(gdj.ExportWarning, match="shift=3.0"):
        gdj.to_diffusers(
            gdj.grids.uniform(flow, 4),
            flow,
            "flow_sigmas",
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gdj.to_diffusers(ts, table, scheduler=diffusers.DDPMScheduler(clip_sample=False))  # no warning
