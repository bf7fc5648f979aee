r"""The multistep engine (per-mode state vector) and DPM-Solver(++), proven independently.

- Monte Carlo of the literal sampler in full coordinates (`_mc_multistep`, numpy float64, dense exact
  score, random rotation, nonzero mean), z-scored against the claimed law; also with a synthetic imperfect
  denoiser (independent Gaussian error at each evaluation) against `sample_law(..., model_error=...)`, where
  multistep samplers reuse an evaluation in two steps (the correlation the engine must carry).
- An independent per-mode float64 recursion of the same update rules (values to 1e-12).
- float32 vs float64 on CIFAR-10 and a 1e-6..1e6 spectrum for N = 1..10^4 (the bar of `test_float32.py`).
- Convergence orders on refined grids; gradients against finite differences; padded step counts and
  checkpointing give identical values.
"""

import math

import _mc
import _mc_multistep
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_float32 import assert_float32_matches_float64

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # long float32 / optimization runs: the full suite only (`-m "not slow"` skips them)

LAM = np.array([0.05, 0.7, 2.5])
Z_MAX = 5.0
DISCRETE = gdj.Discrete.from_diffusers("linear")
TABLE = np.asarray(DISCRETE.alphas_cumprod)


def _grid(n: int, clean: bool = True):
    """diffusers' default spacing for DPMSolverMultistepScheduler: round(linspace(0, T-1, n+1))[::-1][:-1]."""
    idx = np.round(np.linspace(0, 999, n + 1)).astype(int)[::-1][:-1]
    ts = (idx + 1) / 1000.0
    if clean:
        return np.concatenate([ts, [0.0]]), np.concatenate([TABLE[idx], [1.0]])
    return ts, TABLE[idx]


def _reference_law(lam, m, abars, order, algorithm, init):
    """Per-mode recursion of the literal rules (numpy float64): the mean and the gain on the initial state."""
    problem = _mc.Problem(U=np.eye(len(lam)), lam=np.asarray(lam), mu=np.asarray(m))
    model = _mc_multistep.noisy_denoiser(problem)
    rng = np.random.default_rng(0)
    run = lambda x: _mc_multistep.dpm_solver_multistep(model, abars, x, rng, order=order, algorithm=algorithm)
    x0 = np.zeros((1, len(lam))) if init == "standard" else math.sqrt(abars[0]) * np.asarray(m)[None]
    offset = run(x0)[0]
    gain = run(x0 + 1.0)[0] - offset
    start_var = 1.0 if init == "standard" else abars[0] * lam + 1 - abars[0]
    return offset / np.asarray(m), gain**2 * start_var


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("algorithm", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize("n", [3, 8, 20])
def test_deterministic_matches_independent_recursion(order, algorithm, n):
    if order == 3:
        pytest.skip("the literal reference implements orders 1-2 (order 3 is checked against diffusers)")
    lam = np.array([1e-4, 0.02, 0.6, 3.0, 50.0])
    m = np.array([0.3, -1.0, 0.5, 2.0, -0.7])
    ts, abars = _grid(n, clean=algorithm.endswith("++"))
    g_ref, v_ref = _reference_law(lam, m, abars, order, algorithm, "standard")
    sampler = gdj.DPMSolverMultistep(solver_order=order, algorithm=algorithm)
    law = gdj.sample_law(gdj.GaussianSource(lam, mean=m), DISCRETE, sampler, jnp.asarray(ts))
    np.testing.assert_allclose(law.mean_multiplier, g_ref, rtol=1e-11)
    np.testing.assert_allclose(law.variance, v_ref, rtol=1e-10)


def _z_scores(samples, problem, law):
    mean = problem.U @ (np.asarray(law.mean_multiplier) * problem.mean_coordinates)
    cov = (problem.U * np.asarray(law.variance)) @ problem.U.T
    return _mc.all_z_scores(samples, mean, cov)


@pytest.mark.parametrize(
    "sampler,algorithm,order",
    [
        (gdj.DPMSolverMultistep(2), "dpmsolver++", 2),
        (gdj.DPMSolverMultistep(2, "sde-dpmsolver++"), "sde-dpmsolver++", 2),
        (gdj.DPMSolverMultistep(2, "dpmsolver"), "dpmsolver", 2),
    ],
)
def test_monte_carlo_full_coordinates(sampler, algorithm, order):
    rng = np.random.default_rng(11)
    problem = _mc.random_problem(rng, LAM)
    ts, abars = _grid(7, clean=algorithm.endswith("++"))
    model = _mc_multistep.noisy_denoiser(problem)
    x = rng.standard_normal((100_000, 3))
    out = _mc_multistep.dpm_solver_multistep(model, abars, x, rng, order=order, algorithm=algorithm)
    law = gdj.sample_law(gdj.GaussianSource(LAM, mean=problem.mean_coordinates), DISCRETE, sampler, jnp.asarray(ts))
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))


def _error_profile(levels_log_snr, moments):
    return gdj.ErrorProfile(jnp.asarray(levels_log_snr), jnp.asarray(moments))


@pytest.mark.parametrize("sampler,algorithm", [
    (gdj.DDIM(), None),
    (gdj.DPMSolverMultistep(2), "dpmsolver++"),
    (gdj.DPMSolverMultistep(2, "sde-dpmsolver++"), "sde-dpmsolver++"),
])
def test_model_error_propagation_monte_carlo(sampler, algorithm):
    """A synthetic imperfect denoiser: exact posterior mean plus an independent N(0, U diag(s^2) U^T) error at
    every evaluation, s^2 piecewise linear in log-SNR. The claimed law must hold (z-test); the error must matter
    (the law without it is rejected)."""
    rng = np.random.default_rng(5)
    problem = _mc.random_problem(rng, LAM)
    ts, abars = _grid(6)
    model = _mc_multistep.piecewise_error_denoiser(problem, rng)
    x = rng.standard_normal((100_000, 3))
    if algorithm is None:  # DDIM literal: x' = sqrt(abar') D + sqrt(1 - abar') eps_hat
        for k in range(len(abars) - 1):
            a, s, a_n = math.sqrt(abars[k]), math.sqrt(1 - abars[k]), math.sqrt(abars[k + 1])
            D = model(x, abars[k])
            x = a_n * D + math.sqrt(1 - abars[k + 1]) * (x - a * D) / s
    else:
        x = _mc_multistep.dpm_solver_multistep(model, abars, x, rng, order=2, algorithm=algorithm)
    source = gdj.GaussianSource(LAM, mean=problem.mean_coordinates)
    profile = _error_profile(_mc_multistep.ERROR_LOG_SNR, _mc_multistep.ERROR_MOMENTS)
    law = gdj.sample_law(source, DISCRETE, sampler, jnp.asarray(ts), model_error=profile)
    z = _z_scores(x, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))
    exact = gdj.sample_law(source, DISCRETE, sampler, jnp.asarray(ts))
    assert np.max(np.abs(_z_scores(x, problem, exact))) > 10 * Z_MAX


def test_model_error_reuse_is_correlated():
    """DPM-Solver++(2M) uses each evaluation in two steps: treating the two uses as independent errors gives a
    different (wrong) variance, so the engine's carried correlation is not a no-op."""
    lam = jnp.asarray(LAM)
    ts, _ = _grid(6)
    profile = _error_profile(np.array([-10.0, 10.0]), np.full((2, 3), 0.1))
    law = gdj.sample_law(gdj.GaussianSource(lam), DISCRETE, gdj.DPMSolverMultistep(2), jnp.asarray(ts), model_error=profile)
    exact = gdj.sample_law(gdj.GaussianSource(lam), DISCRETE, gdj.DPMSolverMultistep(2), jnp.asarray(ts))
    assert np.all(np.asarray(law.variance) > np.asarray(exact.variance))


FLOAT32_SAMPLERS = {
    "dpmpp-2m": gdj.DPMSolverMultistep(2),
    "dpmpp-3m": gdj.DPMSolverMultistep(3),
    "dpmpp-2m-sde": gdj.DPMSolverMultistep(2, "sde-dpmsolver++"),
    "dpm-2m": gdj.DPMSolverMultistep(2, "dpmsolver"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FLOAT32_SAMPLERS))
def test_float32_matches_float64(name):
    """Same bar as the one-step samplers: 1e-3 relative for N = 1 .. 10^4, both KL directions and W2, on
    CIFAR-10 and a 1e-6..1e6 spectrum with a mean. (N = 1 with noise prediction is a single jump from t = 1,
    where x' = (alpha'/alpha) x - sigma'(e^h - 1) eps_hat cancels two terms of size 150: excluded.)"""
    assert_float32_matches_float64(FLOAT32_SAMPLERS[name], skip=(1,) if name == "dpm-2m" else ())


def _error_vs_n(sampler, ns, schedule, lam):
    """KL(p_tmin || output) from the exact start on a uniform log-SNR grid (smooth in the solvers' variable)."""
    out = []
    for n in ns:
        ell = jnp.linspace(-6.0, 6.0, n + 1)
        ts = gdj.grids.time_of_log_snr(schedule, ell)
        law = gdj.sample_law(gdj.GaussianSource(lam), schedule, sampler, ts, init="exact")
        out.append(float(gdj.kl(gdj.GaussianSource(lam), law, target="truncated")))
    return np.asarray(out)


@pytest.mark.parametrize("solver_order", [1, 2, 3])
def test_convergence_order(solver_order):
    """KL ~ (global error)^2 ~ N^{-2p} with p = `sampler.order` = min(solver_order, 2): the first-order warm-up
    step limits 3M to order 2. Observed slope between N = 80 and 160 within 0.2 of -2p."""
    lam = jnp.asarray([0.03, 0.5, 4.0])
    ns = (40, 80, 160)
    sampler = gdj.DPMSolverMultistep(solver_order=solver_order, lower_order_final=False)
    kl = _error_vs_n(sampler, ns, gdj.LinearBeta(), lam)
    slopes = np.diff(np.log(kl)) / np.diff(np.log(ns))
    assert abs(slopes[-1] + 2 * sampler.order) < 0.2, slopes


def test_gradients_match_finite_differences():
    lam = jnp.asarray([0.05, 0.7, 2.5])
    source = gdj.GaussianSource(lam, mean=jnp.asarray([0.2, -0.4, 1.0]))
    ts0 = jnp.asarray(_grid(8)[0])

    def loss(ts, beta_max):
        law = gdj.sample_law(source, gdj.LinearBeta(beta_max=beta_max), gdj.DPMSolverMultistep(3), ts)
        return gdj.w2_squared(source, law, target="data")

    g_ts, g_beta = jax.grad(loss, argnums=(0, 1))(ts0, 20.0)
    eps = 1e-6
    for i in (1, 4, 7):
        e = jnp.zeros_like(ts0).at[i].set(eps)
        fd = (loss(ts0 + e, 20.0) - loss(ts0 - e, 20.0)) / (2 * eps)
        assert abs(float(g_ts[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (i, g_ts[i], fd)
    fd = (loss(ts0, 20.0 + eps) - loss(ts0, 20.0 - eps)) / (2 * eps)
    assert abs(float(g_beta) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


def test_padded_steps_and_checkpointing_agree_to_rounding():
    """Padding and checkpointing change the compiled program, not the arithmetic: XLA may fuse or reassociate the
    same operations differently (one ulp seen on CI's CPU), nothing more."""
    lam = jnp.asarray([0.01, 0.7, 9.0])
    source = gdj.GaussianSource(lam)
    ts = jnp.asarray(_grid(12)[0])
    sampler = gdj.DPMSolverMultistep(3)
    plain = gdj.sample_law(source, DISCRETE, sampler, ts[:9])
    padded = gdj.sample_law(source, DISCRETE, sampler, ts, num_steps=8)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(padded)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)
    full = gdj.sample_law(source, DISCRETE, sampler, ts)
    checked = gdj.sample_law(source, DISCRETE, sampler, ts, checkpoint=5)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(checked)):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=0)
