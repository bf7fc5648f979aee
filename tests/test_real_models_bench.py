"""Harness pieces of benchmarks/real_models that could be wrong silently (no training, no full benchmark)."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import gaussdiff_jax as gdj
from benchmarks.real_models import data, grids, metrics, predict, sampling


@pytest.fixture(scope="module", params=data.DATASETS)
def patches(request):
    return request.param, data.load_patches(request.param)


def test_patch_shapes_and_ranges(patches):
    name, p = patches
    side = data.patch_size(name)
    d = side * side * (3 if name == "rgb8" else 1)
    assert p.train.dtype == np.uint8 and p.train.shape[1] == d and p.test.shape[1] == d
    assert p.train.shape[0] > 15000 and p.test.shape[0] > 3000
    assert p.shape == ((side, side, 3) if name == "rgb8" else (side, side))
    # The stored patch is the image window at its origin.
    image = data._images(name)[p.test_origin[5, 0]]
    _, i, j = p.test_origin[5]
    np.testing.assert_array_equal(p.test[5], image[i : i + side, j : j + side].reshape(-1))
    x = data.dequantize(p.train[:1000], np.random.default_rng(0))
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    # Dequantization adds U[0, 1)/128: every value lies in its pixel's bin [u/128 - 1, (u+1)/128 - 1] (float32 round-off).
    centre = (p.train[:1000].astype(np.float64) + 0.5) / 128.0 - 1.0
    assert np.max(np.abs(x - centre)) <= 0.5 / 128.0 + 1e-6
    assert np.std((x - centre) * 128.0) == pytest.approx(np.sqrt(1 / 12), rel=0.02)


def test_held_out_split_is_disjoint(patches):
    name, p = patches
    side = data.patch_size(name)
    for image in (0, 1):
        tr = p.train_origin[p.train_origin[:, 0] == image, 1:]
        te = p.test_origin[p.test_origin[:, 0] == image, 1:]
        assert te.shape[0] > 0
        # Chebyshev gap between a held-out and a training window: no shared pixel and >= MARGIN pixels apart.
        for chunk in np.array_split(te, 8):
            gap = np.abs(chunk[:, None, :] - tr[None, :, :]).max(axis=2)
            assert gap.min() >= side + data.MARGIN
    assert not set(map(tuple, p.train_origin)) & set(map(tuple, p.test_origin))


def test_bootstrap_known_answer():
    rng = np.random.default_rng(0)
    n, n_ref = 2000, 1500
    x = rng.standard_normal(n)
    y = x + 0.05 + 0.1 * rng.standard_normal(n)  # paired with x: the difference has sd 0.1
    ref = 2.0 * rng.standard_normal(n_ref)

    def statistic(g, r):
        return {"x": g @ x / g.sum(), "y": g @ y / g.sum(), "ref": r @ ref / r.sum()}

    boot = metrics.bootstrap(statistic, n, n_ref, replicates=400, seed=1)
    assert np.std(boot["x"]) == pytest.approx(np.std(x) / np.sqrt(n), rel=0.15)
    assert np.std(boot["ref"]) == pytest.approx(np.std(ref) / np.sqrt(n_ref), rel=0.15)
    diff = boot["y"] - boot["x"]
    assert np.std(diff) == pytest.approx(np.std(y - x) / np.sqrt(n), rel=0.15)  # paired: sd 0.1/sqrt(n), not 1.4/sqrt(n)
    iv = metrics.interval(float(np.mean(y - x)), diff)
    assert 0.0 < iv.low < 0.05 < iv.high
    # counts are resamples of n indices
    counts = metrics.resampling_counts(n, 3, rng)
    assert counts.shape == (3, n) and np.all(counts.sum(axis=1) == n)


def test_frechet_matches_scipy():
    rng = np.random.default_rng(0)
    d = 7
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert metrics.frechet(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # Commuting pair: sum of (sqrt a - sqrt b)^2.
    va, vb = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    assert metrics.frechet(mu1, np.diag(va), mu1, np.diag(vb)) == pytest.approx(np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2))
    # moments with all-ones counts = plain mean / covariance
    x = rng.standard_normal((50, d))
    mu, cov = metrics.moments(x, np.ones(50, dtype=np.int64))
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False))


def _toy_fit(d=6, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.array([2e-3, 0.02, 0.1, 0.5, 1.0, 3.0])[:d]
    return data.GaussianFit(0.3 * rng.standard_normal(d), lam, q)


def test_reference_path_error_is_zero_for_itself():
    fit = _toy_fit()
    den = sampling.gaussian_denoiser(fit)
    lat = sampling.lattice("discrete")
    x = np.random.default_rng(1).standard_normal((64, 6))
    ref = sampling.ddim(den, x, sampling.all_steps(), lat)
    again = sampling.ddim(den, x, sampling.all_steps(), lat)
    assert np.all(metrics.path_sq(again, ref) == 0.0)
    other = sampling.ddim(den, x, np.array([999, 500, 100]), lat)
    assert np.all(metrics.path_sq(other, ref) > 0.0)


@pytest.mark.parametrize("kind", ["discrete", "flow"])
def test_ddim_loop_matches_sample_law(kind):
    """The literal DDIM loop with the exact Gaussian denoiser vs the closed-form law (Monte Carlo z-test)."""
    fit = _toy_fit()
    lat = sampling.lattice(kind)
    steps = np.array([999, 700, 400, 120, 15])
    n = 100_000
    x = np.random.default_rng(2).standard_normal((n, 6))
    out = sampling.ddim(sampling.gaussian_denoiser(fit), x, steps, lat)
    coords = out @ fit.eigenvectors
    m = fit.eigenvectors.T @ fit.mean
    src = gdj.GaussianSource(jnp.asarray(fit.eigenvalues), mean=jnp.asarray(m))
    law = gdj.sample_law(src, lat.schedule, gdj.DDIM(), jnp.asarray(sampling.times_of(steps)), init="standard")
    g, v = np.asarray(law.mean_multiplier), np.asarray(law.variance)
    z_mean = (coords.mean(0) - g * m) / np.sqrt(v / n)
    z_var = (coords.var(0) - v) / (v * np.sqrt(2.0 / n))
    assert np.all(np.abs(z_mean) < 4.5) and np.all(np.abs(z_var) < 4.5)
    # The propagation of `predict` with zero error is the same law.
    prop = predict.propagate(fit.eigenvalues, m, lat.abar[steps])
    np.testing.assert_allclose(m + prop.mean_gap, g * m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(prop.variance, v, rtol=1e-9)


def test_error_injection_matches_monte_carlo():
    """`predict.propagate` with per-step denoiser errors vs the literal loop with those errors added to x0_hat."""
    fit = _toy_fit()
    lat = sampling.lattice("discrete")
    steps = np.array([999, 600, 250, 40])
    rng = np.random.default_rng(3)
    bias = 0.05 * rng.standard_normal((4, 6))
    second = bias**2 + rng.uniform(0.001, 0.02, (4, 6))
    n = 100_000
    x = rng.standard_normal((n, 6))
    gauss = sampling.gaussian_denoiser(fit)
    U = fit.eigenvectors
    a = np.concatenate([lat.abar[steps], [1.0]])
    for k in range(4):  # the DDIM step written out, with the error in x0_hat
        err = (bias[k] + np.sqrt(second[k] - bias[k] ** 2) * rng.standard_normal((n, 6))) @ U.T
        d = np.asarray(gauss(jnp.asarray(x), jnp.asarray(a[k]), 0.0)) + err
        eps = (x - np.sqrt(a[k]) * d) / np.sqrt(1 - a[k])
        x = np.sqrt(a[k + 1]) * d + np.sqrt(1 - a[k + 1]) * eps
    coords = x @ U
    m = U.T @ fit.mean
    prop = predict.propagate(fit.eigenvalues, m, lat.abar[steps], bias, second)
    z_mean = (coords.mean(0) - (m + prop.mean_gap)) / np.sqrt(prop.variance / n)
    z_var = (coords.var(0) - prop.variance) / (prop.variance * np.sqrt(2.0 / n))
    assert np.all(np.abs(z_mean) < 4.5) and np.all(np.abs(z_var) < 4.5)


def test_random_features_fixed_and_standardized():
    x = np.random.default_rng(0).uniform(-1, 1, (300, 192)).astype(np.float32)
    f1 = metrics.RandomFeatures((8, 8, 3), seed=0).fit(x)
    f2 = metrics.RandomFeatures((8, 8, 3), seed=0).fit(x)
    np.testing.assert_array_equal(f1(x[:10]), f2(x[:10]))
    feats = f1(x)
    assert feats.shape == (300, 128)
    np.testing.assert_allclose(feats.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(feats.std(0), 1.0, rtol=1e-3)


@pytest.mark.parametrize("kind", ["discrete", "flow"])
def test_spacing_candidates_are_integer_grids(kind):
    lat = sampling.lattice(kind)
    for name in grids.BASELINES:
        for nfe in (4, 20):
            steps = grids.CANDIDATES[name](lat, nfe)
            assert steps.shape == (nfe,)
            sampling.check_steps(steps)  # strictly descending integers in [0, T)
    np.testing.assert_array_equal(grids.CANDIDATES["leading"](lat, 4), [750, 500, 250, 0])
    np.testing.assert_array_equal(grids.CANDIDATES["trailing"](lat, 4), [999, 749, 499, 249])


def test_descend_finds_separable_minimum():
    target = np.array([900, 610, 333, 120, 7])

    def objective(batch):
        return np.sum((batch - target) ** 2, axis=1).astype(np.float64)

    np.testing.assert_array_equal(grids.descend(objective, np.array([999, 749, 499, 249, 0])), target)


def test_path_prediction_matches_monte_carlo():
    """Exact-denoiser path error between two grids (different first steps) from the same noise vs the literal loop.

    A large mean makes the standard-init mean offset (which differs between the grids' first steps) matter: leaving
    it out of the prediction is ~6 standard errors off here."""
    fit = _toy_fit()
    fit = fit._replace(mean=10 * fit.mean)
    lat = sampling.lattice("discrete")
    m = fit.eigenvectors.T @ fit.mean
    grid, ref_grid = np.array([760, 500, 200, 30]), np.arange(999, -1, -7)[:143]
    x = np.random.default_rng(4).standard_normal((20_000, 6))
    den = sampling.gaussian_denoiser(fit)
    diff = sampling.ddim(den, x, grid, lat) - sampling.ddim(den, x, ref_grid, lat)
    per_sample = np.mean(diff**2, axis=1)
    prop = predict.propagate(fit.eigenvalues, m, lat.abar[grid])
    ref = predict.propagate(fit.eigenvalues, m, lat.abar[ref_grid])
    predicted = predict.path_prediction(prop, ref, 6) ** 2
    assert abs(per_sample.mean() - predicted) < 4.5 * per_sample.std() / np.sqrt(per_sample.size)


def _toy_context(kind="discrete", raw_network=None):
    fit = _toy_fit()
    lat = sampling.lattice(kind)
    mctx = predict.make_model_context(fit.eigenvalues, fit.eigenvectors.T @ fit.mean, lat.abar)
    return grids.Context("toy", "toy", "exact", lat, fit, mctx, sampling.gaussian_denoiser(fit), raw_network, None)


@pytest.mark.skipif(not hasattr(gdj, "select_timesteps"), reason="the toolkit has no select_timesteps")
def test_select_candidate_beats_every_fixed_spacing_in_exact_w2():
    """`select` (gdj.select_timesteps without a network) minimizes the exact-denoiser W2: under the harness's own numpy
    recursion (`predict.model_values`, independent of the toolkit's engine) it is no worse than any fixed spacing."""
    ctx = _toy_context()
    nfe = 6
    chosen = grids.CANDIDATES["select"](ctx, nfe)
    assert chosen.shape == (nfe,)
    sampling.check_steps(chosen)
    fixed = np.stack([grids.CANDIDATES[name](ctx, nfe) for name in grids.BASELINES])
    w2_fixed = predict.model_values(ctx.model, fixed, with_error=False)["w2"]
    w2_chosen = predict.model_values(ctx.model, chosen[None], with_error=False)["w2"][0]
    assert w2_chosen < w2_fixed.min()
    # An integer local minimum (the first step is free too, as in select_timesteps' closed form): no +-1 move of
    # any step, the first included, helps.
    moves = []
    for k in range(nfe):
        for m in (-1, 1):
            g = chosen.copy()
            g[k] += m
            if np.all(np.diff(g) < 0) and g[-1] >= 0 and g[0] <= 999:
                moves.append(g)
    w2_moves = predict.model_values(ctx.model, np.stack(moves), with_error=False)["w2"]
    assert np.all(w2_moves >= w2_chosen * (1 - 1e-9))


@pytest.mark.skipif(not hasattr(gdj, "select_timesteps"), reason="the toolkit has no select_timesteps")
def test_select_candidates_skipped_where_they_do_not_apply():
    """No network (Gaussian control) or a non-Discrete lattice (flow): skipped with the reason, not a wrong grid."""
    built, skipped = grids.build_all(_toy_context(), 4, ["select_net"])
    assert not built and "no network" in skipped["select_net"]
    flow = _toy_context("flow", raw_network=lambda x, steps: x)
    built, skipped = grids.build_all(flow, 4, ["select", "select_net"])
    assert not built and all("Discrete" in why for why in skipped.values())
