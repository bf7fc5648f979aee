"""The Jain-Zhang sampler (MATH.md sections 2 and 5): grid, closed form vs Monte Carlo, K^-2 law, chain-rule bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

Z = 4.5
LAM = np.array([0.02, 0.6, 3.0])
MEAN = np.array([0.5, -1.0, 0.3])


def _grid(c, delta=1e-3, tau_max=6.0):
    taus = gdj.jain_zhang_grid(delta, tau_max, c)
    return gdj.ou_schedule(tau_max), jnp.asarray(taus[::-1] / tau_max), taus


def test_grid_follows_h_equals_c_min_1_tau():
    for c, delta, tau_max in [(0.2, 1e-3, 6.0), (0.05, 1e-2, 3.5), (0.5, 0.1, 2.0)]:
        taus = gdj.jain_zhang_grid(delta, tau_max, c)
        h = np.diff(taus)
        assert taus[0] == delta and taus[-1] == tau_max and np.all(h > 0)
        np.testing.assert_allclose(h[:-1], c * np.minimum(1.0, taus[1:-1]), rtol=1e-12)
        assert h[-1] <= c * min(1.0, taus[-1]) * (1 + 1e-12)  # the last step is cut at tau_max
        # K ~ (log(1/delta) + tau_max) / c up to the geometric factor -log(1 - c) / c.
        k_pred = np.log(1 / delta) / -np.log(1 - c) + (tau_max - 1) / c
        assert abs(len(taus) - 2 - k_pred) < 2
    sch, ts, taus = _grid(0.1)
    np.testing.assert_allclose(-0.5 * np.asarray(sch.log_alpha_bar(ts)), taus[::-1], rtol=1e-12)
    for bad in [
        {"delta": 1e-3, "tau_max": 6.0, "c": 1.0},
        {"delta": 0.0, "tau_max": 6.0, "c": 0.1},
        {"delta": 7.0, "tau_max": 6.0, "c": 0.1},
    ]:
        with pytest.raises(ValueError):
            gdj.jain_zhang_grid(**bad)
    with pytest.raises(ValueError, match="3 grid points"):
        gdj.jain_zhang_law(gdj.GaussianSource(LAM), sch, ts[-2:])


@pytest.mark.parametrize("init", ["standard", "exact"])
def test_closed_form_matches_literal_monte_carlo(init):
    """Literal [JZ] iteration with the exact score, full non-diagonal coordinates, nonzero mean."""
    u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    gmm = gdj.GaussianMixture([1.0], (u @ MEAN)[None], ((u * LAM) @ u.T)[None])
    sch, ts, _ = _grid(0.3, delta=1e-2, tau_max=4.0)
    n = 20_000
    start = "standard" if init == "standard" else gmm.diffuse(sch, ts[0])
    y = gdj.simulate(gdj.JainZhang(), sch, ts, gdj.mixture_score(gmm, sch), jax.random.PRNGKey(1), n, init=start, dim=3)
    src = gdj.GaussianSource(LAM, mean=MEAN)
    law = gdj.jain_zhang_law(src, sch, ts, init=init)
    z = np.asarray(y) @ u
    v = np.asarray(law.variance)
    assert np.all(np.abs((z.mean(0) - law.mean_multiplier * MEAN) / np.sqrt(v / n)) < Z)
    assert np.all(np.abs((z.var(0, ddof=1) - v) / (v * np.sqrt(2 / (n - 1)))) < Z)
    # The output approximates p at ts[-2] (tau_1), and the error there is resolved: v differs from R^2(tau_1).
    np.testing.assert_allclose(law.alpha_bar_min, sch.alpha_bar(ts[-2]), rtol=1e-14)
    assert float(gdj.kl(src, law, target="truncated")) > 1e-3


def test_exact_kl_scales_as_k_to_the_minus_two():
    src = gdj.GaussianSource(LAM, mean=MEAN)
    ks, kls = [], []
    for c in [0.1, 0.05, 0.025, 0.0125]:
        sch, ts, taus = _grid(c)
        law = gdj.jain_zhang_law(src, sch, ts, init="exact")
        ks.append(len(taus) - 2)
        kls.append(float(gdj.kl(src, law, target="truncated")))
    slope = np.polyfit(np.log(ks), np.log(kls), 1)[0]
    assert abs(slope + 2) < 0.05, slope
    # MATH.md: KL ~ c^2 sum_i kappa(lambda_i) with 0 <= kappa <= 1/4.
    assert kls[-1] / 0.0125**2 < 0.25 * len(LAM)


def test_float32_closed_form():
    src = gdj.GaussianSource(LAM, mean=MEAN)
    for c in [0.2, 0.0125]:
        sch, ts, _ = _grid(c)
        k64 = float(gdj.kl(src, gdj.jain_zhang_law(src, sch, ts, init="exact"), target="truncated"))
        src32, sch32 = gdj.cast(src, jnp.float32), gdj.cast(sch, jnp.float32)
        law32 = gdj.jain_zhang_law(src32, sch32, ts.astype(jnp.float32), init="exact")
        assert law32.variance.dtype == jnp.float32
        np.testing.assert_allclose(float(gdj.kl(src32, law32, target="truncated")), k64, rtol=1e-4)


def _dense_path_kl(lam, m, ab, gains, offsets, noises, init):
    """KL(true path || sampler path) for one mode by dense joint Gaussians over all grid points (numpy).

    The true process is the forward chain read backwards: x_{j+1} | x_j of the reverse-time Markov chain is built
    from the forward marginals; here the joint law of (x_0, ..., x_M) (index = sampling order) is formed directly
    from the forward covariances Cov(x_s, x_t) = sqrt(abar_t/abar_s) R_s^2 for s earlier in forward time.
    """
    M = len(ab)
    R2 = ab * lam + 1 - ab
    mean_p = np.sqrt(ab) * m
    cov_p = np.empty((M, M))
    for i in range(M):
        for j in range(M):
            hi, lo = min(i, j), max(i, j)  # sampling order: larger index = smaller forward time
            cov_p[i, j] = np.sqrt(ab[hi] / ab[lo]) * R2[lo]
    # Sampler chain: y_0 ~ init, y_{j+1} = A_j y_j + C_j + sqrt(Q_j) xi.
    mean_q = np.empty(M)
    cov_q = np.empty((M, M))
    mean_q[0], cov_q[0, 0] = (0.0, 1.0) if init == "standard" else (mean_p[0], R2[0])
    for j in range(M - 1):
        mean_q[j + 1] = gains[j] * mean_q[j] + offsets[j]
        cov_q[j + 1, : j + 1] = gains[j] * cov_q[j, : j + 1]
        cov_q[: j + 1, j + 1] = cov_q[j + 1, : j + 1]
        cov_q[j + 1, j + 1] = gains[j] ** 2 * cov_q[j, j] + noises[j]
    diff = mean_q - mean_p
    sol = np.linalg.solve(cov_q, cov_p)
    return 0.5 * (
        np.trace(sol)
        - M
        + np.linalg.slogdet(cov_q)[1]
        - np.linalg.slogdet(cov_p)[1]
        + diff @ np.linalg.solve(cov_q, diff)
    )


def test_chain_rule_bound_equals_dense_path_kl_and_dominates_exact_kl():
    src = gdj.GaussianSource(LAM, mean=MEAN)
    # Independent check of the formula on a short grid: the path KL of dense joint Gaussians, mode by mode.
    sch, ts, _ = _grid(0.4, delta=0.05, tau_max=2.5)
    ab = np.asarray(sch.alpha_bar(ts))
    tau = -0.5 * np.log(ab)
    for init in ["standard", "exact"]:
        per_mode = np.asarray(gdj.chain_rule_kl_bound(src, sch, gdj.JainZhang(), ts, init=init, reduce=False))
        for i, (lam, m) in enumerate(zip(LAM, MEAN)):
            gains, offsets, noises = [], [], []
            for j in range(len(ts) - 2):  # [JZ] iteration from ts[j] to ts[j+1]
                big_h, h = tau[j] - tau[j + 2], tau[j + 1] - tau[j + 2]
                s2 = ab[j] * lam + 1 - ab[j]
                a_ode = np.exp(big_h) - np.expm1(big_h) / s2
                c_ode = np.expm1(big_h) * np.sqrt(ab[j]) * m / s2
                gains.append(np.exp(-h) * a_ode)
                offsets.append(np.exp(-h) * c_ode)
                noises.append(-np.expm1(-2 * h))
            dense = _dense_path_kl(lam, m, ab[:-1], gains, offsets, noises, init)
            np.testing.assert_allclose(per_mode[i], dense, rtol=1e-8)
    # The bound dominates the exact KL(target || sample) on every tested grid, for [JZ] and other noisy samplers.
    for c, delta, tau_max in [(0.3, 1e-2, 4.0), (0.1, 1e-3, 6.0), (0.0125, 1e-3, 6.0)]:
        sch, ts, _ = _grid(c, delta, tau_max)
        for init in ["standard", "exact"]:
            law = gdj.jain_zhang_law(src, sch, ts, init=init)
            exact = float(gdj.kl(src, law, target="truncated"))
            assert float(gdj.chain_rule_kl_bound(src, sch, gdj.JainZhang(), ts, init=init)) >= exact > 0
    ts = jnp.linspace(1.0, 1e-3, 31)
    for sampler in [gdj.DDPM(), gdj.EulerMaruyama(), gdj.DDIM(eta=0.7)]:
        law = gdj.sample_law(src, gdj.LinearBeta(), sampler, ts)
        exact = float(gdj.kl(src, law, target="truncated"))
        assert float(gdj.chain_rule_kl_bound(src, gdj.LinearBeta(), sampler, ts)) >= exact > 0
    with pytest.raises(Exception, match="no noise"):
        gdj.chain_rule_kl_bound(src, gdj.LinearBeta(), gdj.Heun(), ts)


def test_bound_terms_have_the_rates_of_the_exact_kl():
    """[JZ]'s bound has no constants: test rates, not values."""
    src = gdj.GaussianSource(LAM, mean=MEAN)
    m2 = float(np.sum(LAM + MEAN**2))
    # Discretization: exact KL / (d^2 c^3 K) stays bounded (both ~ c^2 at fixed delta, T).
    ratios = []
    for c in [0.1, 0.05, 0.025]:
        sch, ts, taus = _grid(c)
        exact = float(gdj.kl(src, gdj.jain_zhang_law(src, sch, ts, init="exact"), target="truncated"))
        terms = gdj.jain_zhang_bound_terms(dim=3, second_moment=m2, c=c, num_steps=len(taus) - 2, tau_max=6.0)
        ratios.append(exact / float(terms.discretization))
        assert float(terms.score) == 0.0
    assert max(ratios) / min(ratios) < 1.3, ratios
    # Initialization: the error from starting at N(0, I) decays at least as fast as e^{-T}.
    errs, terms_init = [], []
    for tau_max in [2.0, 4.0, 6.0]:
        sch, ts, taus = _grid(0.1, 1e-3, tau_max)
        k_std = float(gdj.kl(src, gdj.jain_zhang_law(src, sch, ts, init="standard"), target="truncated"))
        k_ex = float(gdj.kl(src, gdj.jain_zhang_law(src, sch, ts, init="exact"), target="truncated"))
        errs.append(k_std - k_ex)
        terms = gdj.jain_zhang_bound_terms(dim=3, second_moment=m2, c=0.1, num_steps=len(taus) - 2, tau_max=tau_max)
        terms_init.append(float(terms.initialization))
    rate = np.diff(np.log(errs)) / np.diff([2.0, 4.0, 6.0])
    assert np.all(errs) and np.all(rate < -1.0), (errs, rate)  # e^{-T} or faster (Gaussian: e^{-2T})
    np.testing.assert_allclose(terms_init, (3 + m2) * np.exp(-np.array([2.0, 4.0, 6.0])), rtol=1e-14)
    terms = gdj.jain_zhang_bound_terms(dim=3, second_moment=m2, c=0.1, num_steps=10, tau_max=5.0, score_error=0.2)
    np.testing.assert_allclose(terms.score, 5.0 * 0.04, rtol=1e-14)
