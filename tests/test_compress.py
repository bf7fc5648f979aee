"""Weighted spectra: exact deduplication, and quadrature compression within its own error estimate."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

SCHEDULE = gdj.LinearBeta()


def _grid(n):
    return jnp.linspace(1.0, 1e-3, n + 1)


def _terms(sampler, ts, target="data"):
    """Per-mode (weighted) contributions of the additive divergences W2^2, KL(target || sample) and
    KL(sample || target), stacked `(3, d)`, as `Compression.evaluate` wants."""

    @eqx.filter_jit
    def per_mode(source):
        law = gdj.sample_law(source, SCHEDULE, sampler, ts)
        return jnp.stack(
            [
                gdj.w2_squared(source, law, target="data", reduce=False),
                gdj.kl(source, law, target=target, reduce=False),
                gdj.kl(source, law, target=target, direction="sample_to_target", reduce=False),
            ]
        )

    return per_mode


def test_deduplicate_is_exact():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.01, 3.0, 40)
    lam = np.concatenate([values, values[:25], values[:5], np.zeros(30)])
    mean = rng.normal(size=lam.size)
    weights = rng.integers(1, 4, lam.size).astype(float)
    full = gdj.GaussianSource(lam, mean, weights)
    merged = gdj.deduplicate(full)
    assert merged.dim == 41  # 40 distinct values and one zero
    np.testing.assert_allclose(merged.num_modes, weights.sum(), rtol=1e-15)
    for sampler in (gdj.EulerMaruyama(), gdj.DDIM(), gdj.Heun()):
        per_mode = _terms(sampler, _grid(20), target="truncated")
        np.testing.assert_allclose(jnp.sum(per_mode(merged), -1), jnp.sum(per_mode(full), -1), rtol=1e-12)


def test_deduplicate_and_compress_errors():
    batch = gdj.GaussianSource(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="single spectrum"):
        gdj.deduplicate(batch)
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda lam: gdj.compress(gdj.GaussianSource(lam)).source.eigenvalues)(jnp.ones(5))
    src = gdj.GaussianSource(jnp.linspace(0.1, 1.0, 100))
    with pytest.raises(ValueError, match="order"):
        gdj.compress(src, order=2)
    with pytest.raises(ValueError, match="bin_width"):
        gdj.compress(src, bin_width=0.0)
    with pytest.raises(ValueError, match="num_bins"):
        gdj.compress(src, num_bins=0)
    with pytest.raises(ValueError, match="dim must be"):
        gdj.compress_power_law(0)
    with pytest.raises(ValueError, match="expected a GaussianSource"):
        gdj.compress(np.ones(5))


def _spectra():
    rng = np.random.default_rng(3)
    cifar = gdj.spectra.load("cifar10_preprint2024")
    power = 2.0 * np.arange(1, 100_001) ** -1.1
    return {
        "cifar10_preprint2024 + mean": gdj.GaussianSource(cifar, mean=0.1 * rng.normal(size=cifar.size)),
        "adsn_fabric": gdj.GaussianSource(gdj.spectra.load("adsn_fabric")),
        "power law 1e5 + mean": gdj.GaussianSource(power, mean=0.05 * rng.normal(size=power.size)),
    }


# SDE samplers and DDIM at coarse and fine grids; explicit ODE solvers on grids where they are stable
# (stiff steps give KL a pole in lambda that no quadrature resolves: see the _compress module docstring).
CASES = [(gdj.EulerMaruyama(), 10), (gdj.DDPM(), 100), (gdj.DDIM(), 10), (gdj.Heun(), 1000)]


@pytest.mark.parametrize("name", list(_spectra()))
def test_compression_error_within_estimate(name):
    full = _spectra()[name]
    compressed = gdj.compress(full)
    assert compressed.num_nodes < 450
    np.testing.assert_allclose(compressed.source.num_modes, full.dim, rtol=1e-14)
    target = "truncated" if bool(np.any(np.asarray(full.eigenvalues) == 0)) else "data"
    worst = 0.0
    for sampler, n in CASES:
        per_mode = _terms(sampler, _grid(n), target)
        exact = np.asarray(jnp.sum(per_mode(full), axis=-1))
        value, estimate = (np.asarray(x) for x in compressed.evaluate(per_mode))
        error = np.abs(value - exact)
        assert np.all(error <= estimate), (type(sampler).__name__, n, error, estimate)
        assert np.all(estimate <= 1e-6 * np.abs(exact))  # the estimate is informative, not vacuous
        worst = max(worst, float(np.max(error / np.abs(exact))))
    assert worst < 1e-8


def test_compressed_power_law_never_formed_matches_exact_1e7():
    d = 10_000_000
    compressed = gdj.compress_power_law(d, exponent=1.2)
    assert compressed.num_nodes < 1000
    np.testing.assert_allclose(compressed.source.num_modes, d, rtol=1e-15)  # integer counts per bin
    full = gdj.GaussianSource(np.arange(1, d + 1, dtype=np.float64) ** -1.2)
    for sampler in (gdj.DDPM(), gdj.DDIM()):
        per_mode = _terms(sampler, _grid(30))
        exact = float(jnp.sum(per_mode(full)[0]))
        value, estimate = (x[0] for x in compressed.evaluate(per_mode))
        # The tail's moments come from an integral over j (Euler-Maclaurin, O(1/head^2) per bin) on top of
        # the quadrature: allow that documented term beside the estimate.
        assert abs(float(value) - exact) <= float(estimate) + 1e-9 * abs(exact)
        assert abs(float(value) - exact) <= 1e-8 * abs(exact)
    huge = gdj.compress_power_law(1e9, exponent=1.0)
    assert huge.num_nodes < 1000
    np.testing.assert_allclose(huge.source.num_modes, 1e9, rtol=1e-15)


def test_float32_compressed_matches_float64():
    full = _spectra()["cifar10_preprint2024 + mean"]
    compressed = gdj.compress(full)
    for sampler in (gdj.DDPM(), gdj.DDIM()):
        ts = _grid(100)
        exact = float(jnp.sum(_terms(sampler, ts)(full)[0]))
        src32 = gdj.cast(compressed.source, jnp.float32)
        got = gdj.w2_squared(
            src32, gdj.sample_law(src32, gdj.cast(SCHEDULE, jnp.float32), sampler, ts.astype(jnp.float32))
        )
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), exact, rtol=1e-4)
