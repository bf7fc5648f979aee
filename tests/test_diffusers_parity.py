"""Exact parity with diffusers' schedulers: for every configuration in `_diffusers_configs.CONFIGS`, the law of
diffusers' own loop run with the exact model of a Gaussian source (float64, by linearity: `_diffusers_loop`) equals
`from_diffusers_scheduler` + `sample_law` to 1e-9 relative per mode (mean and variance), for 5, 10 and 25 inference
steps and the linear and scaled-linear tables; refused configurations raise the stated reason; each stochastic
scheduler also passes a Monte Carlo z-test with diffusers' own random draws and float32 arithmetic.

Needs the optional extra `[export]` (torch + diffusers); the module is skipped with that reason without it.
"""

import math
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional extra [export] not installed: pip install torch diffusers")
diffusers = pytest.importorskip("diffusers", reason="optional extra [export] not installed: pip install diffusers")

import _diffusers_loop as loop
import equinox as eqx
import jax.numpy as jnp
from _diffusers_configs import CLASSES, CONFIGS, STEPS, TABLES, Config

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

LAM = np.array([1e-4, 3e-3, 0.05, 0.4, 1.0, 3.0, 12.0, 50.0])
MEAN = np.array([0.7, -1.3, 0.2, 2.0, -0.5, 1.1, -3.0, 0.4])
SOURCE = gdj.GaussianSource(LAM, mean=MEAN)
PAD = 32  # every grid is padded to this many points, so that one compiled law serves every step count
TOL = 1e-9

TESTED = [c for c in CONFIGS if c.refused is None]
REFUSED = [c for c in CONFIGS if c.refused is not None]


def make_scheduler(config: Config, table: str | None):
    kwargs = {**(TABLES[table] if table else {}), **config.kwargs}
    return getattr(diffusers, config.cls)(**kwargs)


def counterpart(config: Config, table, n, *, quiet=True):
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore", gdj.DiffusersQuirkWarning)
        return gdj.from_diffusers_scheduler(make_scheduler(config, table), n, **(config.step_kwargs or {}))


@eqx.filter_jit
def _law(source, schedule, sampler, ts, num_steps, init):
    return gdj.sample_law(source, schedule, sampler, ts, init=init, num_steps=num_steps)


def gdj_law(r):
    """The counterpart's law in the pipeline's output units (grid padded: one compilation per sampler)."""
    n = r.ts.shape[0] - 1
    ts = jnp.concatenate([r.ts, jnp.zeros(PAD - n - 1, dtype=r.ts.dtype)])
    sampler = r.sampler
    if isinstance(sampler, gdj.Relabeled):
        landing = jnp.concatenate([sampler.landing, jnp.zeros(PAD - 1 - n, dtype=r.ts.dtype)])
        sampler = gdj.Relabeled(sampler.inner, landing)
    law = _law(SOURCE, r.schedule, sampler, ts, jnp.asarray(n), r.init)
    mean = np.asarray(law.mean_multiplier) * MEAN * r.output_scale
    return mean, np.asarray(law.variance) * r.output_scale**2


def relative_errors(config: Config, table, n):
    r = counterpart(config, table, n)
    mean, var, draws = loop.run_law(lambda: make_scheduler(config, table), n, LAM, MEAN, step_kwargs=config.step_kwargs)
    g_mean, g_var = gdj_law(r)
    return (
        float(np.max(np.abs(g_mean - mean) / np.abs(mean))),
        float(np.max(np.abs(g_var - var) / var)),
        draws,
        r,
    )


@pytest.mark.slow
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize(
    "config,table", [(c, t) for c in TESTED for t in c.tables], ids=lambda v: v.id if isinstance(v, Config) else str(v)
)
def test_law_equals_diffusers_loop(config, table, n):
    err_mean, err_var, draws, r = relative_errors(config, table, n)
    assert err_mean <= TOL and err_var <= TOL, (config.id, table, n, err_mean, err_var, r.notes)
    # The noise accounting agrees too: deterministic schedulers draw nothing, stochastic ones do.
    assert (draws > 0) == config.stochastic == (not r.sampler.is_deterministic), (draws, r.sampler)


@pytest.mark.parametrize("config", REFUSED, ids=lambda c: c.id)
def test_refused_configurations_say_why(config):
    with pytest.raises(ValueError, match=config.refused):
        counterpart(config, config.tables[0], 10)


def test_every_scheduler_class_and_configuration_is_accounted_for():
    """No silent skip: each issue-12 class has configurations, each configuration is tested or refused with a
    reason, every class with a counterpart is tested, and names are unique."""
    by_class = {c.cls for c in CONFIGS}
    assert set(CLASSES) <= by_class, set(CLASSES) - by_class
    from gaussdiff_jax._interop._diffusers import supported_schedulers

    assert set(supported_schedulers()) <= {c.cls for c in TESTED}
    for c in CONFIGS:
        assert (c.refused is None) or isinstance(c.refused, str)
        assert c.tables, c.id
    ids = [c.id for c in CONFIGS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.quirk], ids=lambda c: c.id)
def test_diffusers_oddities_warn(config):
    with pytest.warns(gdj.DiffusersQuirkWarning, match=config.quirk):
        r = counterpart(config, config.tables[0], 10, quiet=False)
    assert any(re.search(config.quirk, note) for note in r.notes)


_FIRST_STOCHASTIC = {}
for _config in TESTED:
    if _config.stochastic:
        _FIRST_STOCHASTIC.setdefault(_config.cls, _config)
STOCHASTIC_CONFIGS = list(_FIRST_STOCHASTIC.values()) + [
    c
    for c in TESTED
    if c.id in ("DDPM:fixed_large-trailing", "DPMSolverMultistep:3m-sde", "DPMSolverMultistep:sde-dpmsolver-2",
                "DPMSolverSinglestep:3s-sde", "FlowMatchEulerDiscrete:stochastic-shift3", "EulerDiscrete:churn-window")
]


@pytest.mark.slow
@pytest.mark.parametrize("config", STOCHASTIC_CONFIGS, ids=lambda c: c.id)
def test_monte_carlo_with_diffusers_own_draws(config):
    """diffusers' plain loop (its float32 arithmetic, its generator) on 40 000 latents: z-scores < 5."""
    table, n, samples = config.tables[0], 10, 40_000
    x = loop.monte_carlo(lambda: make_scheduler(config, table), n, LAM, MEAN, samples=samples, seed=7,
                         step_kwargs=config.step_kwargs)
    mean, var = gdj_law(counterpart(config, table, n))
    z_mean = (x.mean(0) - mean) / np.sqrt(var / samples)
    z_var = (x.var(0) - var) / (var * math.sqrt(2.0 / samples))
    assert np.all(np.abs(z_mean) < 5) and np.all(np.abs(z_var) < 5), (z_mean, z_var)


def test_scheduler_is_left_untouched():
    sched = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    sched.set_timesteps(7)
    before = sched.timesteps.clone(), sched.sigmas.clone()
    gdj.from_diffusers_scheduler(sched, 20)
    assert torch.equal(sched.timesteps, before[0]) and torch.equal(sched.sigmas, before[1])


def test_unsupported_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no counterpart for"):
        gdj.from_diffusers_scheduler(diffusers.LCMScheduler(), 4)
    with pytest.raises(ValueError, match="configured diffusers scheduler"):
        gdj.from_diffusers_scheduler({"num_train_timesteps": 1000}, 4)
    with pytest.raises(ValueError, match="positive integer"):
        gdj.from_diffusers_scheduler(diffusers.DDIMScheduler(clip_sample=False), 0)


def test_counterpart_fields():
    """Result fields: a sigma-space pipeline that starts from sigma_max z has init 1 - abar(t0) (VP units); the grid
    is on training indices where diffusers' timesteps are integers; nfe is the pipeline's model calls."""
    r = counterpart(Config("EulerDiscreteScheduler", "t", {"timestep_spacing": "trailing"}), "scaled_linear", 10)
    assert r.init == pytest.approx(float(r.schedule.one_minus_alpha_bar(r.ts[0])), rel=1e-12)
    np.testing.assert_allclose(np.asarray(r.ts), np.append(np.arange(1000, 0, -100) / 1000, 0.0), rtol=0, atol=1e-15)
    assert r.nfe == 10 and r.output_scale == 1.0 and r.scheduler == "EulerDiscreteScheduler"
    heun = counterpart(Config("HeunDiscreteScheduler", "l", {}), "linear", 10)
    assert heun.nfe == 19 == gdj.grids.num_evaluations(heun.sampler, heun.ts, heun.schedule)
