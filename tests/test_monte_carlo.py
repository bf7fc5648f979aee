r"""Every sampler's closed-form law against Monte Carlo of the literal sampler, in full coordinates.

The simulation (`tests/_mc.py`) is independent of the package: numpy float64, the textbook update
rule of each sampler on the full state $x\in\mathbb R^3$, the exact score with a dense
$\Sigma_t^{-1}$ (random rotation $U$, nonzero mean), its own closed forms of the schedules. The package
gives the per-mode law $(g, v)$; in full coordinates the claim is $\mathcal N(U\mathrm{diag}(g)m,\
U\mathrm{diag}(v)U^\top)$. Each sample mean coordinate and covariance entry is z-scored against that
claim, raw and after whitening by the claimed covariance (which makes the low-variance mode as visible
as the others); with 52 runs x 18 statistics, a false alarm at $|z| \ge 5$ has probability about
$5\cdot10^{-4}$ (and the seeds are fixed, so the test is deterministic).
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import _mc
import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

N_SAMPLES = 100_000
Z_MAX = 5.0
LAM = np.array([0.05, 0.7, 2.5])

SAMPLERS = {
    "EM": (gdj.EulerMaruyama(), _mc.step_euler_maruyama),
    "EI": (gdj.ExponentialIntegrator(), _mc.step_exponential_integrator),
    "DDPM-discrete-beta": (gdj.DDPM(beta="discrete", variance="beta"), _mc.make_ddpm("discrete", "beta")),
    "DDPM-discrete-posterior": (gdj.DDPM(beta="discrete", variance="posterior"), _mc.make_ddpm("discrete", "posterior")),
    "DDPM-linearized-beta": (gdj.DDPM(beta="linearized", variance="beta"), _mc.make_ddpm("linearized", "beta")),
    "DDPM-linearized-posterior": (
        gdj.DDPM(beta="linearized", variance="posterior"),
        _mc.make_ddpm("linearized", "posterior"),
    ),
    "Euler": (gdj.Euler(), _mc.step_euler),
    "Heun": (gdj.Heun(), _mc.step_heun),
    "RK4": (gdj.RK4(), _mc.step_rk4),
    "DDIM-0": (gdj.DDIM(eta=0.0), _mc.make_ddim(0.0)),
    "DDIM-0.5": (gdj.DDIM(eta=0.5), _mc.make_ddim(0.5)),
    "DDIM-1": (gdj.DDIM(eta=1.0), _mc.make_ddim(1.0)),
    "EDMHeun": (gdj.EDMHeun(), _mc.step_edm_heun),
}


def _linear_beta_grid():
    """Linear beta from t0 = 1 down to t_min = 0 (so EDMHeun takes its sigma' = 0 Euler step): a sine-warped
    grid with random jitter (steps small near t = 1, where beta is large: DDPM-linearized needs h beta < 1)."""
    rng = np.random.default_rng(7)
    n = 20
    u = (np.arange(n + 1) + 0.3 * (rng.random(n + 1) - 0.5)) / n
    u[0], u[-1] = 0.0, 1.0
    return np.sin(0.5 * np.pi * (1 - u))


def _cosine_grid():
    """Cosine(s=0.008) truncated at t0 = 0.9 (beta(1) = inf), down to t_min = 2e-3, quadratic: fine near t0."""
    n = 14
    t0, t_min = 0.9, 2e-3
    return t0 - (t0 - t_min) * (np.arange(n + 1) / n) ** 2


SCHEDULES = {
    "linear_beta": (gdj.LinearBeta(0.1, 20.0), _mc.linear_beta(0.1, 20.0), _linear_beta_grid()),
    "cosine": (gdj.Cosine(s=0.008), _mc.cosine(0.008), _cosine_grid()),
}


@eqx.filter_jit
def _all_laws(source, schedule, samplers, ts):
    # One compilation per schedule for every sampler and both inits (compiles dominate the runtime).
    return {
        name: {init: gdj.sample_law(source, schedule, sampler, ts, init=init) for init in ("standard", "exact")}
        for name, sampler in samplers.items()
    }


def _to_full(problem, law):
    """A per-mode law mapped to full coordinates: mean U diag(g) m, covariance U diag(v) U^T."""
    g, v = np.asarray(law.mean_multiplier), np.asarray(law.variance)
    return problem.U @ (g * problem.mean_coordinates), (problem.U * v) @ problem.U.T


@pytest.fixture(scope="module")
def problem():
    return _mc.random_problem(np.random.default_rng(2024), LAM)


@pytest.fixture(scope="module")
def claimed(problem):
    """The package's laws: claimed[schedule][sampler][init] (per mode)."""
    source = gdj.GaussianSource(problem.lam, mean=problem.mean_coordinates)
    samplers = {name: sampler for name, (sampler, _) in SAMPLERS.items()}
    return {
        name: _all_laws(source, schedule, samplers, jnp.asarray(ts))
        for name, (schedule, _, ts) in SCHEDULES.items()
    }


def test_grids_are_valid_for_every_sampler():
    """Preconditions of the Monte Carlo runs: non-uniform grids, and h beta(t) < 1 for DDPM-linearized."""
    for name, (_, np_sched, ts) in SCHEDULES.items():
        h = -np.diff(ts)
        assert np.all(h > 0), name
        assert h.max() / h.min() > 3, name  # clearly non-uniform
        assert max(hk * np_sched.beta(t) for hk, t in zip(h, ts[:-1])) < 0.9, name


def test_numpy_schedules_match_package():
    """The simulation's re-typed schedules are the package's schedules (alpha_bar and beta)."""
    for name, (schedule, np_sched, ts) in SCHEDULES.items():
        for t in ts:
            np.testing.assert_allclose(float(schedule.alpha_bar(t)), np_sched.alpha_bar(float(t)), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(float(schedule.beta(t)), np_sched.beta(float(t)), rtol=1e-10)


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_law_matches_literal_monte_carlo(problem, claimed, sampler_name, schedule_name):
    _, literal_step = SAMPLERS[sampler_name]
    _, np_sched, ts = SCHEDULES[schedule_name]
    seed = sum(map(ord, sampler_name + schedule_name))  # deterministic, different per run
    for k, init in enumerate(("standard", "exact")):
        rng = np.random.default_rng([seed, k])
        x = _mc.simulate(problem, np_sched, literal_step, ts, init, N_SAMPLES, rng)
        mean, cov = _to_full(problem, claimed[schedule_name][sampler_name][init])
        z = _mc.all_z_scores(x, mean, cov)
        assert np.all(np.abs(z) < Z_MAX), (init, z)


def test_z_test_rejects_a_wrong_law(problem, claimed):
    """Negative control: the same z-test rejects laws that are slightly wrong (power check).

    A 4% error in one mode's variance (about 9 standard errors at n = 1e5), a mean multiplier off by
    0.02 in one mode, or another sampler's law must be flagged; the unperturbed claim from the same
    samples must pass.
    """
    _, np_sched, ts = SCHEDULES["linear_beta"]
    _, literal_step = SAMPLERS["Heun"]
    x = _mc.simulate(problem, np_sched, literal_step, ts, "exact", N_SAMPLES, np.random.default_rng(99))
    m = problem.mean_coordinates
    law = claimed["linear_beta"]["Heun"]["exact"]
    g, v = np.asarray(law.mean_multiplier), np.asarray(law.variance)
    U = problem.U

    def max_z(g, v):
        return np.abs(_mc.all_z_scores(x, U @ (g * m), (U * v) @ U.T)).max()

    assert max_z(g, v) < Z_MAX
    assert max_z(g, v * np.array([1.0, 1.0, 1.04])) > Z_MAX
    assert max_z(g, v * np.array([1.0, 1.04, 1.0])) > Z_MAX
    assert max_z(g + np.array([0.0, 0.0, 0.02]), v) > Z_MAX
    # A neighbouring sampler's law (Euler's, or RK4's, for Heun's samples) is rejected too.
    for other in ("Euler", "RK4"):
        law = claimed["linear_beta"][other]["exact"]
        assert max_z(np.asarray(law.mean_multiplier), np.asarray(law.variance)) > Z_MAX, other
