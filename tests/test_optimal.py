"""Analytic optima of the DDIM leading term (MATH.md section 4): the tangent family and its best gamma, the
isotropic exact optimum at every N (and its finite-end form, AYS / "KL optimal"), and the Euler-Lagrange
optimum for general spectra. The optax-based checks of the same optima are in test_optimization.py."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize as sopt

import gaussdiff_jax as gdj

SPECTRUM = np.array([0.1, 0.5, 1.0, 4.0])
POWER_LAW = 100.0 * np.arange(1, 201) ** -1.5
_functionals = eqx.filter_jit(gdj.leading_term_functionals)


def _leading(source, schedule):
    I = np.asarray(_functionals(source, schedule))
    return 0.25 * float(np.sum(I * I))


@eqx.filter_jit
def _kl_on_grids(source, schedule, grids, init="standard", target="data"):
    """KL in both directions of DDIM on each grid of the batch `grids` (N + 1 points each)."""

    def one(ts):
        law = gdj.ddim_law(source, schedule, ts, init=init)
        return (
            gdj.kl(source, law, target=target),
            gdj.kl(source, law, target=target, direction="sample_to_target"),
        )

    return jax.vmap(one)(grids)


def _perturbed_grids(num_steps, count, seed, t_max=1.0, t_min=0.0):
    rng = np.random.default_rng(seed)
    steps = np.exp(rng.normal(0.0, 0.3, (count, num_steps)))
    inner = t_max - (t_max - t_min) * np.cumsum(steps, axis=1)[:, :-1] / steps.sum(axis=1, keepdims=True)
    return np.concatenate([np.full((count, 1), t_max), inner, np.full((count, 1), t_min)], axis=1)


# ------------------------------------------------------------------ tangent family


def test_tangent_gamma_published_and_numerical_minimum():
    source = gdj.GaussianSource(SPECTRUM)
    gamma = float(gdj.tangent_gamma(source))
    assert abs(gamma - 0.8062932744) < 1e-10
    assert abs(gamma**4 - SPECTRUM.sum() / np.sum(1 / SPECTRUM)) < 1e-13
    # Its leading term: closed form and quadrature.
    value = 0.25 * float(jnp.sum(gdj.tangent_functionals(source, gamma) ** 2))
    assert abs(value - 9.5993175218) < 1e-9
    assert abs(_leading(source, gdj.Tangent(gamma)) - 9.5993175218) < 1e-9
    assert abs(value - math.pi**4 / 128 * (4 + math.sqrt(SPECTRUM.sum() * np.sum(1 / SPECTRUM)))) < 1e-12
    # The closed forms are the minimizers of the quadrature-evaluated leading terms (scipy, no optax).
    kl_D = jax.jit(lambda g: gdj.kl_leading_term(source, gdj.Tangent(g), 1))
    w2_D = jax.jit(lambda g: gdj.w2_squared_leading_term(source, gdj.Tangent(g), 1))
    for loss, expected in [(kl_D, gamma), (w2_D, float(gdj.tangent_gamma(source, "w2")))]:
        found = sopt.minimize_scalar(
            lambda g, loss=loss: float(loss(jnp.asarray(g))), bracket=(0.3, 1.0, 3.0), tol=1e-12
        ).x
        assert abs(found - expected) < 1e-6, (found, expected)
    assert abs(float(gdj.tangent_gamma(source, "w2")) ** 4 - np.mean(SPECTRUM**2)) < 1e-12


def test_tangent_gamma_weights_batch_and_errors():
    weighted = gdj.GaussianSource(np.array([0.2, 1.0, 5.0]), weights=np.array([1.0, 2.0, 3.0]))
    repeated = gdj.GaussianSource(np.array([0.2, 1.0, 1.0, 5.0, 5.0, 5.0]))
    for metric in ["kl", "w2"]:
        np.testing.assert_allclose(gdj.tangent_gamma(weighted, metric), gdj.tangent_gamma(repeated, metric), rtol=1e-14)
    batch = gdj.GaussianSource(np.stack([SPECTRUM, 2 * SPECTRUM]))
    np.testing.assert_allclose(gdj.tangent_gamma(batch), [0.8062932744, 0.8062932744 * math.sqrt(2)], rtol=1e-10)
    with pytest.raises(ValueError, match="eigenvalues must be > 0"):
        gdj.tangent_gamma(gdj.GaussianSource(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="metric"):
        gdj.tangent_gamma(gdj.GaussianSource(SPECTRUM), "kl2")


# ------------------------------------------------------------------ isotropic exact optimum


def test_isotropic_optimum_every_n():
    lam, d = 2.0, 3
    source = gdj.GaussianSource(np.full(d, lam))
    schedule = gdj.Tangent(math.sqrt(lam))
    steps = (2, 5, 10, 50)
    grids = [np.concatenate([np.linspace(1.0, 0.0, n + 1)[None], _perturbed_grids(n, 8, seed=n)]) for n in steps]
    results = eqx.filter_jit(lambda gs: [_kl_on_grids(source, schedule, g) for g in gs])(
        [jnp.asarray(g) for g in grids]
    )
    for n, (kl_ts, kl_st) in zip(steps, results):
        kl_ts, kl_st = np.asarray(kl_ts), np.asarray(kl_st)
        # The tangent law on the uniform grid attains the closed form, in both directions ...
        np.testing.assert_allclose(kl_ts[0], gdj.isotropic_optimal_kl(d, n), rtol=1e-12)
        np.testing.assert_allclose(kl_st[0], gdj.isotropic_optimal_kl(d, n, direction="sample_to_target"), rtol=1e-12)
        # ... and every other grid (equivalently, every other schedule) does worse (Jensen).
        assert np.all(kl_ts[1:] > kl_ts[0]) and np.all(kl_st[1:] > kl_st[0])
    # MATH.md section 3: 0.807 vs 0.318 per dimension at N = 2; N = 1 collapses the variance (KL = inf).
    assert abs(float(gdj.isotropic_optimal_kl(1, 2)) - 0.807) < 5e-4
    assert abs(float(gdj.isotropic_optimal_kl(1, 2, direction="sample_to_target")) - 0.318) < 5e-4
    assert np.isinf(gdj.isotropic_optimal_kl(1, 1)) and np.isinf(
        gdj.isotropic_optimal_kl(1, 1, direction="sample_to_target")
    )
    # Large N: N^2 KL_min -> d pi^4 / 64, the isotropic minimum of the leading term.
    np.testing.assert_allclose(1e8 * gdj.isotropic_optimal_kl(d, 10**4), d * math.pi**4 / 64, rtol=1e-4)
    with pytest.raises(ValueError, match="num_steps"):
        gdj.isotropic_optimal_kl(d, 0)


def test_isotropic_finite_ends_is_ays_kl_optimal():
    # The isotropic optimum with finite sigma_min, sigma_max is Tangent(sqrt(lam), sigma_min, sigma_max); for
    # lam = 1 its uniform grid is the AYS / "KL optimal" sigmas tan((1 - u) atan sigma_min + u atan sigma_max).
    sigma_min, sigma_max, n = 0.002, 80.0, 12
    u = np.linspace(0.0, 1.0, n + 1)
    for lam in [1.0, 2.0]:
        schedule = gdj.Tangent(math.sqrt(lam), sigma_min, sigma_max)
        expected = math.sqrt(lam) * np.tan(
            (1 - u) * math.atan(sigma_min / math.sqrt(lam)) + u * math.atan(sigma_max / math.sqrt(lam))
        )
        np.testing.assert_allclose(schedule.sigma(jnp.asarray(u)), expected, rtol=1e-12)
    np.testing.assert_allclose(
        gdj.Tangent(1.0, sigma_min, sigma_max).sigma(jnp.asarray(u)),
        np.tan((1 - u) * math.atan(sigma_min) + u * math.atan(sigma_max)),
        rtol=1e-12,
    )
    # It is the exact optimum of the discretization error (init="exact", target p_{t_min}) at every N: equal
    # rotation angles Delta/N, KL = (d/2) phi(-N ln cos^2(Delta/N)); any other grid does worse.
    lam, d = 2.0, 2
    source = gdj.GaussianSource(np.full(d, lam))
    schedule = gdj.Tangent(math.sqrt(lam), sigma_min, sigma_max)
    grids = np.concatenate([np.linspace(1.0, 0.0, n + 1)[None], _perturbed_grids(n, 8, seed=7)])
    kl_ts, _ = (np.asarray(x) for x in _kl_on_grids(source, schedule, jnp.asarray(grids), "exact", "truncated"))
    delta = math.atan(sigma_max / math.sqrt(lam)) - math.atan(sigma_min / math.sqrt(lam))
    u_n = n * math.log(math.cos(delta / n) ** 2)
    np.testing.assert_allclose(kl_ts[0], d / 2 * (math.expm1(-u_n) + u_n), rtol=1e-12)
    assert np.all(kl_ts[1:] > kl_ts[0])


# ------------------------------------------------------------------ Euler-Lagrange optimum


def test_euler_lagrange_published_values():
    source = gdj.GaussianSource(SPECTRUM)
    el = gdj.euler_lagrange_schedule(source)
    assert abs(float(el.value) - 8.74182) < 5e-6
    tangent = 0.25 * float(jnp.sum(gdj.tangent_functionals(source, gdj.tangent_gamma(source)) ** 2))
    assert abs(tangent / float(el.value) - 1.098) < 5e-4  # 9.8% (MATH.md)
    # The returned schedule reproduces D* and its functionals by the independent quadrature in t.
    np.testing.assert_allclose(_functionals(source, el), el.functionals, rtol=1e-10)
    np.testing.assert_allclose(_leading(source, el), float(el.value), rtol=1e-10)
    # Power law lam_j = 100 j^-1.5, d = 200: the best tangent law lies 42.9% above the optimum.
    power = gdj.GaussianSource(POWER_LAW)
    el_power = gdj.euler_lagrange_schedule(power)
    tangent = 0.25 * float(jnp.sum(gdj.tangent_functionals(power, gdj.tangent_gamma(power)) ** 2))
    assert abs(tangent / float(el_power.value) - 1.429) < 5e-4
    np.testing.assert_allclose(_leading(power, el_power), float(el_power.value), rtol=1e-9)


def test_euler_lagrange_isotropic_is_tangent():
    source = gdj.GaussianSource(np.full(3, 2.0))
    el = gdj.euler_lagrange_schedule(source)
    np.testing.assert_allclose(float(el.value), 3 * math.pi**4 / 64, rtol=1e-12)
    assert abs(3 * math.pi**4 / 64 - 4.56605114) < 1e-8
    t = jnp.asarray([1e-9, 1e-4, 0.1, 0.37, 0.5, 0.8, 0.999, 1 - 1e-9])
    # tan(pi t / 2), as 1 / tan(pi (1 - t) / 2) above t = 1/2 (where 1 - t is exact): accurate at both ends.
    tt = np.asarray(t)
    expected = math.sqrt(2) * np.where(tt < 0.5, np.tan(math.pi * tt / 2), 1 / np.tan(math.pi * (1 - tt) / 2))
    np.testing.assert_allclose(el.sigma(t), expected, rtol=1e-10)
    np.testing.assert_allclose(el.log_snr(t), gdj.Tangent(math.sqrt(2)).log_snr(t), rtol=1e-10, atol=1e-9)
    assert float(el.alpha_bar(0.0)) == 1.0 and float(el.alpha_bar(1.0)) == 0.0


def test_euler_lagrange_is_a_minimum_and_predicts_finite_n():
    source = gdj.GaussianSource(SPECTRUM)
    el = gdj.euler_lagrange_schedule(source)
    D = float(el.value)
    # Optimality checked without the Euler-Lagrange equation: every warp of the optimal schedule does worse.
    rng = np.random.default_rng(0)
    leading = eqx.filter_jit(lambda s, w: gdj.kl_leading_term(s, gdj.WarpedSchedule(el, w), 1))
    for scale in [0.3, 0.03]:
        for _ in range(3):
            warp = gdj.TimeWarp(logits=scale * rng.normal(size=16))
            assert float(leading(source, warp)) > D
    # The exact KL of N uniform DDIM steps (standard init) is D*/N^2 + sum I^3/(12 N^3) + O(N^-4).
    I = np.asarray(el.functionals)
    for n in [300, 1000]:
        kl = float(_kl_on_grids(source, el, jnp.linspace(1.0, 0.0, n + 1)[None])[0][0])
        assert abs(n * n * kl - D - np.sum(I**3) / (12 * n)) < 100 / n**2, n


def test_euler_lagrange_weights_zeros_float32_and_errors():
    weighted = gdj.euler_lagrange_schedule(
        gdj.GaussianSource(np.array([0.2, 1.0, 5.0]), weights=np.array([1.0, 2.0, 3.0]))
    )
    repeated = gdj.euler_lagrange_schedule(gdj.GaussianSource(np.array([0.2, 1.0, 1.0, 5.0, 5.0, 5.0])))
    np.testing.assert_allclose(float(weighted.value), float(repeated.value), rtol=1e-11)
    t = jnp.linspace(0.05, 0.95, 7)
    np.testing.assert_allclose(weighted.sigma(t), repeated.sigma(t), rtol=1e-10)
    # Zero eigenvalues do not enter D: same optimum as without them, functional 0.
    with_zero = gdj.euler_lagrange_schedule(gdj.GaussianSource(np.array([0.0, 0.2, 1.0, 5.0])))
    without = gdj.euler_lagrange_schedule(gdj.GaussianSource(np.array([0.2, 1.0, 5.0])))
    np.testing.assert_allclose(float(with_zero.value), float(without.value), rtol=1e-12)
    assert float(with_zero.functionals[0]) == 0.0
    # float32 source: a float32 schedule whose leading term matches D* to float32 accuracy.
    src32 = gdj.cast(gdj.GaussianSource(SPECTRUM), jnp.float32)
    el32 = gdj.euler_lagrange_schedule(src32)
    assert el32.coefficients.dtype == jnp.float32
    I32 = _functionals(src32, el32)
    assert I32.dtype == jnp.float32
    np.testing.assert_allclose(0.25 * float(jnp.sum(I32**2)), 8.74181784, rtol=1e-5)
    with pytest.raises(ValueError, match="one spectrum"):
        gdj.euler_lagrange_schedule(gdj.GaussianSource(np.stack([SPECTRUM, SPECTRUM])))
    with pytest.raises(ValueError, match="positive eigenvalue"):
        gdj.euler_lagrange_schedule(gdj.GaussianSource(np.zeros(3)))
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda lam: gdj.euler_lagrange_schedule(gdj.GaussianSource(lam)).value)(jnp.asarray(SPECTRUM))
    with pytest.raises(ValueError, match="did not converge"):
        gdj.euler_lagrange_schedule(gdj.GaussianSource(POWER_LAW), max_iter=3)
