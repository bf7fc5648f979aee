r"""Invariants of the exact laws (MATH.md sections 2-4, 6), checked on random spectra and grids.

- exactness at $\lambda = 1$ (Euler, Heun, RK4, DDPM with $Q = \beta_k$), and what is true for DDIM there
  (the rotation formula $r = \prod_k\cos^2\Delta\theta_k / R^2(t_0)$, which is *not* 1);
- the ODE init factor $v^{\rm standard} = v^{\rm exact}/R^2(t_0)$ of deterministic samplers;
- KL $\ge 0$ both ways and KL / $W_2^2$ equal to the general (dense-matrix) Gaussian formulas;
- convergence orders 1 / 2 / 4 and the continuous-time limits;
- the DDIM asymptotics table and worked example, and the [PG] CIFAR-10 table (MATH.md section 6).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import gaussdiff_jax as gdj

SAMPLERS = {
    "EM": gdj.EulerMaruyama(),
    "EI": gdj.ExponentialIntegrator(),
    "DDPM-discrete-beta": gdj.DDPM(beta="discrete", variance="beta"),
    "DDPM-discrete-posterior": gdj.DDPM(beta="discrete", variance="posterior"),
    "DDPM-linearized-beta": gdj.DDPM(beta="linearized", variance="beta"),
    "DDPM-linearized-posterior": gdj.DDPM(beta="linearized", variance="posterior"),
    "Euler": gdj.Euler(),
    "Heun": gdj.Heun(),
    "RK4": gdj.RK4(),
    "DDIM-0": gdj.DDIM(eta=0.0),
    "DDIM-0.5": gdj.DDIM(eta=0.5),
    "DDIM-1": gdj.DDIM(eta=1.0),
    "EDMHeun": gdj.EDMHeun(),
}
DETERMINISTIC = ("Euler", "Heun", "RK4", "DDIM-0", "EDMHeun")
EXACT_AT_ONE = ("Euler", "Heun", "RK4", "DDPM-discrete-beta", "DDPM-linearized-beta")
INITS = ("standard", "exact")
# Convergence orders and continuous limits (below) are measured on the same compiled run.
ORDER = {
    "EM": 1, "EI": 1, "DDPM-discrete-beta": 1, "DDPM-linearized-beta": 1, "Euler": 1, "DDIM-0": 1,
    "Heun": 2, "EDMHeun": 2, "RK4": 4,
}
LIMIT_KIND = {"EM": "sde", "EI": "sde", "DDPM-discrete-beta": "sde", "DDPM-linearized-beta": "sde",
              "Euler": "ode", "Heun": "ode", "RK4": "ode"}
# What the run computes (compilations dominate the runtime, so only what the tests below use).
_STANDARD = set(DETERMINISTIC) | {"EM", "DDPM-discrete-beta"} | set(LIMIT_KIND)
_EXACT = set(DETERMINISTIC) | {"EM", "DDPM-discrete-beta", "EI", "DDPM-discrete-posterior", "DDIM-0.5", "DDIM-1"} | set(ORDER)
RUNS = {name: tuple(i for i, names in (("standard", _STANDARD), ("exact", _EXACT)) if name in names) for name in SAMPLERS}
RUNS = {name: inits for name, inits in RUNS.items() if inits}

# ----------------------------------------------------------------------------------------------
# One vmapped run over rows: 32 random problems (spectra, means, linear-beta schedules, non-uniform
# grids) and the convergence-order problems (N = 40..320 uniform steps). Every grid is padded to the
# same length with steps of PAD = 1e-10 after its last point, so one compilation serves all rows;
# the padding changes a law by O(PAD) relative (far below every error measured here), every exact
# identity tested below holds on any grid, padded or not, and targets are taken at the last time.

BATCH, DIM, STEPS = 32, 6, 30
ORDER_NS = (40, 80, 160, 320)
LENGTH, PAD = max(ORDER_NS) + 1, 1e-10


def _pad(ts):
    return np.concatenate([ts, ts[-1] - PAD * np.arange(1, LENGTH - len(ts) + 1)])


def _random_batch(seed=0):
    rng = np.random.default_rng(seed)
    lam = 10.0 ** rng.uniform(-4, 3, (BATCH, DIM))
    lam[:, 0] = 1.0  # every problem has a mode with lambda = 1
    mean = rng.normal(0.0, 1.0, (BATCH, DIM))
    beta_min, beta_max = rng.uniform(0.05, 0.2, BATCH), rng.uniform(8.0, 20.0, BATCH)
    t0, t_min = rng.uniform(0.7, 1.0, BATCH), 10.0 ** rng.uniform(-3, -1, BATCH)
    # Sine-warped grids with jitter: small steps where beta is large (DDPM-linearized needs h beta < 1).
    u = (np.arange(STEPS + 1) + 0.3 * (rng.random((BATCH, STEPS + 1)) - 0.5)) / STEPS
    u[:, 0], u[:, -1] = 0.0, 1.0
    ts = t_min[:, None] + (t0 - t_min)[:, None] * np.sin(0.5 * np.pi * (1 - u))
    return lam, mean, beta_min, beta_max, ts


# Order problems: smooth regime (t from 0.6 to 0.05, lambdas O(1)), measured on columns ORDER_COLS.
ORDER_LAM = np.array([1.0, 0.3, 3.0, 0.05, 1.0, 10.0])
ORDER_COLS = [1, 2]
T_MAX, T_MIN = 0.6, 0.05


@eqx.filter_jit
def _all_runs(lam, mean, beta_min, beta_max, ts):
    def one(lam, mean, beta_min, beta_max, ts):
        source, schedule = gdj.GaussianSource(lam, mean=mean), gdj.LinearBeta(beta_min, beta_max)
        laws = {
            name: {i: gdj.sample_law(source, schedule, SAMPLERS[name], ts, init=i) for i in inits}
            for name, inits in RUNS.items()
        }
        divergences = {
            name: {
                i: {
                    (target, direction): gdj.kl(source, law, target=target, direction=direction)
                    for target in ("data", "truncated")
                    for direction in ("target_to_sample", "sample_to_target")
                }
                | {(target, "w2_squared"): gdj.w2_squared(source, law, target=target) for target in ("data", "truncated")}
                for i, law in by_init.items()
            }
            for name, by_init in laws.items()
        }
        limits = {
            "p_t_min": gdj.continuous_limit(source, schedule, ts[0], ts[-1], init="exact"),
            "sde": gdj.continuous_limit(source, schedule, ts[0], ts[-1], kind="sde", init="standard"),
            "ode": gdj.continuous_limit(source, schedule, ts[0], ts[-1], kind="ode", init="standard"),
        }
        return laws, divergences, schedule.alpha_bar(ts), limits

    return jax.vmap(one)(lam, mean, beta_min, beta_max, ts)


@pytest.fixture(scope="module")
def all_runs():
    lam, mean, beta_min, beta_max, ts = _random_batch()
    k = len(ORDER_NS)
    order_ts = [_pad(np.linspace(T_MAX, T_MIN, N + 1)) for N in ORDER_NS]
    rows = (
        np.concatenate([lam, np.tile(ORDER_LAM, (k, 1))]),
        np.concatenate([mean, np.ones((k, DIM))]),
        np.concatenate([beta_min, np.full(k, 0.1)]),
        np.concatenate([beta_max, np.full(k, 20.0)]),
        np.stack([_pad(row) for row in ts] + order_ts),
    )
    out = jax.tree_util.tree_map(np.asarray, _all_runs(*(jnp.asarray(x) for x in rows)))
    return dict(lam=lam, mean=mean, beta_min=beta_min, beta_max=beta_max, ts=ts, out=out)


@pytest.fixture(scope="module")
def batch(all_runs):
    laws, divs, alpha_bars, _ = jax.tree_util.tree_map(lambda x: x[:BATCH], all_runs["out"])
    return {key: all_runs[key] for key in ("lam", "mean", "beta_min", "beta_max", "ts")} | dict(
        laws=laws, divs=divs, alpha_bars=alpha_bars, ab0=alpha_bars[:, 0], ab_min=alpha_bars[:, -1]
    )


@pytest.fixture(scope="module")
def order_runs(all_runs):
    """(laws by sampler and init, limits), rows = ORDER_NS, columns = ORDER_COLS."""
    laws, _, _, limits = jax.tree_util.tree_map(lambda x: x[BATCH:, ORDER_COLS] if x.ndim == 2 else x[BATCH:], all_runs["out"])
    return laws, limits


def test_random_grids_are_non_uniform_and_valid(batch):
    h = -np.diff(batch["ts"], axis=1)
    assert np.all(h > 0) and np.all(batch["ts"] <= 1)
    assert np.all(h.max(axis=1) / h.min(axis=1) > 3)
    beta_at = batch["beta_min"][:, None] + (batch["beta_max"] - batch["beta_min"])[:, None] * batch["ts"][:, :-1]
    assert np.max(h * beta_at) < 1


@pytest.mark.parametrize("name", EXACT_AT_ONE)
def test_exact_at_lambda_one(batch, name):
    """At lambda = 1 every marginal is N(sqrt(abar) m, 1) (and so is N(0, I): both inits start at v = 1);
    these samplers keep the variance exactly 1."""
    law = batch["laws"][name]["exact"]
    np.testing.assert_allclose(np.asarray(law.variance)[:, 0], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(law.log_variance_ratio)[:, 0], 0.0, rtol=0, atol=1e-12)


def test_ddpm_discrete_mean_is_exact_at_lambda_one(batch):
    # (x + beta_k s)/sqrt(1 - beta_k) maps sqrt(abar) m to sqrt(abar') m exactly when lambda = 1.
    law = batch["laws"]["DDPM-discrete-beta"]["exact"]
    np.testing.assert_allclose(np.asarray(law.mean_deviation)[:, 0], 0.0, atol=1e-12)


@pytest.mark.parametrize("name", ["EM", "EI", "DDIM-0", "DDIM-0.5", "DDPM-discrete-posterior", "EDMHeun"])
def test_not_exact_at_lambda_one(batch, name):
    """Negative control: these samplers do change the variance of a lambda = 1 mode."""
    law = batch["laws"][name]["exact"]
    assert np.all(np.abs(np.asarray(law.log_variance_ratio)[:, 0]) > 1e-4)


def _ddim_log_ratio_rotation(lam, alpha_bars, ab0):
    r"""Rotation form (MATH.md section 4): $\ln r = \sum_k\ln\cos^2(\theta_k - \theta_{k+1}) - \ln R^2(t_0)$,
    $\theta = \mathrm{atan2}(\sqrt{1-\bar\alpha}, \sqrt{\lambda\bar\alpha})$, from `standard` init (numpy)."""
    theta = np.arctan2(np.sqrt(1 - alpha_bars)[..., None], np.sqrt(lam[..., None, :] * alpha_bars[..., None]))
    log_cos2 = 2 * np.log(np.cos(np.diff(theta, axis=-2)))
    return log_cos2.sum(axis=-2) - np.log(ab0[..., None] * lam + 1 - ab0[..., None])


def test_ddim_rotation_formula(batch):
    """DDIM(eta=0) from N(0, I): v / R^2(t_min) = prod cos^2(dtheta) / R^2(t_0), for every lambda.

    At lambda = 1 this is prod cos^2(dtheta) < 1, not 1: DDIM is *not* exact at lambda = 1 (MATH.md
    section 2: each step multiplies the variance by cos^2 of the angle step).
    """
    expected = _ddim_log_ratio_rotation(batch["lam"], batch["alpha_bars"], batch["ab0"])
    got = np.asarray(batch["laws"]["DDIM-0"]["standard"].log_variance_ratio)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    assert np.all(got[:, 0] < -1e-4)  # under-dispersed at lambda = 1


@eqx.filter_jit
def _ddim_tangent(source, ts):
    """DDIM(eta=0) on sigma = tan(pi t / 2) from N(0, I): the law, KL(p0 || sample), and abar on the grid."""
    schedule = gdj.Tangent(1.0)
    law = gdj.sample_law(source, schedule, gdj.DDIM(), ts, init="standard")
    return law, gdj.kl(source, law, target="data", direction="target_to_sample"), schedule.alpha_bar(ts)


def test_ddim_worked_example():
    """lambda = 2, grid abar = (0, 0.5, 1) (Tangent(1) at t = 1, 0.5, 0): r = 2/9, v = 4/9."""
    law, kl, alpha_bars = _ddim_tangent(gdj.GaussianSource(jnp.array([2.0])), jnp.array([1.0, 0.5, 0.0]))
    np.testing.assert_allclose(alpha_bars, [0.0, 0.5, 1.0], atol=1e-15)
    np.testing.assert_allclose(law.variance, [4 / 9], rtol=1e-13)
    np.testing.assert_allclose(jnp.exp(law.log_variance_ratio), [2 / 9], rtol=1e-13)
    r = 2 / 9
    np.testing.assert_allclose(kl, 0.5 * (1 / r - 1 + np.log(r)), rtol=1e-13)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_init_factor(batch, name):
    """Deterministic samplers: v_standard = v_exact / R^2(t0), mode by mode, any grid."""
    R2_0 = batch["ab0"][:, None] * batch["lam"] + 1 - batch["ab0"][:, None]
    v_std = np.asarray(batch["laws"][name]["standard"].variance)
    v_exact = np.asarray(batch["laws"][name]["exact"].variance)
    np.testing.assert_allclose(v_std, v_exact / R2_0, rtol=1e-11)


def test_init_factor_fails_for_stochastic_samplers(batch):
    R2_0 = batch["ab0"][:, None] * batch["lam"] + 1 - batch["ab0"][:, None]
    for name in ("EM", "DDPM-discrete-beta"):
        v_std = np.asarray(batch["laws"][name]["standard"].variance)
        v_exact = np.asarray(batch["laws"][name]["exact"].variance)
        assert np.max(np.abs(v_std * R2_0 / v_exact - 1)) > 1e-3, name


def test_ddim_eta_one_is_ddpm_posterior(batch):
    """MATH.md section 2: DDIM(eta=1) is DDPM ancestral sampling with the posterior variance."""
    a, b = batch["laws"]["DDIM-1"]["exact"], batch["laws"]["DDPM-discrete-posterior"]["exact"]
    np.testing.assert_allclose(a.variance, b.variance, rtol=1e-10)
    np.testing.assert_allclose(a.mean_multiplier, b.mean_multiplier, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_divergences_nonnegative(batch, name):
    for init in RUNS[name]:
        for key, value in batch["divs"][name][init].items():
            value = np.asarray(value)
            assert np.all(np.isfinite(value)), (init, key)
            assert np.all(value >= 0), (init, key, value.min())
            assert np.all(value > 0), (init, key)  # none of these random problems is exact


def _dense_kl(m1, S1, m2, S2):
    """KL(N(m1, S1) || N(m2, S2)) with dense matrices (general formula)."""
    d = len(m1)
    S2_inv = np.linalg.inv(S2)
    diff = m2 - m1
    _, logdet1 = np.linalg.slogdet(S1)
    _, logdet2 = np.linalg.slogdet(S2)
    return 0.5 * (np.trace(S2_inv @ S1) - d + diff @ S2_inv @ diff + logdet2 - logdet1)


def _dense_w2_squared(m1, S1, m2, S2):
    """W2^2 between Gaussians with dense matrices (general formula, matrix square roots)."""
    r2 = scipy.linalg.sqrtm(S2).real
    cross = scipy.linalg.sqrtm(r2 @ S1 @ r2).real
    return float(np.sum((m1 - m2) ** 2) + np.trace(S1 + S2 - 2 * cross))


@pytest.mark.parametrize("name", ["EM", "DDPM-discrete-beta", "Heun", "DDIM-0", "EDMHeun"])
def test_divergences_match_dense_gaussian_formulas(batch, name):
    """The package's KL / W2^2 equal the general Gaussian formulas in rotated full coordinates."""
    rng = np.random.default_rng(5)
    for b in range(0, BATCH, 8):
        lam, m = batch["lam"][b], batch["mean"][b]
        q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        law = jax.tree_util.tree_map(lambda x: np.asarray(x)[b], batch["laws"][name]["standard"])
        sample = (q @ (law.mean_multiplier * m), (q * law.variance) @ q.T)
        ab = batch["ab_min"][b]
        targets = {
            "data": (q @ m, (q * lam) @ q.T),
            "truncated": (np.sqrt(ab) * (q @ m), (q * (ab * lam + 1 - ab)) @ q.T),
        }
        for target, (mt, St) in targets.items():
            divs = batch["divs"][name]["standard"]
            np.testing.assert_allclose(divs[(target, "target_to_sample")][b], _dense_kl(mt, St, *sample), rtol=1e-7)
            np.testing.assert_allclose(divs[(target, "sample_to_target")][b], _dense_kl(*sample, mt, St), rtol=1e-7)
            np.testing.assert_allclose(divs[(target, "w2_squared")][b], _dense_w2_squared(*sample, mt, St), rtol=1e-7)


# ----------------------------------------------------------------------------------------------
# Convergence orders and continuous limits (smooth regime: t from 0.6 to 0.05, lambdas O(1)), on the
# order rows of the shared run.


def _slopes(errors):
    """Least-squares slope of log|error| against log N, per mode (errors: (len(ORDER_NS), d))."""
    return np.polyfit(np.log(ORDER_NS), np.log(np.abs(np.asarray(errors))), 1)[0]


@pytest.mark.parametrize("name", sorted(ORDER))
def test_convergence_order(order_runs, name):
    """Init exact, target truncated: the per-mode variance error decays like N^-order (slope within 0.15)."""
    laws, limits = order_runs
    law, target = laws[name]["exact"], limits["p_t_min"]
    np.testing.assert_allclose(target.log_variance_ratio, 0.0, atol=1e-15)  # p_t_min itself
    np.testing.assert_allclose(_slopes(law.variance - target.variance), -ORDER[name], atol=0.15)
    # The stored log-ratio is the same error in relative form, computed without cancellation.
    np.testing.assert_allclose(_slopes(law.log_variance_ratio), -ORDER[name], atol=0.15)


@pytest.mark.parametrize("name", sorted(LIMIT_KIND))
def test_continuous_limit_reached(order_runs, name):
    """From N(0, I): EM/EI/DDPM tend to the reverse-SDE limit, Euler/Heun/RK4 to the PF-ODE limit, at their
    order's rate (variance and mean multiplier), and end closer to their own limit than to the other."""
    laws, limits = order_runs
    kind = LIMIT_KIND[name]
    law, limit, other = laws[name]["standard"], limits[kind], limits["ode" if kind == "sde" else "sde"]
    var_err = np.asarray(law.variance - limit.variance)
    np.testing.assert_allclose(_slopes(var_err), -ORDER[name], atol=0.15)
    mean_err = np.asarray(law.mean_multiplier - limit.mean_multiplier)
    if name == "DDPM-discrete-beta":
        # Its mean multiplier is the SDE's exactly, for any grid: the per-step gain telescopes to
        # prod sqrt(abar_k/abar_{k+1}) R^2_{k+1}/R^2_k = e^{-kappa} R^2_min / R^2_max.
        np.testing.assert_allclose(mean_err, 0.0, atol=1e-14)
    else:
        np.testing.assert_allclose(_slopes(mean_err), -ORDER[name], atol=0.15)
    assert np.linalg.norm(var_err[-1]) < 0.5 * np.linalg.norm(np.asarray(law.variance - other.variance)[-1])


# ----------------------------------------------------------------------------------------------
# Published values (MATH.md section 6)


ASYMPTOTICS_LAM = np.array([0.05, 0.4, 1.5, 6.0])
ASYMPTOTICS = {10: 18.445, 100: 15.186, 1000: 14.970, 5000: 14.952}  # N^2 KL(p0 || sample), MATH.md section 6


def _uniform_grid_padded(N, length, pad=1e-13):
    """The uniform grid 1, 1 - 1/N, ..., 0, with length - N - 1 extra points 1 - pad, 1 - 2 pad, ... inside
    its first step, so that every N has the same grid length (one compilation for the whole table).

    Near t = 1 on this schedule theta moves by ~ pad per extra point, so the extra steps change ln r by
    ~ 1e-9 at most (checked below against the rotation formula on the plain grid).
    """
    extra = 1.0 - pad * np.arange(1, length - N)
    return np.concatenate([[1.0], extra, np.linspace(1.0, 0.0, N + 1)[1:]])


def _kl_rotation_formula(lam, N):
    """KL(p0 || DDIM output) on the plain uniform grid, from the rotation form (numpy, MATH.md section 4)."""
    alpha_bars = 1 / (1 + np.tan(0.5 * np.pi * np.linspace(1.0, 0.0, N + 1)) ** 2)
    alpha_bars[0] = 0.0
    log_r = _ddim_log_ratio_rotation(lam, alpha_bars, np.asarray(0.0))
    return 0.5 * np.sum(np.expm1(-log_r) + log_r)


def test_ddim_asymptotics_table():
    """DDIM on sigma = tan(pi t / 2), uniform grid from t = 1 to 0, standard init: N^2 KL(p0 || sample)."""
    length = max(ASYMPTOTICS) + 1
    grids = jnp.asarray(np.stack([_uniform_grid_padded(N, length) for N in ASYMPTOTICS]))
    source = gdj.GaussianSource(jnp.asarray(ASYMPTOTICS_LAM))
    _, kls, _ = jax.vmap(lambda ts: _ddim_tangent(source, ts))(grids)
    for (N, value), kl in zip(ASYMPTOTICS.items(), np.asarray(kls)):
        np.testing.assert_allclose(kl, _kl_rotation_formula(ASYMPTOTICS_LAM, N), rtol=1e-6)
        assert abs(N**2 * kl - value) <= 6e-4, (N, N**2 * kl)
    # The predicted limit 1/4 sum I_i^2, I_i = pi^2/8 (1/sqrt(lam) + sqrt(lam)) (MATH.md section 4).
    I = np.pi**2 / 8 * (1 / np.sqrt(ASYMPTOTICS_LAM) + np.sqrt(ASYMPTOTICS_LAM))
    np.testing.assert_allclose(0.25 * np.sum(I**2), 14.947, atol=6e-4)
    assert abs(N**2 * kl - 0.25 * np.sum(I**2)) < 0.01


PG_CIFAR = {
    # sampler: (eps, grid points, W2 exact init, W2 standard init) -- [PG] ICML 2025, MATH.md section 6
    "EM": (gdj.EulerMaruyama(), 0.0, 1000, 0.159739, 0.15995),
    "Euler": (gdj.Euler(), 0.0, 1000, 0.102307, 0.167124),
    "Heun": (gdj.Heun(), 1e-3, 500, 0.163235, 0.179439),
    "RK4": (gdj.RK4(), 1e-3, 62, 0.0893907, 0.116041),
}


@eqx.filter_jit
def _pg_cifar_w2(source, grids):
    schedule = gdj.LinearBeta()
    return {
        name: [
            gdj.w2(source, gdj.sample_law(source, schedule, sampler, grids[name], init=init), target="data")
            for init in INITS[::-1]  # exact, standard
        ]
        for name, (sampler, *_) in PG_CIFAR.items()
    }


def test_published_cifar_table():
    """[PG] CIFAR-10 (bundled spectrum, 9 zero eigenvalues), linear beta, W2 to p_0, to 1e-5 relative."""
    source = gdj.GaussianSource(jnp.asarray(gdj.spectra.load("cifar10")))
    grids = {name: jnp.linspace(1.0, eps, points) for name, (_, eps, points, *_) in PG_CIFAR.items()}
    got = _pg_cifar_w2(source, grids)
    for name, (_, _, _, exact, standard) in PG_CIFAR.items():
        np.testing.assert_allclose([float(x) for x in got[name]], [exact, standard], rtol=1e-5, err_msg=name)


@eqx.filter_jit
def _pg_truncation_and_prior(source, eps):
    schedule = gdj.LinearBeta()
    truncation = jax.vmap(
        lambda e: gdj.w2(source, gdj.continuous_limit(source, schedule, 1.0, e, init="exact"), target="data")
    )(eps)
    # N(0, I) as a law (what the standard init starts from), against the truncated target at T = 1.
    ab = schedule.alpha_bar(jnp.asarray(1.0))
    lam = source.eigenvalues
    prior = gdj.GaussianLaw(
        mean_multiplier=jnp.zeros_like(lam),
        variance=jnp.ones_like(lam),
        mean_deviation=-jnp.sqrt(ab) * jnp.ones_like(lam),
        log_variance_ratio=-jnp.log(ab * lam + 1 - ab),
        alpha_bar_min=ab,
        one_minus_alpha_bar_min=1 - ab,
    )
    return truncation, gdj.w2(source, prior, target="truncated")


def test_published_cifar_truncation_and_prior():
    """Truncation alone W2(p_eps, p_0) for eps = 1e-5..1e-2, and W2(N(0, I), p_T) = 0.00546739."""
    source = gdj.GaussianSource(jnp.asarray(gdj.spectra.load("cifar10")))
    truncation, prior = _pg_truncation_and_prior(source, jnp.array([1e-5, 1e-4, 1e-3, 1e-2]))
    np.testing.assert_allclose(truncation, [0.00413434, 0.0259003, 0.178135, 1.354626], rtol=1e-5)
    np.testing.assert_allclose(float(prior), 0.00546739, rtol=1e-5)
