r"""Multi-stage, ancestral and flow-matching samplers against diffusers' own scheduler loops, run with the exact model
of a diagonal Gaussian (`_diffusers_exact`: the output law read off exactly, no sampling): in float64 (the scheduler
module's float32 redirected to float64) to 1e-10, and as shipped (float32 tables / samples) at the tolerance that
their rounding allows. The rest of the proof (Monte Carlo, residuals, float32, orders, gradients) is in
`test_samplers_singlestep.py`.

Needs the optional extra `[export]` (CPU torch + diffusers); skipped with that reason when it is missing.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from test_samplers_singlestep import LAM, MEAN, SLOW, _law, _ve_grid, _ve_init

import gaussdiff_jax as gdj

torch = pytest.importorskip("torch", reason="optional extra [export] not installed: pip install torch diffusers")
diffusers = pytest.importorskip("diffusers", reason="optional extra [export] not installed: pip install diffusers")
import _diffusers_exact as dx
from diffusers.schedulers import (
    scheduling_ddpm,
    scheduling_dpmsolver_singlestep,
    scheduling_edm_euler,
    scheduling_euler_ancestral_discrete,
    scheduling_euler_discrete,
    scheduling_flow_match_euler_discrete,
    scheduling_flow_match_heun_discrete,
    scheduling_heun_discrete,
    scheduling_k_dpm_2_ancestral_discrete,
    scheduling_k_dpm_2_discrete,
)

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)


def _compare(law, mean, variance, rtol):
    np.testing.assert_allclose(np.asarray(law.mean_multiplier) * MEAN, mean, rtol=rtol, atol=rtol * 1e-3)
    np.testing.assert_allclose(np.asarray(law.variance), variance, rtol=rtol)


def _table_of(scheduler):
    return gdj.Discrete(np.asarray(scheduler.alphas_cumprod, dtype=np.float64))


def _karras_family_grid(scheduler):
    """The grid of a scheduler's `sigmas` (Heun and KDPM2 repeat the inner levels; all end at 0): its distinct levels."""
    sig = np.asarray(scheduler.sigmas, dtype=np.float64)
    levels = sig[np.concatenate([[True], sig[1:] != sig[:-1]])]
    return levels, _ve_grid(_table_of(scheduler), levels)


KARRAS_FAMILY = {
    # name: (scheduler class, module, sampler, pairs of sigmas, noise level, stochastic)
    "kdpm2": (diffusers.KDPM2DiscreteScheduler, scheduling_k_dpm_2_discrete, gdj.KDPM2(), dx.level_kdpm2, False),
    "kdpm2-ancestral": (diffusers.KDPM2AncestralDiscreteScheduler, scheduling_k_dpm_2_ancestral_discrete,
                        gdj.KDPM2(eta=1.0), dx.level_kdpm2_ancestral, True),
    "heun-discrete": (diffusers.HeunDiscreteScheduler, scheduling_heun_discrete, gdj.EDMHeun(), dx.level_sigmas, False),
    "euler-ancestral": (diffusers.EulerAncestralDiscreteScheduler, scheduling_euler_ancestral_discrete,
                        gdj.EulerAncestral(), dx.level_sigmas, True),
}


def _run_karras_family(name, n, spacing, monkeypatch, float64):
    cls, module, sampler, level, stochastic = KARRAS_FAMILY[name]
    if float64:
        dx.use_float64(module, monkeypatch)
    scheduler = cls(beta_schedule="scaled_linear", timestep_spacing=spacing)
    scheduler.set_timesteps(n)
    mean, variance = dx.run(scheduler, dx.epsilon_model(LAM, MEAN), level, d=len(LAM),
                            init_scale=scheduler.init_noise_sigma, module=module if stochastic else None,
                            monkeypatch=monkeypatch)
    levels, ts = _karras_family_grid(scheduler)
    init = _ve_init(levels[0]) if spacing in ("linspace", "trailing") else "standard"
    return _law(_table_of(scheduler), sampler, ts, init=init), mean, variance


@pytest.mark.parametrize("name", sorted(KARRAS_FAMILY))
@pytest.mark.parametrize("n,spacing", [pytest.param(1, "linspace", marks=SLOW), pytest.param(2, "linspace", marks=SLOW),
                                       pytest.param(5, "leading", marks=SLOW), (12, "trailing")])
def test_karras_family_matches_diffusers_float64(name, n, spacing, monkeypatch):
    """KDPM2 (+ ancestral) = diffusers' KDPM2 schedulers with their interpolated levels; EDMHeun = HeunDiscreteScheduler;
    EulerAncestral = EulerAncestralDiscreteScheduler: to 1e-10 with the schedulers computing in float64."""
    law, mean, variance = _run_karras_family(name, n, spacing, monkeypatch, float64=True)
    _compare(law, mean, variance, rtol=1e-10)


@pytest.mark.parametrize("name", sorted(KARRAS_FAMILY))
def test_karras_family_matches_diffusers_as_shipped(name, monkeypatch):
    """The shipped schedulers keep float32 sigmas (and Euler ancestral a float32 sample): agreement to ~1e-5 at N = 12.
    (At N = 2 KDPM2 ancestral's float32 sigma_down = sqrt(sigma'^2 - sigma_up^2) cancels: 0.6% off; see the report.)"""
    law, mean, variance = _run_karras_family(name, 12, "linspace", monkeypatch, float64=False)
    _compare(law, mean, variance, rtol=2e-5)


EDM_CLEAN = gdj.EDM(sigma_min=0.0, sigma_max=80.0)  # any schedule that reaches sigma = 0 holds diffusers' levels


@pytest.mark.parametrize("float64", [True, pytest.param(False, marks=SLOW)])
@pytest.mark.parametrize("scheduler_name", ["edm-euler", "euler-discrete"])
def test_euler_churn_matches_diffusers(scheduler_name, float64, monkeypatch):
    """EDMEulerScheduler / EulerDiscreteScheduler with `s_churn` in `step`: the model output is computed before the
    churn (EDMStochastic(churn_input="pre_churn")); the churned EDM rule (model on the churned point) differs."""
    churn = {"s_churn": 6.0, "s_tmin": 0.1, "s_tmax": 20.0, "s_noise": 1.01}
    if scheduler_name == "edm-euler":
        module, cls, config = scheduling_edm_euler, diffusers.EDMEulerScheduler, {}
        model, sigma_data = dx.edm_model(LAM, MEAN, 0.5), 0.5
    else:
        module, cls, config = scheduling_euler_discrete, diffusers.EulerDiscreteScheduler, {"beta_schedule": "scaled_linear"}
        model, sigma_data = dx.epsilon_model(LAM, MEAN), None
    if float64:
        dx.use_float64(module, monkeypatch)
    scheduler = cls(**config)
    scheduler.set_timesteps(8)
    mean, variance = dx.run(scheduler, model, dx.level_sigmas, d=len(LAM), init_scale=scheduler.init_noise_sigma,
                            module=module, monkeypatch=monkeypatch, step_kwargs=churn)
    levels = np.asarray(scheduler.sigmas, dtype=np.float64)
    schedule = EDM_CLEAN if scheduler_name == "edm-euler" else _table_of(scheduler)
    init = "standard" if scheduler_name == "edm-euler" else _ve_init(levels[0])
    sampler = gdj.EDMStochastic(**churn, solver="euler", churn_input="pre_churn", sigma_data=sigma_data)
    law = _law(schedule, sampler, _ve_grid(schedule, levels), init=init)
    _compare(law, mean, variance, rtol=1e-10 if float64 else 2e-5)
    churned = _law(schedule, eqx.tree_at(lambda s: s.churn_input, sampler, "churned"), _ve_grid(schedule, levels), init)
    assert np.max(np.abs(np.asarray(churned.variance) / variance - 1)) > 1e-2


FLOW_SCHEDULERS = {
    "flow-euler": (diffusers.FlowMatchEulerDiscreteScheduler, scheduling_flow_match_euler_discrete, {}),
    "flow-euler-stochastic": (diffusers.FlowMatchEulerDiscreteScheduler, scheduling_flow_match_euler_discrete,
                              {"stochastic_sampling": True}),
    "flow-heun": (diffusers.FlowMatchHeunDiscreteScheduler, scheduling_flow_match_heun_discrete, {}),
}


@pytest.mark.parametrize("float64", [True, pytest.param(False, marks=SLOW)])
@pytest.mark.parametrize("shift", [pytest.param(1.0, marks=SLOW), 3.0])
@pytest.mark.parametrize("name", sorted(FLOW_SCHEDULERS))
def test_flow_matching_matches_diffusers(name, shift, float64, monkeypatch):
    """On RectifiedFlow at the times whose flow_sigma are diffusers' sigmas (then t = 0), from x_f = z: float64 to
    1e-10; as shipped (both steps cast the sample to float32) to 2e-5."""
    cls, module, config = FLOW_SCHEDULERS[name]
    if float64:
        dx.use_float64(module, monkeypatch)
    scheduler = cls(shift=shift, **config)
    scheduler.set_timesteps(7)
    mean, variance = dx.run(scheduler, dx.flow_model(LAM, MEAN), dx.level_flow, d=len(LAM), init_scale=1.0,
                            module=module if "stochastic" in name else None, monkeypatch=monkeypatch,
                            scale_input=False)
    sig = np.asarray(scheduler.sigmas, dtype=np.float64)
    levels = sig[np.concatenate([[True], sig[1:] != sig[:-1]])]  # Heun repeats the inner levels
    flow = gdj.RectifiedFlow(shift)
    ts = jnp.concatenate([flow.time_of_flow_sigma(jnp.asarray(levels[:-1])), jnp.zeros(1)])
    law = _law(flow, gdj.samplers.make(name), ts)
    _compare(law, mean, variance, rtol=1e-10 if float64 else 2e-5)


DDPM_SPACINGS = [("linspace", 0), pytest.param("leading", 0, marks=SLOW), pytest.param("leading", 1, marks=SLOW),
                 ("trailing", 0)]


@pytest.mark.parametrize("spacing,offset", DDPM_SPACINGS)
@pytest.mark.parametrize("variance_type", ["fixed_small", pytest.param("fixed_small_log", marks=SLOW), "fixed_large"])
def test_ddpm_matches_diffusers(variance_type, spacing, offset, monkeypatch):
    """DDPMScheduler (clip_sample=False) = DDPM(variance=variance_type, clean_jump_noise=timesteps[-1] > 0) on its
    timesteps then t = 0, in float64 to 1e-10."""
    dx.use_float64(scheduling_ddpm, monkeypatch)
    scheduler = diffusers.DDPMScheduler(variance_type=variance_type, clip_sample=False, timestep_spacing=spacing,
                                        steps_offset=offset)
    scheduler.set_timesteps(10)
    mean, variance = dx.run(scheduler, dx.epsilon_model(LAM, MEAN), dx.level_table, d=len(LAM), init_scale=1.0,
                            module=scheduling_ddpm, monkeypatch=monkeypatch)
    indices = np.asarray(scheduler.timesteps)
    ts = np.concatenate([(indices + 1.0) / 1000.0, [0.0]])
    sampler = gdj.DDPM(variance=variance_type, clean_jump_noise=bool(indices[-1] > 0))
    law = _law(_table_of(scheduler), sampler, ts)
    _compare(law, mean, variance, rtol=1e-10)


def test_ddpm_fixed_large_differs_from_plain_beta_variance(monkeypatch):
    """diffusers' fixed_large draws no noise on the step leaving training index 0 (Ho et al.); DDPM(variance="beta")
    does: its output variance is larger by exactly 1 - abar_0 = beta_0 = 1e-4, i.e. by 10% on the mode with
    lambda = 1e-3 after 1000 steps (the full chain). fixed_large_log returns NaN samples in diffusers 0.42 (it takes
    the square root of log beta < 0)."""
    dx.use_float64(scheduling_ddpm, monkeypatch)
    scheduler = diffusers.DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    scheduler.set_timesteps(1000)
    mean, variance = dx.run(scheduler, dx.epsilon_model(LAM, MEAN), dx.level_table, d=len(LAM), init_scale=1.0,
                            module=scheduling_ddpm, monkeypatch=monkeypatch, noise_rows=1000)
    ts = np.concatenate([(np.asarray(scheduler.timesteps) + 1.0) / 1000.0, [0.0]])
    table = _table_of(scheduler)
    ho = _law(table, gdj.samplers.make("ddpm-ho"), ts)
    plain = _law(table, gdj.DDPM(variance="beta"), ts)
    _compare(ho, mean, variance, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(plain.variance) - variance, 1 - float(table.alphas_cumprod[0]), rtol=0, atol=1e-10)
    assert np.asarray(plain.variance)[0] / variance[0] - 1 > 0.09
    broken = diffusers.DDPMScheduler(variance_type="fixed_large_log", clip_sample=False)
    broken.set_timesteps(10)
    _, nan_variance = dx.run(broken, dx.epsilon_model(LAM, MEAN), dx.level_table, d=len(LAM), init_scale=1.0,
                             module=scheduling_ddpm, monkeypatch=monkeypatch)
    assert np.all(np.isnan(nan_variance))
    with pytest.raises(ValueError, match="nonlinear"):
        gdj.DDPM(clip_sample=True)


SINGLESTEP_CONFIGS = [
    # solver_order, algorithm_type, solver_type, lower_order_final, final_sigmas_type, N
    pytest.param(1, "dpmsolver++", "midpoint", False, "zero", 5, marks=SLOW),
    (2, "dpmsolver++", "midpoint", False, "zero", 8),
    pytest.param(2, "dpmsolver++", "heun", True, "zero", 7, marks=SLOW),
    pytest.param(3, "dpmsolver++", "midpoint", False, "zero", 9, marks=SLOW),
    (3, "dpmsolver++", "heun", False, "sigma_min", 9),
    pytest.param(3, "dpmsolver++", "heun", False, "sigma_min", 10, marks=SLOW),
    pytest.param(3, "dpmsolver++", "midpoint", True, "sigma_min", 12, marks=SLOW),
    pytest.param(2, "dpmsolver", "midpoint", False, "sigma_min", 6, marks=SLOW),
    (3, "dpmsolver", "heun", True, "sigma_min", 11),
    pytest.param(2, "sde-dpmsolver++", "midpoint", False, "zero", 8, marks=SLOW),
    (3, "sde-dpmsolver++", "heun", False, "zero", 9),
    pytest.param(3, "sde-dpmsolver++", "midpoint", False, "sigma_min", 9, marks=SLOW),
]


@pytest.mark.parametrize("order,algorithm,solver_type,lof,final,n", SINGLESTEP_CONFIGS)
def test_dpm_solver_singlestep_matches_diffusers(order, algorithm, solver_type, lof, final, n, monkeypatch):
    """DPMSolverSinglestepScheduler, its order list included (lower_order_final forced by diffusers when N is not a
    multiple of the order or the grid ends at 0), in float64 to 1e-10; the SDE third-order 'heun' weight as diffusers
    has it (sde_third_order="diffusers")."""
    module = scheduling_dpmsolver_singlestep
    dx.use_float64(module, monkeypatch)
    scheduler = diffusers.DPMSolverSinglestepScheduler(solver_order=order, algorithm_type=algorithm,
                                                       solver_type=solver_type, lower_order_final=lof,
                                                       final_sigmas_type=final)
    scheduler.set_timesteps(n)
    mean, variance = dx.run(scheduler, dx.epsilon_model(LAM, MEAN), dx.level_table, d=len(LAM), init_scale=1.0,
                            module=module, monkeypatch=monkeypatch)
    indices = np.asarray(scheduler.timesteps)
    ts = np.concatenate([(indices + 1.0) / 1000.0, [0.0 if final == "zero" else 1 / 1000.0]])
    sampler = gdj.DPMSolverSinglestep(order, algorithm, solver_type, lower_order_final=lof)
    law = _law(_table_of(scheduler), sampler, ts)
    _compare(law, mean, variance, rtol=1e-10)
