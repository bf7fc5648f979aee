r"""Multi-stage, ancestral and flow-matching samplers (KDPM2, EDM's churn, Euler ancestral, FlowMatch Euler / Heun,
DPM-Solver singlestep, diffusers' DDPM rule), proven independently:

- Monte Carlo of the literal rules in full coordinates (`_mc_zoo_singlestep`, written from k-diffusion, Karras et
  al. and diffusers' `step`s; dense exact score, random rotation, nonzero mean), 100k samples, z-scores < 5;
- stated residuals against the computed weight sums (float64, random grids); facts and the registry; identities
  (Euler ancestral = DDIM(eta), FlowMatch Euler = DDIM, no churn = EDMHeun); float32 vs float64; convergence orders;
  gradients against finite differences.

diffusers' own scheduler loops (exact model, float64 and as shipped) are in `test_samplers_singlestep_diffusers.py`.
"""

import dataclasses

import _mc
import _mc_zoo_singlestep as zoo
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_float32 import assert_float32_matches_float64

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

LAM = np.array([1e-3, 0.03, 0.4, 1.0, 5.0])
MEAN = np.array([0.3, 0.5, -1.0, 0.25, 2.0])
LAM3 = np.array([0.05, 0.7, 2.5])
Z_MAX = 5.0
SLOW = pytest.mark.slow  # the rest of a parameter sweep: one representative case stays in the fast run
SD = gdj.Discrete.from_diffusers("scaled_linear")


def _ve_grid(schedule, sigmas):
    """Forward times of the VE levels `sigmas` (decreasing, the last may be 0: the clean end)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    clean = sigmas[-1] == 0
    inner = np.asarray(gdj.grids.time_of_sigma(schedule, sigmas[:-1] if clean else sigmas))
    return jnp.asarray(np.concatenate([inner, [0.0]]) if clean else inner)


def _ve_init(sigma_max):
    """VP variance of a start from sigma_max * z in xbar = x / alpha: 1 - abar(t_0)."""
    return float(sigma_max) ** 2 / (1 + float(sigma_max) ** 2)


def _law(schedule, sampler, ts, init="standard", lam=LAM, mean=MEAN):
    return gdj.sample_law(gdj.GaussianSource(lam, mean=mean), schedule, sampler, jnp.asarray(ts), init=init)


def _z_scores(samples, problem, law):
    mean = problem.U @ (np.asarray(law.mean_multiplier) * problem.mean_coordinates)
    cov = (problem.U * np.asarray(law.variance)) @ problem.U.T
    return _mc.all_z_scores(samples, mean, cov)


# --- Monte Carlo of the literal rules in full coordinates --------------------------------------------------------

SIGMAS = np.array([10.0, 4.0, 1.5, 0.6, 0.2, 0.05, 0.0])  # VE levels on Stable Diffusion's table


def _sd_sigmas():
    """The levels the package sees (sigma of the bisected times) and the grid."""
    ts = _ve_grid(SD, SIGMAS)
    return np.asarray(SD.sigma(ts)), ts


VE_CASES = {
    "kdpm2": (gdj.KDPM2(), lambda p, x, s, rng: zoo.dpm_2_ancestral(p, x, s, rng, eta=0.0)),
    "kdpm2-ancestral": (gdj.KDPM2(eta=1.0), lambda p, x, s, rng: zoo.dpm_2_ancestral(p, x, s, rng, eta=1.0)),
    "kdpm2-eta": (gdj.KDPM2(eta=0.6, s_noise=1.2),
                  lambda p, x, s, rng: zoo.dpm_2_ancestral(p, x, s, rng, eta=0.6, s_noise=1.2)),
    "edm-heun-churn": (gdj.EDMStochastic(s_churn=20.0, s_tmin=0.1, s_tmax=5.0, s_noise=1.05),
                       lambda p, x, s, rng: zoo.edm_stochastic(p, x, s, rng, s_churn=20.0, s_tmin=0.1, s_tmax=5.0,
                                                               s_noise=1.05)),
    "edm-euler-churn": (gdj.EDMStochastic(s_churn=8.0, solver="euler"),
                        lambda p, x, s, rng: zoo.edm_stochastic(p, x, s, rng, s_churn=8.0, heun=False)),
    "diffusers-edm-euler-churn": (
        gdj.EDMStochastic(s_churn=8.0, solver="euler", churn_input="pre_churn", sigma_data=0.5),
        lambda p, x, s, rng: zoo.diffusers_euler_churn(p, x, s, rng, s_churn=8.0, sigma_data=0.5)),
    "diffusers-euler-churn": (
        gdj.EDMStochastic(s_churn=8.0, s_tmax=3.0, solver="euler", churn_input="pre_churn"),
        lambda p, x, s, rng: zoo.diffusers_euler_churn(p, x, s, rng, s_churn=8.0, s_tmax=3.0)),
    "euler-ancestral": (gdj.EulerAncestral(eta=0.7, s_noise=1.1),
                        lambda p, x, s, rng: zoo.euler_ancestral(p, x, s, rng, eta=0.7, s_noise=1.1)),
    "euler-ancestral-capped": (gdj.EulerAncestral(eta=1.8),
                               lambda p, x, s, rng: zoo.euler_ancestral(p, x, s, rng, eta=1.8)),
}


@pytest.mark.parametrize("name", sorted(VE_CASES))
def test_monte_carlo_sigma_space(name):
    sampler, literal = VE_CASES[name]
    rng = np.random.default_rng(sorted(VE_CASES).index(name))
    problem = _mc.random_problem(rng, LAM3)
    sigmas, ts = _sd_sigmas()
    x = sigmas[0] * rng.standard_normal((100_000, 3))  # xbar = sigma_max z
    out = literal(problem, x, [float(s) for s in sigmas], rng)
    law = _law(SD, sampler, ts, init=_ve_init(sigmas[0]), lam=LAM3, mean=problem.mean_coordinates)
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))
    # The test has power: the law of DDIM on the same grid is rejected (measured z from 30 to 650).
    other = _law(SD, gdj.DDIM(), ts, init=_ve_init(sigmas[0]), lam=LAM3, mean=problem.mean_coordinates)
    assert np.max(np.abs(_z_scores(out, problem, other))) > 4 * Z_MAX


FLOW = gdj.RectifiedFlow(shift=3.0)
FLOW_SIGMAS = np.array([1.0, 0.85, 0.7, 0.5, 0.3, 0.12, 0.0])  # diffusers' flow sigmas s (x_f = (1-s) x0 + s z)


@pytest.mark.parametrize("name", ["flow-heun", "flow-euler", "flow-euler-stochastic"])
def test_monte_carlo_flow_matching(name):
    sampler = gdj.samplers.make(name)
    rng = np.random.default_rng(7)
    problem = _mc.random_problem(rng, LAM3)
    ts = jnp.asarray(FLOW.time_of_flow_sigma(jnp.asarray(FLOW_SIGMAS)))
    sigmas = [float(s) for s in FLOW.flow_sigma(ts)]
    x = rng.standard_normal((100_000, 3))  # x_f = z at s = 1
    if name == "flow-heun":
        out = zoo.flow_match_heun(problem, x, sigmas)
    else:
        out = zoo.flow_match_euler(problem, x, sigmas, rng, stochastic_sampling=name.endswith("stochastic"))
    law = _law(FLOW, sampler, ts, lam=LAM3, mean=problem.mean_coordinates)
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))


TABLE = np.asarray(gdj.Discrete.from_diffusers("linear").alphas_cumprod)
LINEAR = gdj.Discrete(TABLE)


def _index_grid(indices, end):
    """Training indices (decreasing) -> times (i + 1)/T, then `end` ("clean": t = 0, or a time)."""
    ts = (np.asarray(indices) + 1.0) / 1000.0
    abars = TABLE[np.asarray(indices)]
    if end == "clean":
        return np.concatenate([ts, [0.0]]), np.concatenate([abars, [1.0]])
    return ts, abars


@pytest.mark.parametrize("variance,last_zero", [("fixed_large", True), ("fixed_small", False), ("fixed_large", False)])
def test_monte_carlo_ddpm_diffusers_rule(variance, last_zero):
    rng = np.random.default_rng(3)
    problem = _mc.random_problem(rng, LAM3)
    indices = [999, 700, 400, 150, 40] + ([0] if last_zero else [12])
    ts, abars = _index_grid(indices, "clean")
    x = rng.standard_normal((100_000, 3))
    out = zoo.ddpm_diffusers(problem, x, list(abars), rng, variance_type=variance, last_timestep_is_zero=last_zero)
    sampler = gdj.DDPM(variance=variance, clean_jump_noise=not last_zero)
    law = _law(LINEAR, sampler, ts, lam=LAM3, mean=problem.mean_coordinates)
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))


SINGLESTEP_CASES = [
    (2, "dpmsolver++", "midpoint", True, "clean"),
    (3, "dpmsolver++", "heun", False, 9),
    (3, "dpmsolver", "midpoint", True, 8),
    (2, "sde-dpmsolver++", "heun", True, "clean"),
    (3, "sde-dpmsolver++", "midpoint", True, "clean"),
]


@pytest.mark.parametrize("order,algorithm,solver_type,lof,end", SINGLESTEP_CASES)
def test_monte_carlo_dpm_solver_singlestep(order, algorithm, solver_type, lof, end):
    rng = np.random.default_rng(order)
    problem = _mc.random_problem(rng, LAM3)
    n = 8 if end == "clean" else end
    indices = np.round(np.linspace(0, 999, n + 2)).astype(int)[::-1]
    ts, abars = _index_grid(indices[:-1], "clean") if end == "clean" else _index_grid(indices, None)
    x = rng.standard_normal((100_000, 3))
    out = zoo.dpm_solver_singlestep(problem, x, list(abars), rng, order=order, algorithm=algorithm,
                                    solver_type=solver_type, lower_order_final=lof)
    sampler = gdj.DPMSolverSinglestep(order, algorithm, solver_type, lower_order_final=lof)
    law = _law(LINEAR, sampler, ts, lam=LAM3, mean=problem.mean_coordinates)
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))


# --- stated residuals, facts, registry --------------------------------------------------------------------------

ALL = {
    "kdpm2": gdj.KDPM2(),
    "kdpm2-ancestral": gdj.KDPM2(eta=1.0),
    "kdpm2-eta": gdj.KDPM2(eta=1.7, s_noise=0.9),
    "edm-heun": gdj.EDMStochastic(),
    "edm-heun-churn": gdj.EDMStochastic(s_churn=30.0, s_tmin=0.3, s_tmax=20.0, s_noise=1.1),
    "edm-euler-churn": gdj.EDMStochastic(s_churn=5.0, solver="euler"),
    "diffusers-edm-euler": gdj.EDMStochastic(s_churn=5.0, solver="euler", churn_input="pre_churn", sigma_data=0.5),
    "diffusers-euler": gdj.EDMStochastic(s_churn=5.0, solver="euler", churn_input="pre_churn"),
    "euler-ancestral": gdj.EulerAncestral(),
    "euler-ancestral-eta": gdj.EulerAncestral(eta=1.4, s_noise=1.1),
    "flow-euler": gdj.FlowMatchEuler(),
    "flow-euler-stochastic": gdj.FlowMatchEuler(stochastic_sampling=True),
    "flow-heun": gdj.FlowMatchHeun(),
    "dpmpp-2s": gdj.DPMSolverSinglestep(2),
    "dpmpp-3s-heun": gdj.DPMSolverSinglestep(3, solver_type="heun", lower_order_final=False),
    "dpm-3s": gdj.DPMSolverSinglestep(3, "dpmsolver"),
    "dpmpp-3s-sde": gdj.DPMSolverSinglestep(3, "sde-dpmsolver++", "heun"),
}


def _random_grid(rng, n, clean):
    ts = np.sort(rng.uniform(0.002, 0.999, n + (0 if clean else 1)))[::-1]
    return jnp.asarray(np.concatenate([ts, [0.0]]) if clean else ts)


@pytest.mark.parametrize("name", sorted(ALL))
def test_stated_residuals_equal_the_weight_sums(name):
    """Per write: sum of total data weights - alpha_new = data_residual, sum of total noise weights - sigma_new =
    noise_residual (float64, random grids on two schedules, ending clean or not), run step by step in Python."""
    sampler = ALL[name]
    rng = np.random.default_rng(1)
    Level, StepInfo = gdj.Level, gdj.StepInfo
    for schedule, clean in ((gdj.LinearBeta(), True), (gdj.Cosine(), False), (gdj.RectifiedFlow(2.0), True)):
        ts = _random_grid(rng, 7, clean)
        levels = (Level.at(schedule, ts[0]),) * sampler.num_slots
        state = sampler.init(schedule, ts[0])
        for k in range(len(ts) - 1):
            info = StepInfo(jnp.int32(k), jnp.int32(len(ts) - 1))
            writes, state = sampler.step(schedule, levels, Level.at(schedule, ts[k + 1]), state, info)
            for target, cmb in writes:
                A = sum(cmb.data[j] + (cmb.scale * levels[j].alpha if j == cmb.base else 0.0) for j in range(len(levels)))
                S = sum(cmb.noise[j] + (cmb.scale * levels[j].sigma if j == cmb.base else 0.0) for j in range(len(levels)))
                assert abs(float(A - cmb.level.alpha - cmb.data_residual)) < 1e-12, (name, k, target)
                assert abs(float(S - cmb.level.sigma - cmb.noise_residual)) < 1e-12, (name, k, target)
                assert float(cmb.fresh) >= 0
                if target is None:
                    levels = (cmb.level,) + levels[:-1]
                else:
                    levels = tuple(cmb.level if j == target else levels[j] for j in range(len(levels)))
            assert float(levels[0].alpha_bar) == float(schedule.alpha_bar(ts[k + 1]))


EXPECTED_FACTS = {
    # name: (evaluations per step, order, deterministic, slots, NFE on an 11-point grid ending clean / not)
    "kdpm2": (2, 2, True, 2, 19, 20),
    "kdpm2-ancestral": (2, 2, False, 2, 19, 20),
    "kdpm2-eta": (2, 0, False, 2, 19, 20),
    "edm-heun": (2, 2, True, 3, 19, 20),
    "edm-heun-churn": (2, 0, False, 3, 19, 20),
    "edm-euler-churn": (1, 1, False, 2, 10, 10),
    "diffusers-edm-euler": (1, 1, False, 2, 10, 10),
    "diffusers-euler": (1, 1, False, 2, 10, 10),
    "euler-ancestral": (1, 1, False, 1, 10, 10),
    "euler-ancestral-eta": (1, 0, False, 1, 10, 10),
    "flow-euler": (1, 1, True, 1, 10, 10),
    "flow-euler-stochastic": (1, 0, False, 1, 10, 10),
    "flow-heun": (2, 2, True, 2, 19, 20),
    "dpmpp-2s": (1, 2, True, 2, 10, 10),
    "dpmpp-3s-heun": (1, 3, True, 3, 10, 10),
    "dpm-3s": (1, 3, True, 3, 10, 10),
    "dpmpp-3s-sde": (1, 0, False, 3, 10, 10),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_facts(name):
    sampler = ALL[name]
    per_step, order, deterministic, slots, nfe_clean, nfe = EXPECTED_FACTS[name]
    assert (sampler.evaluations_per_step, sampler.order, sampler.is_deterministic, sampler.num_slots) == (
        per_step, order, deterministic, slots)
    assert sampler.num_slots <= 4 and len(sampler.grid_slots) == sampler.num_slots and not sampler.needs_beta
    schedule = gdj.LinearBeta()
    clean, rough = np.linspace(1.0, 0.0, 11), np.linspace(1.0, 1e-3, 11)
    assert gdj.grids.num_evaluations(sampler, clean, schedule) == nfe_clean
    assert gdj.grids.num_evaluations(sampler, rough, schedule) == nfe
    assert gdj.grids.steps_for_nfe(sampler, nfe_clean, ends_clean=True) == 10
    assert gdj.grids.steps_for_nfe(sampler, nfe, ends_clean=False) == 10


@pytest.mark.parametrize("name", sorted(ALL))
def test_registry_round_trip(name):
    sampler = ALL[name]
    registered = gdj.samplers.name_of(sampler)
    options = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}
    assert gdj.samplers.make(registered, **options) == sampler
    assert type(gdj.samplers.make(registered)) is type(sampler)


@pytest.mark.parametrize("name", ["kdpm2", "kdpm2-ancestral", "edm-stochastic", "edm-stochastic-euler",
                                  "edm-euler-diffusers", "euler-diffusers-churn", "euler-ancestral", "flow-euler",
                                  "flow-euler-stochastic", "flow-heun", "dpm-singlestep", "dpmpp-2s", "dpmpp-3s",
                                  "dpm-2s", "dpmpp-2s-sde", "ddpm-ho"])
def test_registered_names(name):
    sampler = gdj.samplers.make(name)
    assert gdj.samplers.make(gdj.samplers.name_of(sampler)) == sampler


def test_diffusers_presets():
    assert gdj.samplers.make("kdpm2-ancestral") == gdj.KDPM2(eta=1.0)
    assert gdj.samplers.make("edm-euler-diffusers") == gdj.EDMStochastic(solver="euler", churn_input="pre_churn",
                                                                          sigma_data=0.5)
    assert gdj.samplers.make("ddpm-ho") == gdj.DDPM(variance="fixed_large", clean_jump_noise=False)
    assert gdj.samplers.make("flow-euler-stochastic") == gdj.FlowMatchEuler(stochastic_sampling=True)


# --- identities ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.0, 0.4, 1.0])
def test_euler_ancestral_is_ddim(eta):
    """Euler ancestral with eta <= 1 (s_noise = 1) redraws the same share of the noise as DDIM(eta) around the same
    x0 prediction: the same law, also from abar(t_0) = 0."""
    for schedule, ts in ((gdj.LinearBeta(), np.linspace(1.0, 0.0, 9)), (gdj.Cosine(0.0), np.linspace(1.0, 1e-3, 9))):
        a = _law(schedule, gdj.EulerAncestral(eta=eta), ts)
        b = _law(schedule, gdj.DDIM(eta=eta), ts)
        np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)
        np.testing.assert_allclose(a.mean_multiplier, b.mean_multiplier, rtol=1e-12)


def test_flow_euler_is_ddim_and_flow_heun_is_not_edm_heun():
    ts = np.linspace(0.99, 0.0, 9)
    euler, ddim = _law(FLOW, gdj.FlowMatchEuler(), ts), _law(FLOW, gdj.DDIM(), ts)
    np.testing.assert_allclose(euler.variance, ddim.variance, rtol=1e-12)
    heun, edm = _law(FLOW, gdj.FlowMatchHeun(), ts), _law(FLOW, gdj.EDMHeun(), ts)
    assert np.max(np.abs(np.asarray(heun.variance) / np.asarray(edm.variance) - 1)) > 1e-2


def test_edm_without_churn_is_edm_heun_and_kdpm2_eta0_is_deterministic():
    ts = np.concatenate([np.asarray(gdj.grids.time_of_sigma(SD, np.geomspace(14.0, 0.03, 9))), [0.0]])
    for exact in ("standard", "exact"):
        a, b = _law(SD, gdj.EDMStochastic(), ts, init=exact), _law(SD, gdj.EDMHeun(), ts, init=exact)
        np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)
        np.testing.assert_allclose(a.mean_multiplier, b.mean_multiplier, rtol=1e-12)
    # churn outside [s_tmin, s_tmax] everywhere: no churn at all
    a = _law(SD, gdj.EDMStochastic(s_churn=40.0, s_tmin=100.0, s_tmax=200.0), ts)
    np.testing.assert_allclose(a.variance, _law(SD, gdj.EDMHeun(), ts).variance, rtol=1e-12)


@pytest.mark.parametrize("sampler", [gdj.KDPM2(), gdj.EDMStochastic(s_churn=1.0)])
def test_sigma_space_samplers_refuse_infinite_sigma(sampler):
    with pytest.raises(ValueError, match="infinite at abar = 0"):  # checked at t_0, before the scan
        _law(gdj.Cosine(0.0), sampler, np.linspace(1.0, 0.0, 5))


# --- convergence, gradients, float32 -----------------------------------------------------------------------------


def _kl_vs_n(sampler, ns):
    """KL(p_tmin || output) from the exact start on a uniform log-SNR grid from -6 to 6 (linear beta)."""
    schedule, lam = gdj.LinearBeta(), jnp.asarray([0.03, 0.5, 4.0])
    out = []
    for n in ns:
        ts = gdj.grids.time_of_log_snr(schedule, jnp.linspace(-6.0, 6.0, n + 1))
        law = gdj.sample_law(gdj.GaussianSource(lam), schedule, sampler, ts, init="exact")
        out.append(float(gdj.kl(gdj.GaussianSource(lam), law, target="truncated")))
    return np.asarray(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ALL))
def test_convergence_order(name):
    """KL ~ N^{-2p} with p = `sampler.order`: slope between N = 96 and 192 within 0.25 of -2p. Ancestral and churned
    samplers keep the order of their ODE step (their noise maps exact marginals to exact marginals). Order 0: the law
    does not converge (KL does not halve when N doubles)."""
    sampler = ALL[name]
    ns = (48, 96, 192)  # multiples of 3: full singlestep groups
    kl = _kl_vs_n(sampler, ns)
    slopes = np.diff(np.log(kl)) / np.diff(np.log(ns))
    if sampler.order == 0:
        assert kl[-1] > 0.5 * kl[-2], kl
    else:
        assert abs(slopes[-1] + 2 * sampler.order) < 0.25, slopes


@pytest.mark.slow
def test_sde_third_order_weight_of_diffusers_is_inconsistent():
    """DPMSolverSinglestep(3, "sde-dpmsolver++", "heun"): with diffusers' D2 weight the law does not converge (KL ~ 4
    at N = 96 and 192); with the exponential integrator's weight it does (order 1)."""
    ns = (96, 192)
    broken = _kl_vs_n(gdj.DPMSolverSinglestep(3, "sde-dpmsolver++", "heun", lower_order_final=False), ns)
    fixed = _kl_vs_n(gdj.DPMSolverSinglestep(3, "sde-dpmsolver++", "heun", lower_order_final=False,
                                             sde_third_order="correct"), ns)
    assert np.all(broken > 1.0) and broken[1] > broken[0]
    assert fixed[1] < 0.4 * fixed[0] and fixed[1] < 1e-2


GRADIENT_CASES = [pytest.param(name, marks=SLOW) for name in
                  ("kdpm2-ancestral", "edm-heun-churn", "diffusers-edm-euler", "flow-heun", "dpmpp-3s-sde")]
GRADIENT_CASES.append("euler-ancestral-eta")


@pytest.mark.parametrize("name", GRADIENT_CASES)
def test_gradients_match_finite_differences(name):
    """d W2^2 / d(grid times) and d / d(beta_max) against central differences (grid ending at the clean point)."""
    sampler = ALL[name]
    source = gdj.GaussianSource(jnp.asarray(LAM3), mean=jnp.asarray([0.2, -0.4, 1.0]))
    ts0 = jnp.asarray(np.concatenate([np.linspace(0.95, 0.05, 8), [0.0]]))

    def loss(ts, beta_max):
        law = gdj.sample_law(source, gdj.LinearBeta(beta_max=beta_max), sampler, ts)
        return gdj.w2_squared(source, law, target="data")

    g_ts, g_beta = jax.grad(loss, argnums=(0, 1))(ts0, 20.0)
    assert np.all(np.isfinite(np.asarray(g_ts))) and np.isfinite(float(g_beta))
    eps = 1e-6
    for i in (1, 4, 7):
        e = jnp.zeros_like(ts0).at[i].set(eps)
        fd = (loss(ts0 + e, 20.0) - loss(ts0 - e, 20.0)) / (2 * eps)
        assert abs(float(g_ts[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (i, g_ts[i], fd)
    fd = (loss(ts0, 20.0 + eps) - loss(ts0, 20.0 - eps)) / (2 * eps)
    assert abs(float(g_beta) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (g_beta, fd)


FLOAT32 = {
    "kdpm2": gdj.KDPM2(),
    "kdpm2-ancestral": gdj.KDPM2(eta=1.0),
    "edm-heun-churn": gdj.EDMStochastic(s_churn=10.0, s_tmin=0.05, s_tmax=50.0),
    "diffusers-edm-euler": gdj.EDMStochastic(s_churn=10.0, solver="euler", churn_input="pre_churn", sigma_data=0.5),
    "euler-ancestral": gdj.EulerAncestral(),
    "flow-heun": gdj.FlowMatchHeun(),
    "flow-euler-stochastic": gdj.FlowMatchEuler(stochastic_sampling=True),
    "dpmpp-3s": gdj.DPMSolverSinglestep(3),
    "dpm-2s": gdj.DPMSolverSinglestep(2, "dpmsolver"),
    "dpmpp-2s-sde": gdj.DPMSolverSinglestep(2, "sde-dpmsolver++"),
}
# Where the bar of 1e-3 does not hold, and why (see the samplers' docstrings):
FLOAT32_EXCEPTIONS = {
    ("kdpm2-ancestral", 1): None,  # one ancestral step across the range: midpoint far below sigma', not resolved
    ("edm-heun-churn", 10000): 3e-3,  # churn levels within gamma = 1e-3 of a grid level: abar differences off the grid
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOAT32))
def test_float32_matches_float64(name):
    """The bar of test_float32.py: 1e-3 relative, N = 1 .. 10^4, both KL directions and W2, CIFAR-10 and a
    1e-6..1e6 spectrum with a mean, uniform grids in t from 1 (sigma = 152) to 1e-3 (exceptions listed above;
    measured: every other cell within 6e-5, most within 1e-5)."""
    exceptions = {n: bar for (key, n), bar in FLOAT32_EXCEPTIONS.items() if key == name}
    assert_float32_matches_float64(
        FLOAT32[name], skip=[n for n, bar in exceptions.items() if bar is None],
        bars={n: bar for n, bar in exceptions.items() if bar is not None},
    )


@pytest.mark.parametrize("sampler", [gdj.FlowMatchHeun(), gdj.EulerAncestral(eta=0.5), gdj.DPMSolverSinglestep(3)])
def test_simulate_runs_the_combinations(sampler):
    """gdj.simulate runs grid-only samplers' combinations on particles (here: a Gaussian, so its law is known);
    samplers with levels between grid points (KDPM2, EDMStochastic) are refused with a reason."""
    schedule, ts = gdj.LinearBeta(), jnp.linspace(0.9, 0.0, 7)
    lam, m = jnp.asarray([0.3, 2.0]), jnp.asarray([0.5, -1.0])
    score = gdj.linear_score(m, jnp.diag(lam), schedule)
    x = np.asarray(gdj.simulate(sampler, schedule, ts, score, jax.random.PRNGKey(0), 40_000, dim=2))
    law = gdj.sample_law(gdj.GaussianSource(lam, mean=m), schedule, sampler, ts)
    mean, var = np.asarray(law.mean_multiplier * m), np.asarray(law.variance)
    z_mean = (x.mean(0) - mean) / np.sqrt(var / len(x))
    z_var = (x.var(0) - var) / (var * np.sqrt(2 / len(x)))
    assert np.max(np.abs(np.concatenate([z_mean, z_var]))) < Z_MAX
    if isinstance(sampler, gdj.FlowMatchHeun):
        with pytest.raises(ValueError, match="between grid points"):
            gdj.simulate(gdj.KDPM2(), schedule, ts, score, jax.random.PRNGKey(0), 10, dim=2)
