"""Weighted spectra: exact deduplication, and quadrature compression within its own error estimate.

Reference totals are always sums over every mode of the uncompressed spectrum (per-mode terms from
`sample_law`, weights applied). To keep compilations few, the spectra of a test are concatenated into one
weighted source (modes are independent), evaluated once per sampler (grids of 10, 100 and 1000 steps padded
to one shape and vmapped via `num_steps`), and the per-mode terms are split back afterwards.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

SCHEDULE = gdj.LinearBeta()
T_MIN = 1e-3
QUANTITIES = ("W2^2 (data)", "KL(target||sample) (truncated)", "KL(sample||target) (truncated)")


def _cat(sources):
    """One weighted source holding the modes of `sources` (1-D), and the slice of each."""
    lam = jnp.concatenate([s.eigenvalues for s in sources])
    mean = jnp.concatenate([s.mean_or_zero for s in sources])
    weights = jnp.concatenate([jnp.ones(s.dim) if s.weights is None else s.weights for s in sources])
    bounds = np.cumsum([0] + [s.dim for s in sources])
    return gdj.GaussianSource(lam, mean, weights), [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _padded_grids(steps):
    """Uniform grids 1 -> T_MIN with `steps` steps each, padded to the longest (see sample_law's num_steps)."""
    longest = max(steps)
    rows = [np.concatenate([np.linspace(1.0, T_MIN, n + 1), np.full(longest - n, T_MIN)]) for n in steps]
    return jnp.asarray(np.stack(rows)), jnp.asarray(steps)


def _per_mode(sampler, extra=(), schedule=SCHEDULE):
    """Per-mode (weighted) additive terms `(*grids, 3 + len(extra), d)`: W2^2 to the data, KL both
    directions to the truncated target (the data law has exact zeros in ADSN), then `extra` targets for W2^2."""

    @eqx.filter_jit
    def run(source, ts, steps):
        def one(ts, n):
            law = gdj.sample_law(source, schedule, sampler, ts, num_steps=n)
            terms = [
                gdj.w2_squared(source, law, target="data", reduce=False),
                gdj.kl(source, law, target="truncated", reduce=False),
                gdj.kl(source, law, target="truncated", direction="sample_to_target", reduce=False),
            ]
            terms += [gdj.w2_squared(source, law, target=t, reduce=False) for t in extra]
            return jnp.stack(terms)

        return jax.vmap(one)(ts, steps)

    return run


# ----------------------------------------------------------------------------------------------------
# Exact deduplication


def test_deduplicate_is_exact_with_repeats_zeros_means_and_weights():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.01, 3.0, 40)
    lam = np.concatenate([values, values[:25], values[:5], np.zeros(30), values[:3]])
    mean = rng.normal(size=lam.size)
    weights = rng.integers(1, 4, lam.size).astype(float)
    weights[-3:] = 0.0  # zero-weight modes represent nothing and are dropped
    weighted = gdj.GaussianSource(lam, mean, weights)
    # The same law written out mode by mode: weights are multiplicities.
    expanded = gdj.GaussianSource(np.repeat(lam, weights.astype(int)), np.repeat(mean, weights.astype(int)))
    merged = gdj.deduplicate(weighted)
    assert merged.dim == 41  # 40 distinct values and one zero
    assert np.all(np.diff(np.asarray(merged.eigenvalues)) > 0)
    assert float(merged.num_modes) == weights.sum()  # integer weights add exactly
    zero = np.asarray(merged.eigenvalues) == 0
    assert float(merged.weights[zero][0]) == weights[-33:-3].sum()
    np.testing.assert_allclose(  # merged mean energy of the zero group
        float(merged.mean[zero][0]) ** 2 * weights[-33:-3].sum(), np.sum(weights[-33:-3] * mean[-33:-3] ** 2), rtol=1e-14
    )
    # The bundled ADSN spectrum, literally and deduplicated, in the same evaluation.
    adsn = gdj.GaussianSource(gdj.spectra.load("adsn_fabric"))
    adsn_merged = gdj.deduplicate(adsn)
    assert (adsn.dim, adsn_merged.dim, float(adsn_merged.weights[0])) == (196_608, 65_511, 131_072.0)
    source, parts = _cat([weighted, expanded, merged, adsn, adsn_merged])
    ts, steps = _padded_grids([20])
    for sampler in (gdj.EulerMaruyama(), gdj.DDIM(), gdj.Heun()):
        terms = np.asarray(_per_mode(sampler, extra=("truncated",))(source, ts, steps))[0]
        totals = [terms[:, p].sum(-1) for p in parts]
        assert np.all(np.isfinite(totals[0])) and np.all(totals[0] > 0)
        for got in totals[1:3]:
            np.testing.assert_allclose(got, totals[0], rtol=1e-12, err_msg=type(sampler).__name__)
        np.testing.assert_allclose(totals[4], totals[3], rtol=1e-12, err_msg=type(sampler).__name__)


def test_deduplicate_errors():
    with pytest.raises(ValueError, match="single spectrum"):
        gdj.deduplicate(gdj.GaussianSource(jnp.ones((2, 5))))
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda lam: gdj.deduplicate(gdj.GaussianSource(lam)).eigenvalues)(jnp.ones(5))
    with pytest.raises(ValueError, match="every weight is 0"):
        gdj.deduplicate(gdj.GaussianSource(jnp.ones(5), weights=jnp.zeros(5)))
    with pytest.raises(ValueError, match="expected a GaussianSource"):
        gdj.deduplicate(np.ones(5))


# ----------------------------------------------------------------------------------------------------
# Compression: error within its estimate


def _spectra():
    rng = np.random.default_rng(3)
    cifar_pre = gdj.spectra.load("cifar10_preprint2024")
    power = 2.0 * np.arange(1, 30_001) ** -1.1
    return {
        "cifar10": gdj.GaussianSource(gdj.spectra.load("cifar10")),
        "cifar10_preprint2024 + mean": gdj.GaussianSource(cifar_pre, mean=0.1 * rng.normal(size=cifar_pre.size)),
        # Reference over the exactly deduplicated spectrum (test above: equal to all 196 608 modes to 1e-12).
        "adsn_fabric": gdj.deduplicate(gdj.GaussianSource(gdj.spectra.load("adsn_fabric"))),
        "power law 3e4 + mean": gdj.GaussianSource(power, mean=0.05 * rng.normal(size=power.size)),
    }


STEPS = [10, 100, 1000]


@eqx.filter_jit
def _evaluate(compression, node_terms):
    """`Compression.evaluate` on per-mode terms already computed at its nodes (one fused program)."""
    return compression.evaluate(lambda nodes: node_terms)


@pytest.mark.parametrize("sampler", [gdj.EulerMaruyama(), gdj.DDPM(), gdj.Heun(), gdj.DDIM()], ids=type)
def test_compression_error_within_estimate(sampler):
    spectra = _spectra()
    compressed = {name: gdj.compress(full) for name, full in spectra.items()}
    for name, comp in compressed.items():
        assert comp.num_nodes < 400, name
        np.testing.assert_allclose(comp.source.num_modes, spectra[name].num_modes, rtol=1e-14)
    # Full spectra and every compression's evaluation nodes in one call.
    source, parts = _cat(list(spectra.values()) + [c.nodes for c in compressed.values()])
    ts, steps = _padded_grids(STEPS)
    terms = _per_mode(sampler)(source, ts, steps)  # (grids, 3, modes)
    exact_parts, node_parts = parts[: len(spectra)], parts[len(spectra) :]
    report = []
    for (name, comp), p_full, p_nodes in zip(compressed.items(), exact_parts, node_parts):
        exact = np.asarray(jnp.sum(terms[..., p_full], axis=-1))
        value, estimate = (np.asarray(x) for x in _evaluate(comp, terms[..., p_nodes]))
        np.testing.assert_allclose(value, jnp.sum(terms[..., p_nodes][..., : comp.num_nodes], -1), rtol=1e-15)
        error = np.abs(value - exact)
        assert np.all(error <= estimate), (name, error, estimate)
        for i, n in enumerate(STEPS):
            rel_err, rel_est = error[i] / np.abs(exact[i]), estimate[i] / np.abs(exact[i])
            report.append(f"{type(sampler).__name__} N={n} {name}: rel. error {rel_err}, estimate {rel_est}")
            if isinstance(sampler, gdj.Heun) and n < 1000:
                # Unstable explicit ODE steps on the small eigenvalues (t_min = 1e-3): a kink / pole in
                # lambda that no quadrature resolves. The estimate must flag it rather than under-report.
                assert np.all(np.isinf(estimate[i])), report[-1]
                assert np.max(rel_err) > 1e-6, report[-1]  # ...and flagging was needed
            else:
                assert np.all(rel_est <= 1e-6), report[-1]  # informative, not vacuous
                assert np.all(rel_err <= 1e-11), report[-1]
    print("\n".join(report))


def test_compressed_power_law_never_formed_matches_exact():
    d, exponent = 10_000_000, 1.2
    compressed = gdj.compress_power_law(d, exponent=exponent)
    assert 100 <= compressed.num_nodes < 400
    # Every bin carries its exact integer count of modes; the node weights add up to d up to round-off.
    mass = np.asarray(compressed.probe_mass)
    assert np.all(mass == np.round(mass)) and mass.max() > 1e6
    np.testing.assert_allclose(math.fsum(np.asarray(compressed.source.weights)), d, rtol=1e-15)
    assert compressed.dim == d
    # Exact reference: all 1e7 modes in float64 (N = 50 steps; a few seconds).
    ts = jnp.linspace(1.0, T_MIN, 51)
    sampler = gdj.EulerMaruyama()

    @eqx.filter_jit
    def per_mode(source):
        law = gdj.sample_law(source, SCHEDULE, sampler, ts)
        return jnp.stack(
            [gdj.w2_squared(source, law, reduce=False), gdj.kl(source, law, target="truncated", reduce=False)]
        )

    full = gdj.GaussianSource(np.arange(1, d + 1, dtype=np.float64) ** -exponent)
    exact = np.asarray(jnp.sum(per_mode(full), axis=-1))
    value, estimate = (np.asarray(x) for x in compressed.evaluate(per_mode))
    error = np.abs(value - exact)
    assert np.all(error <= estimate), (error, estimate)
    assert np.all(estimate <= 1e-6 * np.abs(exact)), (error / exact, estimate / exact)
    # d = 1e9: built in well under a second of numpy, never formed.
    huge = gdj.compress_power_law(1e9, exponent=1.0)
    assert huge.num_nodes < 400
    np.testing.assert_allclose(float(huge.source.num_modes), 1e9, rtol=1e-15)


def test_float32_compressed_matches_float64():
    spectra = _spectra()
    names = ["cifar10_preprint2024 + mean", "adsn_fabric"]
    comps = [gdj.compress(spectra[name]) for name in names]
    source64, parts = _cat([c.source for c in comps])
    source32 = gdj.cast(source64, jnp.float32)
    ts, steps = _padded_grids([10, 100])
    for sampler in (gdj.DDPM(), gdj.DDIM()):
        t64 = _per_mode(sampler)(source64, ts, steps)
        t32 = _per_mode(sampler, schedule=gdj.cast(SCHEDULE, jnp.float32))(source32, ts.astype(jnp.float32), steps)
        assert t32.dtype == jnp.float32
        for p in parts:
            np.testing.assert_allclose(
                np.asarray(jnp.sum(t32[..., p], -1), dtype=np.float64),
                np.asarray(jnp.sum(t64[..., p], -1)),
                rtol=1e-4,
                err_msg=type(sampler).__name__,
            )


def test_bad_options_raise_clear_errors():
    src = gdj.GaussianSource(jnp.linspace(0.1, 1.0, 100))
    cases = [
        (lambda: gdj.compress(src, order=2), "order"),
        (lambda: gdj.compress(src, order=4.5), "order"),
        (lambda: gdj.compress(src, order=True), "order"),
        (lambda: gdj.compress(src, bin_width=0.0), "bin_width"),
        (lambda: gdj.compress(src, bin_width=float("inf")), "bin_width"),
        (lambda: gdj.compress(src, num_bins=0), "num_bins"),
        (lambda: gdj.compress(gdj.GaussianSource(jnp.ones((2, 5)))), "single spectrum"),
        (lambda: gdj.compress(np.ones(5)), "expected a GaussianSource"),
        (lambda: gdj.compress_power_law(0), "dim must be"),
        (lambda: gdj.compress_power_law(10.5), "whole number"),
        (lambda: gdj.compress_power_law(float("inf")), "dim must be"),
        (lambda: gdj.compress_power_law(2.0**60), "at most 2\\*\\*53"),
        (lambda: gdj.compress_power_law(100, exponent=-1.0), "exponent"),
        (lambda: gdj.compress_power_law(100, scale=0.0), "scale"),
        (lambda: gdj.compress_power_law(100, head=0), "head"),
        (lambda: gdj.compress_power_law(100, order=1), "order"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match="outside jax.jit"):
        jax.jit(lambda lam: gdj.compress(gdj.GaussianSource(lam)).source.eigenvalues)(jnp.ones(5))
    # evaluate wants per-mode terms, not totals.
    comp = gdj.compress(src)
    with pytest.raises(ValueError, match="reduce=False"):
        comp.evaluate(lambda nodes: jnp.sum(nodes.eigenvalues))


def test_float32_estimate_is_finite_and_covers_the_float32_total():
    """In float32, KL terms carry ~1e-3 relative round-off noise at N = 1000 (RK4), so a bin's probe does not
    look converged; that must not be reported as unresolved (+inf) when only round-off is at stake, and the
    finite estimate must still cover |compressed - all modes| computed in float32."""
    full = _spectra()["cifar10_preprint2024 + mean"]
    compressed64 = gdj.compress(full)
    compressed = gdj.cast(compressed64, jnp.float32)
    source, (p_full, p_nodes) = _cat([full, compressed64.nodes])
    source = gdj.cast(source, jnp.float32)
    ts, steps = _padded_grids([1000])
    terms = _per_mode(gdj.RK4(), schedule=gdj.cast(SCHEDULE, jnp.float32))(source, ts.astype(jnp.float32), steps)[0]
    exact = np.asarray(jnp.sum(terms[:, p_full], -1), dtype=np.float64)
    value, estimate = (np.asarray(x, dtype=np.float64) for x in _evaluate(compressed, terms[:, p_nodes]))
    assert np.all(np.isfinite(estimate)) and np.all(estimate <= 1e-2 * exact), estimate / exact
    assert np.all(np.abs(value - exact) <= estimate), (np.abs(value - exact) / exact, estimate / exact)


# ----------------------------------------------------------------------------------------------------
# Compression in place of a spectrum for repeated evaluations (grid search, optimization)


def test_compression_for_loss_only_where_it_pays_and_cached():
    from gaussdiff_jax._scale._compress import compression_for_loss

    cifar = gdj.GaussianSource(gdj.spectra.load("cifar10"))
    compressed = compression_for_loss(cifar)
    assert compressed.eigenvalues.shape == (204,) and compressed.num_modes == 3072
    assert compression_for_loss(gdj.GaussianSource(gdj.spectra.load("cifar10"))) is compressed  # same spectrum
    # A different mean is a different spectrum; the cache keeps the last 8 spectra.
    with_mean = compression_for_loss(gdj.GaussianSource(cifar.eigenvalues, mean=np.full(3072, 0.1)))
    assert with_mean is not compressed and with_mean.mean is not None
    for scale in range(2, 10):
        compression_for_loss(gdj.GaussianSource(scale * cifar.eigenvalues))
    again = compression_for_loss(cifar)
    assert again is not compressed and np.array_equal(again.eigenvalues, compressed.eigenvalues)
    # Too small to be worth it, batched, or traced (inside jit): None, the caller keeps every mode.
    assert compression_for_loss(gdj.GaussianSource(np.linspace(0.1, 2.0, 1000))) is None
    assert compression_for_loss(gdj.GaussianSource(np.ones((2, 3072)))) is None
    assert compression_for_loss(gdj.cast(cifar, jnp.float32)) is None
    seen = []
    jax.jit(lambda lam: seen.append(compression_for_loss(gdj.GaussianSource(lam))) or lam)(cifar.eigenvalues)
    assert seen == [None]
    # Does not compress 4x (every eigenvalue its own sparse bin): None.
    assert compression_for_loss(gdj.GaussianSource(np.exp(np.linspace(-340.0, 340.0, 2048)))) is None


def test_agrees_is_relative_and_needs_infinities_at_the_same_places():
    from gaussdiff_jax._scale._compress import agrees

    exact = np.array([1.0, 1e6, np.inf])
    assert agrees(exact * (1 + 5e-10), exact)
    assert not agrees(exact * (1 + 5e-9), exact)
    assert agrees(exact * (1 + 5e-9), exact, rtol=1e-8)
    assert not agrees(np.array([1.0, 1e6, 1.0]), exact)
    assert not agrees(np.array([1.0, np.nan, np.inf]), exact)
