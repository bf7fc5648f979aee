"""Samplers added for diffusers parity: `DDIMStep` (DDIM as a combination), `Relabeled` (steps that land off the
grid, diffusers' DDIM/PNDM stride), `Truncated` (dropped identity final steps) and `DiffusersSDEDPMSolver3M`.

- `DDIMStep` equals `DDIM` (float64, 1e-12); `Relabeled` with landing = next grid point is its inner sampler;
- Monte Carlo of the literal rule (numpy float64, dense exact score, random rotation, nonzero mean; written from
  diffusers' `DDIMScheduler.step`: x0 and eps predictions at the evaluated level, landing at t - T // N), 100k
  samples, z-scores < 5;
- stated residuals against the computed weight sums (float64, random grids);
- `Truncated(DPMSolverMultistep(2), 1)` on a grid that does not end clean is `lower_order_final=False` there;
- `DiffusersSDEDPMSolver3M` differs from the published weight by exactly -alpha_t D2 (its means agree);
- float32 vs float64; gradients against finite differences; the registry.
(Against diffusers' own loops: tests/test_diffusers_parity.py.)
"""

import math

import _mc
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj
from gaussdiff_jax._core._multistep import _weights
from gaussdiff_jax._sampler._multistep import Level, StepInfo

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

LAM = np.array([1e-4, 0.03, 0.4, 1.0, 5.0, 50.0])
MEAN = np.array([0.3, 0.5, -1.0, 0.25, 2.0, -0.7])
TABLE = gdj.Discrete.from_diffusers("scaled_linear")
T = 1000


def _law(sampler, ts, schedule=TABLE, init="standard", lam=LAM, mean=MEAN):
    return gdj.sample_law(gdj.GaussianSource(lam, mean=mean), schedule, sampler, jnp.asarray(ts), init=init)


def _ddim_linspace(n):
    """DDIMScheduler with timestep_spacing='linspace': indices and where each step lands (t - T // n)."""
    idx = np.linspace(0, T - 1, n).round()[::-1].astype(int)
    land = idx - T // n
    ts = np.append((idx + 1.0) / T, 0.0)
    return ts, np.where(land >= 0, (land + 1.0) / T, 0.0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("init", ["standard", "exact", 0.3])
def test_ddim_step_is_ddim(eta, init):
    ts = np.append(np.sort(np.random.default_rng(3).uniform(0.001, 1.0, 9))[::-1], 0.0)
    a, b = _law(gdj.DDIMStep(eta), ts, init=init), _law(gdj.DDIM(eta), ts, init=init)
    np.testing.assert_allclose(a.mean_multiplier, b.mean_multiplier, rtol=1e-12)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)
    c = _law(gdj.Relabeled(gdj.DDIMStep(eta), ts[1:]), ts, init=init)
    np.testing.assert_allclose(c.variance, b.variance, rtol=1e-12)


def _literal_ddim_landing(problem, ts, land, eta, x, rng):
    """diffusers' DDIMScheduler.step, literally, in full coordinates: the model at the grid level, landing elsewhere."""
    for k in range(len(ts) - 1):
        ab = float(TABLE.alpha_bar(ts[k]))
        ab_prev = float(TABLE.alpha_bar(land[k]))
        eps = -math.sqrt(1 - ab) * problem.score(x, ab)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        std = eta * math.sqrt(var)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev - std**2) * eps + std * rng.standard_normal(x.shape)
    return x


@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_relabeled_monte_carlo_full_coordinates(eta):
    rng = np.random.default_rng(5)
    problem = _mc.random_problem(rng, np.array([0.05, 0.7, 2.5]))
    ts, land = _ddim_linspace(6)
    x = _literal_ddim_landing(problem, ts, land, eta, rng.standard_normal((100_000, 3)), rng)
    law = _law(gdj.Relabeled(gdj.DDIMStep(eta), land), ts, lam=problem.lam, mean=problem.mean_coordinates)
    mean = problem.U @ (np.asarray(law.mean_multiplier) * problem.mean_coordinates)
    cov = (problem.U * np.asarray(law.variance)) @ problem.U.T
    z = _mc.all_z_scores(x, mean, cov)
    assert np.max(np.abs(z)) < 5.0, z
    # ... and relabelling matters: the law differs from DDIM on the same grid
    plain = _law(gdj.DDIMStep(eta), ts, lam=problem.lam, mean=problem.mean_coordinates)
    assert np.max(np.abs(np.asarray(plain.variance) / np.asarray(law.variance) - 1)) > 1e-2


def _check_residuals(sampler, schedule, ts):
    """Each write's stated residuals equal its total weights' sums minus the new level's alpha / sigma."""
    s = sampler.num_slots
    levels = [Level.at(schedule, ts[0])] * s
    state = sampler.init(schedule, ts[0])
    n = len(ts) - 1
    for k in range(n):
        writes, state = sampler.step(
            schedule, tuple(levels), Level.at(schedule, ts[k + 1]), state, StepInfo(jnp.asarray(k), jnp.asarray(n))
        )
        for target, cmb in writes:
            A, S = _weights(cmb, levels, s)
            assert abs(float(sum(A) - cmb.level.alpha - cmb.data_residual)) < 1e-12
            assert abs(float(sum(S) - cmb.level.sigma - cmb.noise_residual)) < 1e-12
            levels = [cmb.level] + levels[:-1] if target is None else [
                cmb.level if j == target else lv for j, lv in enumerate(levels)
            ]


@pytest.mark.parametrize(
    "make",
    [
        lambda ts, land: gdj.DDIMStep(0.7),
        lambda ts, land: gdj.Relabeled(gdj.DDIMStep(0.4), land),
        lambda ts, land: gdj.Relabeled(gdj.DPMSolverMultistep(2), land),
        lambda ts, land: gdj.Truncated(gdj.DPMSolverMultistep(3), 1),
        lambda ts, land: gdj.DiffusersSDEDPMSolver3M(),
    ],
)
def test_stated_residuals(make):
    rng = np.random.default_rng(8)
    for _ in range(3):
        ts = np.append(np.sort(rng.uniform(0.002, 1.0, 7))[::-1], 0.0)
        land = np.append(ts[1:-1] + rng.uniform(-1e-3, 1e-3, 6), 0.0)
        _check_residuals(make(ts, land), TABLE, jnp.asarray(ts))


def test_truncated_keeps_the_pipeline_step_count():
    """With a final level above 0 and N < 15, DPM-Solver's last step is first order; told one more step (the dropped
    identity), it is a full second-order step: lower_order_final=False on this grid."""
    ts = np.append(np.linspace(1.0, 0.1, 8), 0.05)
    a = _law(gdj.Truncated(gdj.DPMSolverMultistep(2), 1), ts)
    b = _law(gdj.DPMSolverMultistep(2, lower_order_final=False), ts)
    c = _law(gdj.DPMSolverMultistep(2), ts)
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-12)
    assert np.max(np.abs(np.asarray(a.variance) / np.asarray(c.variance) - 1)) > 1e-6


def test_diffusers_sde_3m_is_the_published_one_minus_alpha_d2():
    """diffusers' SDE-DPM-Solver++(3M) adds -alpha_t D2 on third-order steps: same means (D2 of the mean is 0),
    different variances; on 2 steps (no third-order step) identical."""
    ts = np.append(np.linspace(1.0, 0.05, 12), 0.0)
    ours = _law(gdj.DiffusersSDEDPMSolver3M(), ts)
    published = _law(gdj.DPMSolverMultistep(3, "sde-dpmsolver++"), ts)
    np.testing.assert_allclose(ours.mean_multiplier, published.mean_multiplier, rtol=1e-12)
    assert np.max(np.abs(np.asarray(ours.variance) / np.asarray(published.variance) - 1)) > 1e-3
    short = np.array([1.0, 0.5, 0.0])
    np.testing.assert_allclose(_law(gdj.DiffusersSDEDPMSolver3M(), short).variance,
                               _law(gdj.DPMSolverMultistep(3, "sde-dpmsolver++"), short).variance, rtol=1e-12)


@pytest.mark.parametrize(
    "sampler",
    [gdj.DDIMStep(0.5), gdj.Relabeled(gdj.DDIMStep(0.0), _ddim_linspace(50)[1]), gdj.DiffusersSDEDPMSolver3M()],
    ids=["ddim-step", "relabeled", "sde-3m-diffusers"],
)
def test_float32_matches_float64(sampler):
    ts64 = _ddim_linspace(50)[0]
    lam = np.geomspace(1e-4, 1e3, 40)
    src = gdj.GaussianSource(lam, mean=np.linspace(-1, 1, 40))
    out = []
    for dtype in (jnp.float32, jnp.float64):
        s = gdj.cast(src, dtype)
        law = gdj.sample_law(s, gdj.cast(TABLE, dtype), gdj.cast(sampler, dtype), jnp.asarray(ts64, dtype=dtype))
        out.append(np.asarray([gdj.kl(s, law, target="data"), gdj.w2(s, law, target="data")], dtype=np.float64))
    assert np.all(np.isfinite(out[0]))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-3)


def test_gradients_match_finite_differences():
    """On a smooth schedule (a Discrete table's log-SNR has kinks at its knots): grid times and landing times."""
    ts0 = np.append(np.linspace(0.99, 0.1, 8), 0.0)
    land = np.append(ts0[1:-1] + 0.03, 0.0)
    src = gdj.GaussianSource(jnp.asarray([0.05, 0.7, 2.5]), mean=jnp.asarray([0.2, -0.4, 1.0]))

    def loss(ts, landing):
        law = gdj.sample_law(src, gdj.LinearBeta(), gdj.Relabeled(gdj.DDIMStep(0.3), landing), ts)
        return gdj.w2_squared(src, law, target="data")

    g_ts, g_land = jax.grad(loss, argnums=(0, 1))(jnp.asarray(ts0), jnp.asarray(land))
    eps = 1e-6
    for i in (1, 3, 6):
        for arr, grad, which in ((ts0, g_ts, 0), (land, g_land, 1)):
            e = np.zeros_like(arr)
            e[i] = eps
            args = [jnp.asarray(ts0), jnp.asarray(land)]
            plus, minus = list(args), list(args)
            plus[which], minus[which] = jnp.asarray(arr + e), jnp.asarray(arr - e)
            fd = (loss(*plus) - loss(*minus)) / (2 * eps)
            assert abs(float(grad[i]) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd))), (which, i, grad[i], fd)


def test_registry_and_errors():
    assert gdj.samplers.name_of(gdj.samplers.make("ddim-step", eta=0.5)) == "ddim-step"
    assert gdj.samplers.name_of(gdj.samplers.make("dpmpp-3m-sde-diffusers")) == "dpmpp-3m-sde-diffusers"
    assert gdj.DiffusersSDEDPMSolver3M().order == 1 and not gdj.DiffusersSDEDPMSolver3M().is_deterministic
    r = gdj.Relabeled(gdj.DDIMStep(0.0), [0.5])
    assert r.is_deterministic and r.num_slots == 1 and r.evaluations_per_step == 1
    with pytest.raises(ValueError, match="multistep sampler"):
        gdj.Relabeled(gdj.DDIM(), [0.5])
    with pytest.raises(ValueError, match="eta"):
        gdj.DDIMStep(1.5)
    with pytest.raises(ValueError, match="multistep sampler"):
        gdj.Truncated(gdj.DDIM(), 1)
