"""Gaussian mixtures (MATH.md section 5): diffused law, score/Hessian, Lipschitz constants, Monte Carlo tools."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import gaussdiff_jax as gdj

Z = 4.5  # z-score threshold for Monte Carlo comparisons


def _mixture_3x2():
    """Three components in 2-D, full non-diagonal covariances, unequal weights."""
    covs = np.array([[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.05], [-0.05, 0.6]], [[1.0, 0.4], [0.4, 0.5]]])
    means = np.array([[-2.0, 0.5], [1.5, 1.0], [0.5, -1.5]])
    return gdj.GaussianMixture(np.array([0.3, 0.5, 0.2]), means, covs)


@eqx.filter_jit
def _derivatives(law, x):
    """Analytic log-density, score, Hessian and jax autodiff of the log-density (one compilation per structure)."""
    grad = jax.vmap(jax.grad(lambda y: law.log_prob(y)))(x)
    hess = jax.vmap(jax.hessian(lambda y: law.log_prob(y)))(x)
    return law.log_prob(x), law.score(x), law.hessian(x), grad, hess


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


# ------------------------------------------------------------------------------------------ densities
def test_log_prob_score_hessian_against_scipy_and_autodiff():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 3))
    covs = a @ a.transpose(0, 2, 1) + 0.2 * np.eye(3)
    means = 2 * rng.normal(size=(3, 3))
    full = gdj.GaussianMixture(np.array([0.2, 0.5, 0.3]), means, covs)
    diag = gdj.GaussianMixture(
        np.array([1.0, 3.0]), rng.normal(size=(2, 3)), np.array([[0.3, 1.0, 2.0], [1.5, 0.1, 0.7]])
    )
    # Near the data and far away (log p ~ -1e3: the logsumexp path).
    x = np.concatenate([rng.normal(size=(6, 3)), 30 * rng.normal(size=(3, 3))])
    for gmm, dense in [(full, covs), (diag, np.stack([np.diag(c) for c in diag.covariances]))]:
        for law, cov in [(gmm, dense), (gmm.diffuse(gdj.LinearBeta(), 0.2), None)]:
            lp, score, hessian, grad, hess = _derivatives(law, jnp.asarray(x))
            if cov is not None:
                comps = [
                    np.log(w) + multivariate_normal(m, c).logpdf(x) for w, m, c in zip(law.weights, law.means, cov)
                ]
                np.testing.assert_allclose(lp, logsumexp(np.stack(comps), axis=0), rtol=1e-12)
            assert np.all(np.isfinite(score)) and np.all(np.isfinite(hessian))
            np.testing.assert_allclose(score, grad, rtol=1e-10, atol=1e-10 * np.abs(grad).max())
            np.testing.assert_allclose(hessian, hess, rtol=1e-10, atol=1e-10 * np.abs(hess).max())
            np.testing.assert_allclose(hessian, np.swapaxes(hessian, -1, -2), atol=1e-12)


def test_posterior_mean_is_tweedie_and_defined_at_zero_signal():
    gmm = _mixture_3x2()
    sch = gdj.LinearBeta()
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 2)))
    for t in [0.05, 0.4, 0.9]:
        ab, om = float(sch.alpha_bar(t)), float(sch.one_minus_alpha_bar(t))
        tweedie = (x + om * gmm.diffuse(sch, t).score(x)) / np.sqrt(ab)
        np.testing.assert_allclose(gmm.posterior_mean(x, ab), tweedie, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gmm.posterior_mean(x, 0.0), np.broadcast_to(gmm.mean(), (5, 2)), atol=1e-14)


def test_moments_second_moment_and_exact_sampling():
    gmm = _mixture_3x2()
    sch = gdj.LinearBeta()
    t = 0.3
    ab = float(sch.alpha_bar(t))
    gt = gmm.diffuse(sch, t)
    # MATH.md: E|x_t|^2 = a^2 sum_i alpha_i (|mu_i|^2 + tr Sigma_i) + b^2 d.
    expected = ab * float(gmm.second_moment()) + (1 - ab) * 2
    np.testing.assert_allclose(gt.second_moment(), expected, rtol=1e-13)
    np.testing.assert_allclose(gt.mean(), np.sqrt(ab) * gmm.mean(), rtol=1e-13)
    np.testing.assert_allclose(gt.covariance(), ab * gmm.covariance() + (1 - ab) * np.eye(2), rtol=1e-13)
    n = 40_000
    x = np.asarray(gmm.sample(jax.random.PRNGKey(0), n))
    var = np.diag(np.asarray(gmm.covariance()))
    assert np.all(np.abs((x.mean(0) - gmm.mean()) / np.sqrt(var / n)) < Z)
    sq = np.sum(x**2, axis=1)
    assert abs((sq.mean() - gmm.second_moment()) / (sq.std() / np.sqrt(n))) < Z


def test_diffused_law_matches_simulated_forward_process():
    """Closed-form p_t vs Euler-Maruyama on the forward SDE dx = -beta x/2 dt + sqrt(beta) dW, from exact x_0."""
    gmm = _mixture_3x2()
    sch = gdj.LinearBeta()
    t, steps, n = 0.3, 1000, 40_000
    rng = np.random.default_rng(2)
    x = np.asarray(gmm.sample(jax.random.PRNGKey(3), n))
    h = t / steps
    for k in range(steps):
        beta = 0.1 + 19.9 * (k + 0.5) * h  # midpoint rate: second-order accurate for this linear SDE
        x = x - 0.5 * beta * h * x + np.sqrt(beta * h) * rng.normal(size=x.shape)
    gt = gmm.diffuse(sch, t)
    # Moments within standard errors.
    cov = np.asarray(gt.covariance())
    z_mean = (x.mean(0) - gt.mean()) / np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(z_mean) < Z), z_mean
    centred = x - np.asarray(gt.mean())
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        prod = centred[:, i] * centred[:, j]
        assert abs((prod.mean() - cov[i, j]) / (prod.std() / np.sqrt(n))) < Z
    # Cross-entropy gap: E_sim[-log p_t] vs E_{p_t}[-log p_t] from independent exact samples.
    exact = gt.sample(jax.random.PRNGKey(4), n)
    ce_sim, ce_exact = gdj.cross_entropy(x, gt), gdj.cross_entropy(exact, gt)
    gap = float(ce_sim.value - ce_exact.value)
    se = float(np.hypot(ce_sim.stderr, ce_exact.stderr))
    assert abs(gap) < Z * se
    # Negative control: the same statistic rejects a slightly wrong law (means shifted by 0.6; same entropy, so
    # the gap is KL(p_t || wrong) > 0).
    wrong = gdj.GaussianMixture(gt.weights, gt.means + jnp.array([0.6, 0.0]), gt.covariances)
    ce_sim_w, ce_exact_w = gdj.cross_entropy(x, wrong), gdj.cross_entropy(wrong.sample(jax.random.PRNGKey(5), n), wrong)
    gap_w = float(ce_sim_w.value - ce_exact_w.value)
    assert gap_w > 2 * Z * float(np.hypot(ce_sim_w.stderr, ce_exact_w.stderr))


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="weights"):
        gdj.GaussianMixture([0.5, -0.5], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        gdj.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        gdj.GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="variances"):
        gdj.GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, np.nan]])
    gmm = _mixture_3x2()
    with pytest.raises(ValueError, match="points"):
        gmm.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="region"):
        gdj.maximize_hessian_norm(gmm)


def test_float32_matches_float64():
    gmm = _mixture_3x2()
    g32 = gdj.cast(gmm, jnp.float32)
    x = np.random.default_rng(3).normal(size=(8, 2)) * 2
    t64 = gmm.diffuse(gdj.LinearBeta(), 0.1)
    t32 = g32.diffuse(gdj.LinearBeta(), 0.1)  # the schedule is cast to the mixture's precision
    assert t32.means.dtype == jnp.float32
    np.testing.assert_allclose(t32.log_prob(x.astype(np.float32)), t64.log_prob(x), rtol=2e-6)
    s64 = np.asarray(t64.score(x))
    np.testing.assert_allclose(t32.score(x.astype(np.float32)), s64, rtol=1e-4, atol=1e-5 * np.abs(s64).max())


# ------------------------------------------------------------------------------------------ Lipschitz
def test_lipschitz_single_gaussian_is_exact():
    lam = np.array([0.05, 0.7, 2.0])
    u = _rotation(3, 4)
    gmm = gdj.GaussianMixture([1.0], [[0.3, -1.0, 2.0]], (u * lam) @ u.T[None])
    sch = gdj.LinearBeta()
    for t in [0.0, 0.02, 0.3]:
        res = gdj.score_lipschitz(gmm, sch, t)
        expected = 1 / (float(sch.alpha_bar(t)) * lam.min() + float(sch.one_minus_alpha_bar(t)))
        assert res.kind == "exact"
        np.testing.assert_allclose(res.value, expected, rtol=1e-12)
        np.testing.assert_allclose(gdj.gaussian_score_lipschitz(lam, sch, t), expected, rtol=1e-12)
    # The Hessian of one Gaussian is constant: its norm anywhere is the constant.
    x = np.random.default_rng(4).normal(size=(5, 3)) * 3
    np.testing.assert_allclose(
        gdj.hessian_norm(gmm.diffuse(sch, 0.02), x), gdj.score_lipschitz(gmm, sch, 0.02).value, rtol=1e-12
    )


def test_symmetric_pair_attains_the_shared_covariance_bound():
    """MATH.md's 24.2009, reconstructed: means +-(2, 0), Sigma = 0.3 I, at OU time tau = 0.05 (abar = e^-0.1)."""
    pair = gdj.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [[0.3, 0.3], [0.3, 0.3]])
    law = pair.at_alpha_bar(np.exp(-0.1))
    bound = gdj.score_lipschitz(law)
    assert bound.kind == "tight_bound"
    assert round(float(bound.value), 4) == 24.2009
    found = gdj.maximize_hessian_norm(law, radius=4.0)
    np.testing.assert_allclose(found.value, bound.value, rtol=1e-9)
    assert np.linalg.norm(found.argmax) < 1e-3  # the midpoint, where both components weigh 1/2
    np.testing.assert_allclose(found.log_density, law.log_prob(found.argmax), rtol=1e-12)
    # A shared-covariance mixture whose mean gaps are not top eigenvectors: a bound, not attained; k-free.
    three = gdj.GaussianMixture([0.2, 0.3, 0.5], [[0.0, 0.0], [1.0, 2.0], [-1.0, 1.5]], [[1.0, 0.2]] * 3)
    b3 = gdj.score_lipschitz(three)
    f3 = gdj.maximize_hessian_norm(three, radius=6.0)
    assert b3.kind == "tight_bound" and float(f3.value) <= float(b3.value) * (1 + 1e-9)
    pts = np.random.default_rng(5).normal(size=(50, 2)) * 3
    lo, hi = gdj.hessian_eigenvalue_bounds(three, pts)
    eig = np.linalg.eigvalsh(three.hessian(pts))
    assert np.all(eig[:, 0] >= lo - 1e-10) and np.all(eig[:, -1] <= hi + 1e-10)


def _math_crossing_example():
    """MATH.md section 5's crossing-covariance mixture (every pair of covariances crosses)."""
    covs = [[[1.0, 0.4], [0.4, 0.6]], [[0.3, 0.0], [0.0, 1.2]], [[0.5, -0.2], [-0.2, 0.3]]]
    return gdj.GaussianMixture([0.45, 0.35, 0.20], [[-2.0, 0.0], [2.0, 1.0], [0.5, -2.0]], covs)


@jax.jit
def _autodiff_hessian_norm(law, x):
    """|Hessian of log p|_2 by autodiff of the log-density: independent of the closed-form Hessian."""
    h = jax.vmap(jax.hessian(law.log_prob))(x)
    return jnp.max(jnp.abs(jnp.linalg.eigvalsh(h)), axis=-1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_math_crossing_example_reproduces_the_printed_maxima(dtype):
    """MATH.md section 5: max |Hessian of log p_0|_2 on [-R, R]^2 is 43.51, 141.38, 983.74 for R = 4, 8, 16, on the
    box boundary, and the maximizer moves to another boundary ray between R = 8 and 16."""
    law = gdj.cast(_math_crossing_example(), dtype)
    assert gdj.score_lipschitz(law).kind == "unbounded"
    argmaxes = []
    for r, printed in [(4.0, 43.51), (8.0, 141.38), (16.0, 983.74)]:
        found = gdj.maximize_hessian_norm(law, radius=r)
        assert round(float(found.value), 2) == printed, (r, float(found.value))
        x = np.asarray(found.argmax, dtype=np.float64)
        assert np.isclose(np.max(np.abs(x)), r, rtol=1e-6)  # on the boundary
        argmaxes.append(x / r)
        # No point of a dense scan of the four edges (autodiff Hessian, float64) beats it by more than the
        # optimizer's accuracy, and the scan's own best is within the scan's resolution of it.
        s = np.linspace(-r, r, 4001)
        edges = np.concatenate([np.stack([s, np.full_like(s, c)], 1) for c in (-r, r)])
        edges = np.concatenate([edges, edges[:, ::-1]])
        scan = np.asarray(_autodiff_hessian_norm(_math_crossing_example(), jnp.asarray(edges)))
        assert np.max(scan) <= float(found.value) * (1 + 1e-5)
        assert np.max(scan) >= float(found.value) * (1 - 1e-2)
    # R = 4 and 8: the bottom edge at nearly the same direction; R = 16: the top edge.
    assert argmaxes[0][1] == -1 and argmaxes[1][1] == -1 and abs(argmaxes[0][0] - argmaxes[1][0]) < 0.05
    assert argmaxes[2][1] == 1


def test_crossing_covariances_are_unbounded_and_grow_with_the_region():
    # A symmetric pair with crossing covariances (diag(1, 0.3) vs diag(0.3, 1)); MATH.md's own example is tested
    # to its printed digits above: here the property tested is the growth itself.
    cross = gdj.GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [[1.0, 0.3], [0.3, 1.0]])
    law = cross.at_alpha_bar(np.exp(-0.1))
    res = gdj.score_lipschitz(law)
    assert res.kind == "unbounded" and np.isinf(res.value) and res.crossing_pairs == ((0, 1),)
    assert gdj.covariance_crossings(cross) == [(0, 1)]
    values, dens = [], []
    for r in [4.0, 8.0, 16.0]:
        m = gdj.maximize_hessian_norm(law, radius=r)
        values.append(float(m.value))
        dens.append(float(m.density))
        lo, hi = gdj.hessian_eigenvalue_bounds(law, m.argmax)
        assert float(m.value) <= max(-float(lo), float(hi)) * (1 + 1e-9)
    ratios = np.diff(np.log(values)) / np.log(2)
    assert np.all(ratios > 1.5), values  # quadratic growth (exponent -> 2) in the box size
    assert dens[-1] < 1e-30  # the worst point carries negligible mass
    # Nested (non-crossing) distinct covariances: finite, but no closed form -> nan, never a number.
    nested = gdj.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 0.0]], [[0.3, 0.3], [1.0, 2.0]])
    assert gdj.score_lipschitz(nested).kind == "no_closed_form"
    # A crossing pair hidden at infinity by a broad third component: no closed form either.
    hidden = gdj.GaussianMixture([0.4, 0.4, 0.2], [[0.0, 0.0]] * 3, [[1.0, 0.3], [0.3, 1.0], [5.0, 5.0]])
    h = gdj.score_lipschitz(hidden)
    assert h.kind == "no_closed_form" and np.isnan(h.value) and h.crossing_pairs == ((0, 1),)
    exposed = gdj.GaussianMixture([0.4, 0.4, 0.2], [[0.0, 0.0]] * 3, [[1.0, 0.3], [0.3, 1.0], [0.1, 0.1]])
    assert gdj.score_lipschitz(exposed).kind == "unbounded"


# ------------------------------------------------------------------------------------------ Monte Carlo
def _gaussian_in_full_coordinates(lam, mean_eig, seed):
    u = _rotation(len(lam), seed)
    cov = (u * lam) @ u.T
    return gdj.GaussianMixture([1.0], (u @ mean_eig)[None], cov[None]), u


@pytest.mark.parametrize(
    "sampler",
    [gdj.DDIM(eta=0.5), gdj.DDPM(), gdj.Euler(), gdj.Heun(), gdj.EulerMaruyama(), gdj.ExponentialIntegrator()],
    ids=lambda s: f"{type(s).__name__}{getattr(s, 'eta', '')}",
)
def test_simulate_matches_closed_form(sampler):
    """The literal update rules with a generic score reproduce sample_law (full coordinates, z-scores)."""
    lam, m = np.array([0.05, 0.6, 2.5]), np.array([0.5, -1.0, 0.3])
    gmm, u = _gaussian_in_full_coordinates(lam, m, seed=6)
    sch, ts = gdj.LinearBeta(), jnp.linspace(1.0, 1e-3, 11)
    n = 20_000
    y = gdj.simulate(sampler, sch, ts, gdj.mixture_score(gmm, sch), jax.random.PRNGKey(7), n, dim=3)
    law = gdj.sample_law(gdj.GaussianSource(lam, mean=m), sch, sampler, ts)
    z = np.asarray(y) @ u  # eigen-coordinates
    v = np.asarray(law.variance)
    assert np.all(np.abs((z.mean(0) - law.mean_multiplier * m) / np.sqrt(v / n)) < Z)
    assert np.all(np.abs((z.var(0, ddof=1) - v) / (v * np.sqrt(2 / (n - 1)))) < Z)


def test_flow_log_density_gives_exact_kl():
    """DDIM(eta=0) is a flow map: log q by the Jacobian, KL(sample || target) by MC = closed form."""
    lam, m = np.array([0.3, 1.7]), np.array([1.0, -0.5])
    gmm, _ = _gaussian_in_full_coordinates(lam, m, seed=8)
    sch = gdj.Tangent(1.0)
    ts = jnp.linspace(1.0, 0.0, 5)  # abar = 0 at t = 1: DDIM needs the denoiser there
    y, log_q = gdj.simulate(
        gdj.DDIM(),
        sch,
        ts,
        gdj.mixture_score(gmm, sch),
        jax.random.PRNGKey(9),
        4000,
        dim=2,
        denoiser_fn=gdj.mixture_denoiser(gmm, sch),
        log_density=True,
    )
    est = gdj.kl_estimate(log_q, gmm.log_prob(y))
    src = gdj.GaussianSource(lam, mean=m)
    exact = gdj.kl(src, gdj.sample_law(src, sch, gdj.DDIM(), ts), direction="sample_to_target")
    assert float(exact) > 0.05
    assert abs(float(est.z_score(exact))) < Z
    with pytest.raises(ValueError, match="deterministic"):
        gdj.simulate(
            gdj.DDPM(), sch, ts, gdj.mixture_score(gmm, sch), jax.random.PRNGKey(0), 10, dim=2, log_density=True
        )


def test_w2_estimators_resolve_a_known_distance():
    rng = np.random.default_rng(10)
    n = 2000
    x = rng.normal(size=(n, 2))
    ref = rng.normal(size=(n, 2))
    shift = np.array([0.6, 0.0])
    y = rng.normal(size=(n, 2)) + shift  # W2 = 0.6 exactly
    est = gdj.w2_exact_ot(y, x, reference=ref, num_batches=4)
    assert est.floor < 0.3 and abs(est.value - 0.6) < max(est.floor, 4 * est.stderr)
    same = gdj.w2_exact_ot(ref, x, num_batches=4)
    assert same.value < 0.3
    sw = gdj.sliced_w2(jax.random.PRNGKey(0), jnp.asarray(y), jnp.asarray(x))
    assert 0.3 < float(sw) < 0.6  # sliced W2 of a shift s is |s| / sqrt(d) on average over directions


def test_pythagorean_identity_for_the_covariance_matched_linear_denoiser():
    """MATH.md section 4 (ii): KL(p||q) = KL(p||N(mu, Sigma)) + KL(N(mu, Sigma)||q) for q from the linear denoiser."""
    gmm = _mixture_3x2()
    src, basis = gmm.moment_matched()
    mean, cov = gmm.mean(), gmm.covariance()
    sch, ts = gdj.LinearBeta(), jnp.linspace(1.0, 0.0, 7)
    law = gdj.sample_law(src, sch, gdj.DDPM(), ts)  # q: Gaussian, in closed form
    q_mean = basis @ (law.mean_multiplier * src.mean)
    q_cov = (basis * law.variance) @ basis.T
    # q really is the output of the sampler run with the linear score (literal simulation, z-scores).
    n = 20_000
    y = np.asarray(
        gdj.simulate(gdj.DDPM(), sch, ts, gdj.linear_score(mean, cov, sch), jax.random.PRNGKey(11), n, dim=2)
    )
    assert np.all(np.abs((y.mean(0) - q_mean) / np.sqrt(np.diag(q_cov) / n)) < Z)
    x = gmm.sample(jax.random.PRNGKey(12), 100_000)
    log_p, log_n = gmm.log_prob(x), multivariate_normal(mean, cov).logpdf(np.asarray(x))
    log_q = multivariate_normal(q_mean, q_cov).logpdf(np.asarray(x))
    kl_pq, kl_pn = gdj.kl_estimate(log_p, log_q), gdj.kl_estimate(log_p, log_n)
    kl_nq = float(gdj.kl(src, law, target="data"))  # KL(N(mu, Sigma) || q), closed form
    cross = gdj.kl_estimate(log_n, log_q)  # = KL(p||q) - KL(p||N) on common samples
    assert kl_nq > 0.01 and float(kl_pn.value) > 0.1
    assert abs(float(cross.z_score(kl_nq))) < Z
    np.testing.assert_allclose(float(kl_pq.value), float(kl_pn.value) + kl_nq, atol=Z * float(cross.stderr))
    # Negative control: the identity needs N to be the moment-matched Gaussian (q may be any Gaussian); with
    # N' = N(mu, 1.3 Sigma) the same statistic misses KL(N'||q) by many standard errors.
    cov_b = 1.3 * np.asarray(cov)
    log_nb = multivariate_normal(mean, cov_b).logpdf(np.asarray(x))
    q_c = np.asarray(q_cov)
    exact_nbq = 0.5 * (
        np.trace(np.linalg.solve(q_c, cov_b))
        - 2
        + np.log(np.linalg.det(q_c) / np.linalg.det(cov_b))
        + (mean - q_mean) @ np.linalg.solve(q_c, mean - q_mean)
    )
    assert abs(float(gdj.kl_estimate(log_nb, log_q).z_score(exact_nbq))) > 10
