"""DDIM in closed form (rotation formula), the functionals I_i, the leading terms and their N^-3 corrections,
and the detection of singular schedules (MATH.md section 4 and the asymptotics values of section 6)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import gaussdiff_jax as gdj

ASYMPTOTIC_SPECTRUM = np.array([0.05, 0.4, 1.5, 6.0])
FIELDS = ("mean_multiplier", "variance", "mean_deviation", "log_variance_ratio")


@eqx.filter_jit
def _both_laws(source, cases, ts):
    """Closed form and recursion for each (schedule, init) case, on a batch of grids `ts` (one compilation)."""

    def one(grid):
        return [
            (
                gdj.ddim_law(source, schedule, grid, init=init),
                gdj.sample_law(source, schedule, gdj.DDIM(), grid, init=init),
            )
            for schedule, init in cases
        ]

    return jax.vmap(one)(ts)


@eqx.filter_jit
def _ddim(source, schedule, ts, init="standard"):
    """The closed-form law and its KL (both directions) and W2^2 to p_{t_min} (= the data when t_min = 0)."""
    law = gdj.ddim_law(source, schedule, ts, init=init)
    return (
        law,
        gdj.kl(source, law, target="truncated"),
        gdj.kl(source, law, target="truncated", direction="sample_to_target"),
        gdj.w2_squared(source, law, target="truncated"),
    )


@eqx.filter_jit
def _uniform(source, schedule, num_steps, init="standard"):
    """`_ddim`'s divergences on uniform grids from 1 to 0, for each N in the tuple `num_steps` (one compilation)."""
    out = []
    for n in num_steps:
        ts = jnp.linspace(1.0, 0.0, n + 1, dtype=source.eigenvalues.dtype)
        out.append(_ddim(source, schedule, ts, init)[1:])
    return out


_functionals = eqx.filter_jit(gdj.leading_term_functionals)


# ------------------------------------------------------------------ rotation formula


def test_ddim_law_equals_recursion():
    # Nonzero mean, spread eigenvalues, two schedule types (abar(1) > 0 and = 0), two grids each
    # (ending at t = 0 and at 1e-3), both initializations: every field to 1e-12.
    lam = np.array([1e-3, 0.02, 0.6, 1.0, 3.0, 250.0])
    source = gdj.GaussianSource(lam, mean=np.array([0.5, -1.0, 2.0, 0.3, -0.7, 1.2]))
    warped = gdj.WarpedSchedule(gdj.Tangent(0.8), gdj.TimeWarp(logits=np.linspace(-0.5, 0.7, 8)))
    grids = jnp.asarray(np.stack([np.linspace(1.0, 0.0, 13), 0.9 * np.linspace(1.0, 0.0, 13) ** 1.7 + 1e-3]))
    cases = [(gdj.LinearBeta(), "standard"), (gdj.LinearBeta(), "exact"), (warped, "standard"), (warped, "exact")]
    for (closed, recursion), (_, init) in zip(_both_laws(source, cases, grids), cases):
        for field in FIELDS:
            np.testing.assert_allclose(
                getattr(closed, field), getattr(recursion, field), rtol=1e-12, atol=1e-14, err_msg=field
            )
        for k in range(grids.shape[0]):
            pick = lambda law, k=k: jax.tree_util.tree_map(lambda x: x[k], law)
            for direction in ["target_to_sample", "sample_to_target"]:
                np.testing.assert_allclose(
                    gdj.kl(source, pick(closed), direction=direction),
                    gdj.kl(source, pick(recursion), direction=direction),
                    rtol=1e-12,
                )
        if init == "exact":
            # DDIM with the exact score always under-disperses, at lam = 1 too (prod cos^2 < 1).
            assert np.all(np.asarray(closed.log_variance_ratio) < 0)


def test_ddim_worked_example():
    # MATH.md section 4: lam = 2, grid abar = (0, 0.5, 1) gives r = 2/9, v = 4/9 (Tangent(1) has abar(1/2) = 1/2).
    law, *_ = _ddim(gdj.GaussianSource(np.array([2.0])), gdj.Tangent(1.0), jnp.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(law.variance, [4 / 9], rtol=1e-14)
    np.testing.assert_allclose(law.log_variance_ratio, [math.log(2 / 9)], rtol=1e-14)


class _RoundOff(gdj.Tangent):
    """The tangent law with the round-off of a compiled closed form: 1 - abar(0) = -1e-20 instead of 0."""

    def one_minus_alpha_bar(self, t):
        t = jnp.asarray(t)
        return super().one_minus_alpha_bar(t) - jnp.where(t == 0, 1e-20, 0.0)


def test_ddim_law_zero_eigenvalue_roundoff_and_chunking():
    source = gdj.GaussianSource(np.array([0.0, 0.02, 0.6, 3.0]))
    ts = jnp.linspace(1.0, 0.0, 7)
    clean, rounded = eqx.filter_jit(
        lambda s, ts: (gdj.ddim_law(s, gdj.Tangent(1.3), ts), gdj.ddim_law(s, _RoundOff(1.3), ts))
    )(source, ts)
    # A zero eigenvalue at t_min = 0: a quarter turn on the last step, variance exactly 0 (= the target's).
    assert float(clean.variance[0]) == 0.0 and np.isinf(clean.log_variance_ratio[0])
    assert float(gdj.w2_squared(source, clean, reduce=False)[0]) == 0.0
    # A tiny negative 1 - abar from a schedule (e.g. Cosine compiled, at t = 0) must not change the result.
    for field in FIELDS:
        np.testing.assert_allclose(getattr(rounded, field), getattr(clean, field), rtol=1e-14, err_msg=field)
    # The chunked (scan) path sums the same terms as the vectorized one, with a padded last chunk.
    from gaussdiff_jax._analysis import _ddim_closed_form as dc

    lam = jnp.asarray(ASYMPTOTIC_SPECTRUM)
    ts = jnp.linspace(1.0, 0.0, 1001)

    @jax.jit
    def sums(ts):
        # 1000 steps of 4 modes: in one block, and in 13 chunks of 77 steps (the last one padded).
        return [dc._sum_log_cos_squared(gdj.Tangent(1.0), ts, lam, ts.dtype, block) for block in (1 << 22, 4 * 77)]

    (vectorized, ends_v), (chunked, ends_c) = sums(ts)
    np.testing.assert_allclose(chunked, vectorized, rtol=1e-13)
    np.testing.assert_allclose(ends_c, ends_v, rtol=1e-15)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_ddim_law_gradient_with_a_zero_eigenvalue_at_the_clean_point(dtype):
    # A zero eigenvalue on a grid ending at t = 0: its last step has a 0/0 rotation (the mode is masked); the
    # gradient of W2^2 in the grid stays finite and equals the recursion's.
    source = gdj.cast(gdj.GaussianSource(np.array([0.0, 0.02, 0.6, 3.0])), dtype)
    schedule = gdj.cast(gdj.Tangent(1.3), dtype)
    ts = jnp.linspace(1.0, 0.0, 7, dtype=dtype)

    def loss(law_fn):
        def of_interior(x):
            grid = jnp.concatenate([ts[:1], x, ts[-1:]])
            return gdj.w2_squared(source, law_fn(grid))

        return jax.jit(jax.grad(of_interior))(ts[1:-1])

    closed = loss(lambda grid: gdj.ddim_law(source, schedule, grid))
    recursion = loss(lambda grid: gdj.sample_law(source, schedule, gdj.DDIM(), grid))
    assert np.all(np.isfinite(closed))
    np.testing.assert_allclose(closed, recursion, rtol=1e-10 if dtype == jnp.float64 else 1e-4)


def test_ddim_law_float32():
    # float32 against float64 on the same (float32-rounded) grid, N up to 10^4, eigenvalues 1e-6..1e6.
    lam = np.logspace(-6, 6, 13)
    src64 = gdj.GaussianSource(lam)
    src32 = gdj.cast(src64, jnp.float32)
    schedule = gdj.Tangent(1.0)
    sch32 = gdj.cast(schedule, jnp.float32)

    @eqx.filter_jit
    def both(num_steps):
        out = []
        for n in num_steps:
            ts32 = jnp.linspace(1.0, 0.0, n + 1, dtype=jnp.float32)
            out.append((_ddim(src32, sch32, ts32)[1:], _ddim(src64, schedule, ts32.astype(jnp.float64))[1:]))
        return out

    for got, ref in both((10, 10000)):
        for g, r in zip(got, ref):
            assert g.dtype == jnp.float32
            np.testing.assert_allclose(np.float64(g), r, rtol=2e-5)


def test_ddim_law_bad_input():
    source = gdj.GaussianSource(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        gdj.ddim_law(source, gdj.Tangent(1.0), jnp.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="init"):
        gdj.ddim_law(source, gdj.Tangent(1.0), jnp.array([1.0, 0.0]), init="noise")


# ------------------------------------------------------------------ functionals I_i


def _scipy_functional(schedule, lam):
    """I = int_0^1 lam sigma'^2 / (lam + sigma^2)^2 dt by scipy's adaptive quadrature."""
    sigma = jax.jit(lambda t: jax.jvp(schedule.sigma, (t,), (jnp.ones_like(t),)))

    def integrand(t):
        s, ds = (float(x) for x in sigma(jnp.asarray(t)))
        return lam * ds * ds / (lam + s * s) ** 2

    return integrate.quad(integrand, 0.0, 1.0, epsabs=0, epsrel=1e-12, limit=500)[0]


def test_functionals_closed_forms():
    lam = np.array([1e-6, 0.05, 0.4, 1.5, 6.0, 1e6])
    source = gdj.GaussianSource(lam)
    for gamma in [0.3, 1.0, 2.5]:
        I = _functionals(source, gdj.Tangent(gamma))
        np.testing.assert_allclose(I, gdj.tangent_functionals(source, gamma), rtol=1e-11)
        # The same closed form, typed independently.
        np.testing.assert_allclose(I, math.pi**2 / 8 * (gamma / np.sqrt(lam) + np.sqrt(lam) / gamma), rtol=1e-11)
    # Linear log-SNR: I = (s/8)[tanh((l_max + ln lam)/2) - tanh((l_min + ln lam)/2)], s = l_max - l_min.
    l_max, l_min = 9.0, -7.0
    I = _functionals(source, gdj.LogSNRLinear(l_max, l_min))
    expected = (l_max - l_min) / 8 * (np.tanh((l_max + np.log(lam)) / 2) - np.tanh((l_min + np.log(lam)) / 2))
    np.testing.assert_allclose(I, expected, rtol=1e-12)
    # No closed form (EDM, rho = 7, sigma_min = 0, sigma ~ t^7): against scipy's adaptive quadrature.
    edm = gdj.EDM(sigma_min=0.0, sigma_max=80.0, rho=7.0)
    I = _functionals(gdj.GaussianSource(ASYMPTOTIC_SPECTRUM), edm)
    np.testing.assert_allclose(I, [_scipy_functional(edm, x) for x in ASYMPTOTIC_SPECTRUM], rtol=1e-9)


def test_functionals_chunked(monkeypatch):
    # Large d x nodes runs the quadrature in checkpointed chunks (padded last chunk): same values.
    from gaussdiff_jax._analysis import _asymptotics

    monkeypatch.setattr(_asymptotics, "_MAX_BLOCK", 4 * 333)
    source = gdj.GaussianSource(ASYMPTOTIC_SPECTRUM)
    I = eqx.filter_jit(lambda s, g: gdj.leading_term_functionals(s, gdj.Tangent(g)))(source, jnp.asarray(0.9))
    np.testing.assert_allclose(I, gdj.tangent_functionals(source, 0.9), rtol=1e-12)


def test_functionals_float32_weights_jit_grad():
    lam = np.array([1e-6, 0.05, 0.4, 1.5, 6.0, 1e6])
    src32 = gdj.cast(gdj.GaussianSource(lam), jnp.float32)
    I32 = _functionals(src32, gdj.cast(gdj.Tangent(0.7), jnp.float32))
    assert I32.dtype == jnp.float32
    np.testing.assert_allclose(I32, math.pi**2 / 8 * (0.7 / np.sqrt(lam) + np.sqrt(lam) / 0.7), rtol=2e-6)
    # Weights are multiplicities: weights (1, 2, 3) equal the spectrum with repeats.
    leading = eqx.filter_jit(gdj.kl_leading_term)
    a = leading(gdj.GaussianSource(np.array([0.2, 1.0, 5.0]), weights=np.array([1.0, 2.0, 3.0])), gdj.Tangent(1.0), 7)
    b = leading(gdj.GaussianSource(np.array([0.2, 1.0, 1.0, 5.0, 5.0, 5.0])), gdj.Tangent(1.0), 7)
    np.testing.assert_allclose(a, b, rtol=1e-13)
    # Differentiable in the schedule's parameters (under jit): d/dgamma of D(gamma), in closed form.
    source = gdj.GaussianSource(ASYMPTOTIC_SPECTRUM)
    grad = jax.jit(jax.grad(lambda g: gdj.kl_leading_term(source, gdj.Tangent(g), 1)))(jnp.asarray(1.3))
    g = 1.3
    expected = math.pi**4 / 256 * np.sum(2 * g / ASYMPTOTIC_SPECTRUM - 2 * ASYMPTOTIC_SPECTRUM / g**3)
    np.testing.assert_allclose(grad, expected, rtol=1e-11)


# ------------------------------------------------------------------ leading terms and the N^-3 rate


def test_asymptotics_published_values():
    # MATH.md section 6: lam = (0.05, 0.4, 1.5, 6), DDIM, sigma = tan(pi t / 2), uniform grid, standard init:
    # N^2 KL(p_0 || p_sample) = 18.445, 15.186, 14.970, 14.952 -> 14.947.
    source = gdj.GaussianSource(ASYMPTOTIC_SPECTRUM)
    schedule = gdj.Tangent(1.0)
    I = np.asarray(_functionals(source, schedule))
    D = float(np.sum(I**2) / 4)
    assert abs(D - 14.947) < 5e-4
    cubic = float(np.sum(I**3) / 12)
    scaled_remainders = []
    cases = [(10, 18.445), (100, 15.186), (1000, 14.970), (5000, 14.952)]
    results = _uniform(source, schedule, tuple(n for n, _ in cases))
    for (n, published), (kl_ts, kl_st, _) in zip(cases, results):
        assert abs(n * n * float(kl_ts) - published) < 5e-4, (n, n * n * float(kl_ts))
        # KL = D/N^2 +- cubic/N^3 + O(N^-4) (the sign by direction): scale the remainder by N^4.
        r_ts = n**4 * (float(kl_ts) - D / n**2 - cubic / n**3)
        r_st = n**4 * (float(kl_st) - D / n**2 + cubic / n**3)
        assert abs(r_ts) < 150 and abs(r_st) < 150, (n, r_ts, r_st)
        scaled_remainders.append(r_ts)
        np.testing.assert_allclose(
            n**4 * (float(kl_ts) - float(gdj.kl_leading_term(source, schedule, n, correction=True))),
            r_ts,
            atol=1e-6 * n**2,
        )
    # The N^-4 coefficient has settled: the N^-3 term is the whole O(N^-3) part.
    np.testing.assert_allclose(scaled_remainders[2], scaled_remainders[3], rtol=0.01)
    np.testing.assert_allclose(scaled_remainders[1], scaled_remainders[3], rtol=0.03)


def test_leading_terms_general_schedule():
    # abar(0) < 1 and abar(1) > 0 (linear log-SNR): the leading term is the discretization error alone
    # (init="exact", target p_{t_min}); both KL directions (to O(N^-4)) and W2^2 (to O(N^-3)) converge.
    source = gdj.GaussianSource(ASYMPTOTIC_SPECTRUM)
    schedule = gdj.LogSNRLinear(8.0, -8.0)
    I = np.asarray(_functionals(source, schedule))
    w2_errors = []
    for n, (kl_ts, kl_st, w2sq) in zip([200, 800], _uniform(source, schedule, (200, 800), "exact")):
        np.testing.assert_allclose(kl_ts, gdj.kl_leading_term(source, schedule, n, correction=True), rtol=2 / n**2)
        np.testing.assert_allclose(
            kl_st,
            gdj.kl_leading_term(source, schedule, n, direction="sample_to_target", correction=True),
            rtol=2 / n**2,
        )
        lead = np.sum(ASYMPTOTIC_SPECTRUM * I**2) / (4 * n * n)
        np.testing.assert_allclose(gdj.w2_squared_leading_term(source, schedule, n), lead, rtol=1e-14)
        np.testing.assert_allclose(gdj.w2_leading_term(source, schedule, n), np.sqrt(lead), rtol=1e-14)
        w2_errors.append(float(w2sq) / lead - 1)
    assert abs(w2_errors[0]) < 3 / 200 and 3.5 < w2_errors[0] / w2_errors[1] < 4.5  # O(1/N) relative


def test_leading_term_bad_input():
    source = gdj.GaussianSource(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="eigenvalue 0"):
        gdj.kl_leading_term(source, gdj.Tangent(1.0), 10)
    # W2 is finite with a zero eigenvalue: it contributes 0.
    assert float(gdj.w2_squared_leading_term(source, gdj.Tangent(1.0), 10, reduce=False)[0]) == 0.0
    with pytest.raises(ValueError, match="num_steps"):
        gdj.kl_leading_term(gdj.GaussianSource(np.array([1.0])), gdj.Tangent(1.0), 0)
    with pytest.raises(ValueError, match="direction"):
        gdj.kl_leading_term(gdj.GaussianSource(np.array([1.0])), gdj.Tangent(1.0), 3, direction="both")


# ------------------------------------------------------------------ singular schedules


class _SqrtEnd(gdj.AbstractSchedule):
    """The tangent law on the clock w = 1 - sqrt(1 - t): abar ~ 1 - t, singular at t = 1 only."""

    def log_snr(self, t):
        return gdj.Tangent(1.0).log_snr(1 - jnp.sqrt(1 - jnp.asarray(t)))


def test_singular_schedules_flagged():
    singular = [gdj.LinearBeta(), gdj.Cosine(0.008), gdj.Discrete.from_diffusers("linear")]
    regular = [gdj.Tangent(0.5), gdj.Cosine(0.0), gdj.LearnableSchedule(8)]
    for schedule in singular:
        assert gdj.is_singular(schedule), type(schedule).__name__
        assert float(gdj.end_exponents(schedule).at_zero) == pytest.approx(0.5, abs=1e-3)
        with pytest.raises(ValueError, match="singular"):
            gdj.kl_leading_term(gdj.GaussianSource(ASYMPTOTIC_SPECTRUM), schedule, 100)
    assert gdj.is_singular(gdj.cast(gdj.LinearBeta(), jnp.float32), dtype=jnp.float32)
    for schedule in regular:
        assert not gdj.is_singular(schedule), type(schedule).__name__
    assert float(gdj.end_exponents(_SqrtEnd()).at_one) == pytest.approx(0.5, abs=1e-3)
    assert gdj.is_singular(_SqrtEnd())
    # Inside jit the same message comes as an equinox runtime error.
    with pytest.raises(Exception, match="singular"):
        eqx.filter_jit(lambda s: gdj.check_regular(s, jnp.zeros(())))(gdj.Cosine(0.008))


def test_singular_linear_beta_growth():
    # MATH.md section 4: N^2 KL = 53.6, 57.7, 65.8, 75.0 at N = 10^2..10^5 for linear beta (the discretization
    # error: init="exact"), growing like (ln N)^2 instead of converging.
    source = gdj.GaussianSource(ASYMPTOTIC_SPECTRUM)
    values = []
    cases = [(100, 53.6), (1000, 57.7), (10000, 65.8), (100000, 75.0)]
    results = _uniform(source, gdj.LinearBeta(), tuple(n for n, _ in cases), "exact")
    for (n, published), (kl_ts, _, _) in zip(cases, results):
        values.append(n * n * float(kl_ts))
        assert abs(values[-1] - published) < 0.06, (n, values[-1])
    increments = np.diff(values)
    assert np.all(increments[1:] > increments[:-1])  # the growth accelerates in ln N: (ln N)^2
