"""The grid builders for diffusers' spacings (`gdj.grids.euler_linspace`, `multistep_spacing`, `flow_match`,
`beta_sigmas`, `init_noise_variance`) reproduce what the real schedulers hold (to their float32 round-off), and the
grids `from_diffusers_scheduler` reads off a scheduler are these grids.

Needs the optional extra `[export]`; skipped with that reason without it.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional extra [export] not installed: pip install torch diffusers")
diffusers = pytest.importorskip("diffusers", reason="optional extra [export] not installed: pip install diffusers")

import jax.numpy as jnp

import gaussdiff_jax as gdj

TABLES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}
F32 = 3e-6  # diffusers holds its tables and sigmas in float32


def _table(sched) -> gdj.Discrete:
    """The scheduler's own (float32) table: diffusers' float32 alphas_cumprod near 1 carries only ~6e-8 absolute
    precision, i.e. ~3e-4 relative on sigma at training index 0 of the linear table, so builders are compared on it."""
    return gdj.Discrete(np.asarray(sched.alphas_cumprod, dtype=np.float64))


def _sigmas(schedule, ts):
    return np.asarray(schedule.sigma(jnp.asarray(ts)), dtype=np.float64)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("n", [1, 2, 5, 10, 25, 50, 200])
def test_euler_linspace_is_the_euler_family_default(table, n):
    sched = diffusers.EulerDiscreteScheduler(**TABLES[table])
    sched.set_timesteps(n)
    schedule = _table(sched)
    ts = gdj.grids.euler_linspace(schedule, n)
    np.testing.assert_allclose(_sigmas(schedule, ts), sched.sigmas.double().numpy(), rtol=F32)
    # the fractional timesteps sit where the table's index is, up to the sigma-vs-log-SNR interpolation
    np.testing.assert_allclose(np.asarray(ts[:-1]) * 1000 - 1, sched.timesteps.double().numpy(), atol=0.05)


@pytest.mark.parametrize("cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [1, 3, 5, 10, 25, 50, 333])
def test_multistep_spacing_is_dpmsolver_unipc_deis_timesteps(cls, spacing, n):
    offset = 1 if spacing == "leading" else 0
    sched = getattr(diffusers, cls)(timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    table = gdj.Discrete.from_diffusers("linear")
    ts = gdj.grids.multistep_spacing(table, n, spacing=spacing, steps_offset=offset)
    assert gdj.grids.training_indices(ts, table).tolist() == sched.timesteps.tolist()
    assert float(ts[-1]) == 0.0
    final = gdj.grids.multistep_spacing(table, n, spacing=spacing, steps_offset=offset, final="sigma_min")
    assert float(final[-1]) == pytest.approx(1e-3)


def test_multistep_linspace_differs_from_ddim_linspace():
    """DPM-Solver's linspace never evaluates training index 0; DDIM/DDPM's does."""
    table = gdj.Discrete.from_diffusers("linear")
    ours = gdj.grids.training_indices(gdj.grids.multistep_spacing(table, 10), table)
    ddim = gdj.grids.training_indices(gdj.grids.linspace(table, 10), table)
    assert ours[-1] == 100 and ddim[-1] == 0


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("n", [1, 5, 10, 28, 50])
def test_flow_match_is_flowmatch_euler_default(shift, n):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    schedule = gdj.RectifiedFlow(shift)
    ts = gdj.grids.flow_match(schedule, n)
    np.testing.assert_allclose(np.asarray(schedule.flow_sigma(ts)), sched.sigmas.double().numpy(), rtol=F32, atol=1e-12)
    if n > 1:  # the double shift: the last evaluated level is shift(shift(1/T)), the time shift(1/T)
        assert float(ts[-2]) == pytest.approx(shift * 1e-3 / (1 + (shift - 1) * 1e-3), rel=1e-6)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("n", [5, 10, 25])
def test_sigma_conversions(table, n):
    """use_karras_sigmas = grids.karras, use_exponential_sigmas = grids.log_snr_uniform, use_beta_sigmas =
    grids.beta_sigmas (between the linspace spacing's ends: training indices T - 1 and 0)."""
    pytest.importorskip("scipy")
    schedule = _table(diffusers.EulerDiscreteScheduler(**TABLES[table]))
    for option, grid in [
        ("use_karras_sigmas", gdj.grids.karras(schedule, n)),
        ("use_exponential_sigmas", gdj.grids.log_snr_uniform(schedule, n)),
        ("use_beta_sigmas", gdj.grids.beta_sigmas(schedule, n)),
    ]:
        sched = diffusers.EulerDiscreteScheduler(**TABLES[table], **{option: True})
        sched.set_timesteps(n)
        np.testing.assert_allclose(_sigmas(schedule, grid), sched.sigmas.double().numpy(), rtol=F32, err_msg=option)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_init_noise_variance(spacing):
    sched = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, beta_schedule="scaled_linear",
                                             beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(10)
    table = _table(sched)
    ts = {"linspace": gdj.grids.euler_linspace, "leading": gdj.grids.leading, "trailing": gdj.grids.trailing}[spacing](
        table, 10
    )
    c = gdj.grids.init_noise_variance(table, ts[0], float(sched.init_noise_sigma))
    named = "sqrt(sigma_max^2+1)" if spacing == "leading" else "sigma_max"
    assert c == pytest.approx(gdj.grids.init_noise_variance(table, ts[0], named), rel=F32)
    r = gdj.from_diffusers_scheduler(sched, 10)
    assert (r.init == "standard") if spacing == "leading" else (r.init == pytest.approx(c, rel=F32))


@pytest.mark.parametrize(
    "cls,kwargs,builder",
    [
        ("EulerDiscreteScheduler", {}, lambda s, n: gdj.grids.euler_linspace(s, n)),
        ("HeunDiscreteScheduler", {"timestep_spacing": "trailing"}, lambda s, n: gdj.grids.trailing(s, n)),
        ("DPMSolverMultistepScheduler", {}, lambda s, n: gdj.grids.multistep_spacing(s, n)),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, lambda s, n: gdj.grids.karras(s, n)),
        ("DDIMScheduler", {"clip_sample": False, "steps_offset": 1}, lambda s, n: gdj.grids.leading(s, n, steps_offset=1)),
    ],
)
def test_counterpart_grids_are_the_builders(cls, kwargs, builder):
    """from_diffusers_scheduler reads the levels off the scheduler (float32 sigma table); the builders recompute them
    on the float64 table: the same grid to float32 round-off."""
    sched = getattr(diffusers, cls)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gdj.DiffusersQuirkWarning)
        r = gdj.from_diffusers_scheduler(sched, 12)
    ts = builder(_table(sched), 12)
    np.testing.assert_allclose(np.asarray(r.ts), np.asarray(ts), rtol=1e-5, atol=1e-12)


def test_builder_errors():
    table = gdj.Discrete.from_diffusers("linear")
    with pytest.raises(ValueError, match="RectifiedFlow"):
        gdj.grids.flow_match(table, 10)
    with pytest.raises(ValueError, match="spacing"):
        gdj.grids.multistep_spacing(table, 10, spacing="quadratic")
    with pytest.raises(ValueError, match="final"):
        gdj.grids.multistep_spacing(table, 10, final="one")
    with pytest.raises(ValueError, match="Discrete"):
        gdj.grids.euler_linspace(gdj.RectifiedFlow(3.0), 10)
    with pytest.raises(ValueError, match="init_noise_sigma"):
        gdj.grids.init_noise_variance(table, 1.0, -2.0)
