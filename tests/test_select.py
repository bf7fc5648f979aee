"""`gdj.select_timesteps` and `gdj.measure_error_profile`: valid steps everywhere, the model-aware choice reacts to a
network's error where it is, and bad input gets a clear error. (The error propagation itself is tested against Monte
Carlo of the literal samplers with a synthetic imperfect denoiser in `tests/test_multistep.py`.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

TABLES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _data(n=600, d=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    scales = scale * np.geomspace(1.0, 0.02, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * scales) @ q.T + 0.1


def _gaussian_eps(fit, schedule, error=None):
    """The exact Gaussian denoiser of `fit` as an eps-prediction network, plus an optional error(t) term."""
    ac = jnp.asarray(schedule.alphas_cumprod)
    mean, lam, U = (jnp.asarray(a) for a in (fit.mean, fit.eigenvalues, fit.eigenvectors))

    def net(x, t):
        ab = ac[t][:, None]
        a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
        D = mean + ((a * lam / (ab * lam + 1 - ab)) * ((x - a * mean) @ U)) @ U.T
        eps = (x - a * D) / s
        return eps if error is None else eps + error(x, t)

    return net


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLES)
def test_valid_integer_steps_for_every_table_and_budget(table):
    schedule = gdj.Discrete.from_diffusers(table)
    source = gdj.GaussianSource(jnp.asarray([0.02, 0.3, 2.0]), mean=jnp.asarray([0.1, -0.2, 0.5]))
    for nfe in range(1, 51):
        # A short integer search: validity does not depend on how far it runs, and 150 full searches take minutes.
        result = gdj.select_timesteps(schedule, gdj.DDIM(), nfe, source=source, max_rounds=3)
        steps = result.timesteps
        assert steps.dtype.kind == "i" and steps.shape == (nfe,), (nfe, steps)
        assert np.all(np.diff(steps) < 0) and steps[0] <= 999 and steps[-1] >= 0, (nfe, steps)
        assert result.ts.shape == (nfe + 1,) and float(result.ts[-1]) == 0.0
        np.testing.assert_allclose(np.asarray(result.ts[:-1]) * 1000 - 1, steps, atol=1e-9)
        best_baseline = min(c.predicted for c in result.candidates if c.name not in ("closed-form", "selected"))
        assert result.predicted <= best_baseline


def test_selection_never_worse_than_candidates_and_table_prints():
    schedule = gdj.Discrete.from_diffusers("linear")
    source = gdj.GaussianSource(jnp.asarray([0.005, 0.1, 0.7, 3.0]))
    result = gdj.select_timesteps(schedule, gdj.DPMSolverMultistep(2), 8, source=source)
    assert result.predicted == min(c.predicted for c in result.candidates)
    text = str(result)
    assert "closed-form" in text and "uniform" in text and str(result.timesteps[0]) in text


def test_error_profile_of_the_exact_denoiser_is_zero():
    schedule = gdj.Discrete.from_diffusers("linear")
    data = _data()
    fit = gdj.fit_gaussian(data)
    profile, _ = gdj.measure_error_profile(_gaussian_eps(fit, schedule), data, schedule, fit=fit, num_levels=12)
    assert float(jnp.max(profile.second_moment)) < 1e-20


def test_error_profile_measures_a_known_error():
    """A network whose x0 error is exactly c * eigenvector_0 (deterministic): second moment c^2 on mode 0, 0 elsewhere."""
    schedule = gdj.Discrete.from_diffusers("linear")
    data = _data()
    fit = gdj.fit_gaussian(data)
    u0 = jnp.asarray(fit.eigenvectors[:, 0])
    ac = jnp.asarray(schedule.alphas_cumprod)

    def error(x, t):  # eps error giving x0 error 0.3 * u0: x0 = (x - s eps)/a
        ab = ac[t][:, None]
        return -0.3 * u0 * jnp.sqrt(ab) / jnp.sqrt(1 - ab) * jnp.ones_like(x)

    profile, _ = gdj.measure_error_profile(_gaussian_eps(fit, schedule, error), data, schedule, fit=fit, num_levels=8)
    moments = np.asarray(profile.second_moment)
    np.testing.assert_allclose(moments[:, 0], 0.09, rtol=1e-8)
    assert np.max(moments[:, 1:]) < 1e-20


def test_model_aware_selection_avoids_the_bad_noise_levels():
    """A network that is exact except at high noise: the model-aware steps start lower than the closed-form ones,
    and the predicted objective improves on every baseline. (Data with variance up to 64, like image pixels in
    [-1, 1] along their top principal direction: starting below step 999 then costs W2, so the closed form does
    not; for unit-variance data 𝒩(0, I) is already p_t at any step and it starts low anyway.)"""
    schedule = gdj.Discrete.from_diffusers("linear")
    data = _data(scale=8.0)
    fit = gdj.fit_gaussian(data)

    def error(x, t):
        return 0.5 * (t[:, None].astype(x.dtype) / 999.0) ** 8 * jnp.sin(3.0 * x)

    net = _gaussian_eps(fit, schedule, error)
    closed = gdj.select_timesteps(schedule, gdj.DDIM(), 8, source=fit.source())
    aware = gdj.select_timesteps(schedule, gdj.DDIM(), 8, denoiser=net, data=data, key=jax.random.key(1))
    assert aware.timesteps[0] < closed.timesteps[0]
    assert aware.candidates[0].name in ("selected", "closed-form")
    assert aware.predicted < min(c.predicted for c in aware.candidates if c.name not in ("selected",))


def test_bad_input_gets_clear_errors():
    schedule = gdj.Discrete.from_diffusers("linear")
    data = _data()
    with pytest.raises(ValueError, match="shape of x"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5, denoiser=lambda x, t: x[:, :2], data=data)
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5, denoiser=lambda x, t: x * jnp.nan, data=data)
    with pytest.raises(ValueError, match="held-out data"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5, denoiser=lambda x, t: x)
    with pytest.raises(ValueError, match="data must"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5, denoiser=lambda x, t: x, data=data[:, 0])
    with pytest.raises(ValueError, match="Discrete"):
        gdj.select_timesteps(gdj.LinearBeta(), gdj.DDIM(), 5, source=gdj.GaussianSource(jnp.ones(3)))
    with pytest.raises(ValueError, match="source"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5)
    with pytest.raises(ValueError, match="modes"):
        gdj.select_timesteps(schedule, gdj.DDIM(), 5, source=gdj.GaussianSource(jnp.ones(3)),
                             denoiser=lambda x, t: x, data=data)


def _cifar():
    return gdj.GaussianSource(gdj.spectra.load("cifar10"))


@pytest.mark.parametrize("sampler", [gdj.DDIM(), gdj.DPMSolverMultistep()], ids=["ddim", "dpm-2m"])
def test_search_on_the_compressed_spectrum_finds_the_full_spectrum_result(sampler, monkeypatch):
    """The integer search ranks grids on the spectrum's quadrature compression (204 of 3072 modes for CIFAR-10):
    the same time steps and value as a search on every mode."""
    from gaussdiff_jax._optimization import _select

    schedule, source = gdj.Discrete.from_diffusers("linear"), _cifar()
    fast = gdj.select_timesteps(schedule, sampler, 10, source=source)
    monkeypatch.setattr(_select, "_search_scorer", lambda src, sch, smp, grids, exact: _select._scorer(src, sch, smp, None))
    full = gdj.select_timesteps(schedule, sampler, 10, source=source)
    np.testing.assert_array_equal(fast.timesteps, full.timesteps)
    assert fast.predicted == full.predicted
    # The reported values are the full spectrum's: equal to a direct evaluation.
    law = gdj.sample_law(source, schedule, sampler, fast.ts)
    np.testing.assert_allclose(fast.predicted, float(gdj.w2(source, law, target="data")), rtol=1e-12)


def test_search_uses_the_full_spectrum_where_the_compression_disagrees(monkeypatch):
    from gaussdiff_jax._optimization import _select

    schedule, source, sampler = gdj.Discrete.from_diffusers("linear"), _cifar(), gdj.DDIM()
    grids = np.stack([np.linspace(1.0, 0.0, 11), np.linspace(0.9, 0.0, 11)])
    exact = _select._scorer(source, schedule, sampler, None)(grids)[0]
    made = []
    original = _select._scorer

    def spy(src, *args):
        scorer = original(src, *args)
        made.append(src.eigenvalues.shape[0])
        return lambda g: (made.append(("scored", src.eigenvalues.shape[0])), scorer(g))[1]

    monkeypatch.setattr(_select, "_scorer", spy)
    chosen = _select._search_scorer(source, schedule, sampler, grids, exact)
    made.clear()
    np.testing.assert_allclose(chosen(grids)[0], exact, rtol=1e-9)
    assert made == [("scored", 204)]  # agrees: the compressed spectrum ranks
    chosen = _select._search_scorer(source, schedule, sampler, grids, exact * (1 + 1e-7))
    made.clear()
    chosen(grids)
    assert made == [("scored", 3072)]  # disagrees beyond 1e-9: every mode
