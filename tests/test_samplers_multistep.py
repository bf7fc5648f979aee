r"""The diffusers-zoo multistep samplers (UniPC, DEIS, LMS, PNDM/PLMS, iPNDM), proven independently.

- diffusers' own scheduler loops (`UniPCMultistepScheduler`, `DEISMultistepScheduler`, `LMSDiscreteScheduler`,
  `PNDMScheduler`, `IPNDMScheduler`) run per mode with an exact Gaussian model in float64: their float32 tables
  (`sigmas`, `alphas_cumprod`, iPNDM's `betas`) are replaced by float64 tensors of the same values, so that the
  loops compute in float64 throughout (their `step()` functions keep the sample's dtype); the package runs on the
  float32 table's values (`gdj.Discrete(scheduler.alphas_cumprod)`).
- An independent numpy float64 implementation of each literal loop (`_mc_zoo_multistep`, written from the
  schedulers' code: `np.linalg.solve`, Gauss–Legendre quadrature, the antiderivative forms), per mode to ~1e-10, and
  in full coordinates by Monte Carlo (dense exact score, random rotation, nonzero mean, 100k samples, z < 5).
- float32 vs float64 (slow), convergence orders, gradients vs finite differences, stated residuals, registry.
"""


import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _mc
import _mc_multistep
import _mc_zoo_multistep as zoo
import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

LAM = np.array([0.05, 0.7, 2.5])
MODES = np.array([1e-3, 0.05, 0.7, 2.5, 40.0])
MEAN = np.array([0.3, -1.0, 0.5, 2.0, -0.7])
Z_MAX = 5.0
DISCRETE = gdj.Discrete.from_diffusers("linear")
TABLE = np.asarray(DISCRETE.alphas_cumprod)


def _grid(n: int, end: str = "clean"):
    """diffusers' "linspace" spacing on the linear table: training indices round(linspace(0, 999, n + 1))[::-1][:-1]
    at t = (i + 1)/1000, then the end: "clean" (t = 0, abar = 1) or "first" (the first training level, t = 1e-3)."""
    idx = np.round(np.linspace(0, 999, n + 1)).astype(int)[::-1][:-1]
    last = 0.0 if end == "clean" else 1e-3
    return np.concatenate([(idx + 1) / 1000.0, [last]])


def _abars(schedule, ts):
    return [float(a) for a in np.asarray(schedule.alpha_bar(jnp.asarray(ts)))]


def _mids(schedule, ts, f=0.5):
    return _abars(schedule, ts[:-1] + f * (ts[1:] - ts[:-1]))


# Each case: package sampler, literal loop (model, abars, x) -> x, schedule, grid end.
def _unip_literal(order):
    return lambda model, ab, x: zoo.unipc(model, ab, x, order=order, disable_corrector=tuple(range(len(ab))))


CASES = {
    "unipc-1": (gdj.UniPC(1), lambda mo, ab, x: zoo.unipc(mo, ab, x, order=1), "clean"),
    "unipc-2": (gdj.UniPC(2), lambda mo, ab, x: zoo.unipc(mo, ab, x, order=2), "clean"),
    "unipc-3": (gdj.UniPC(3), lambda mo, ab, x: zoo.unipc(mo, ab, x, order=3), "clean"),
    "unipc-3-bh1-full": (
        gdj.UniPC(3, "bh1", lower_order_final=False),
        lambda mo, ab, x: zoo.unipc(mo, ab, x, order=3, solver_type="bh1", lower_order_final=False),
        "first",
    ),
    "unipc-2-eps-disable": (
        gdj.UniPC(2, predict_x0=False, disable_corrector=(1, 3)),
        lambda mo, ab, x: zoo.unipc(mo, ab, x, order=2, predict_x0=False, disable_corrector=(1, 3)),
        "first",
    ),
    "unip-3": (gdj.UniPC(3, corrector=False), _unip_literal(3), "clean"),
    "deis-1": (gdj.DEIS(1), lambda mo, ab, x: zoo.deis(mo, ab, x, order=1), "first"),
    "deis-2": (gdj.DEIS(2), lambda mo, ab, x: zoo.deis(mo, ab, x, order=2), "first"),
    "deis-3": (gdj.DEIS(3), lambda mo, ab, x: zoo.deis(mo, ab, x, order=3), "first"),
    "deis-3-full": (gdj.DEIS(3, False), lambda mo, ab, x: zoo.deis(mo, ab, x, order=3, lower_order_final=False), "first"),
    "lms-4": (gdj.LMS(), lambda mo, ab, x: zoo.lms(mo, ab, x, order=4), "clean"),
    "lms-2": (gdj.LMS(2), lambda mo, ab, x: zoo.lms(mo, ab, x, order=2), "clean"),
    "plms": (gdj.PNDM(), zoo.plms, "first"),
    "plms-clean": (gdj.PNDM(), zoo.plms, "clean"),
    "pndm-prk": (gdj.PNDM(skip_prk_steps=False), None, "first"),
    "ipndm": (gdj.IPNDM(), None, "cosine"),
    "ipndm-exact": (gdj.IPNDM(alpha_floor=0.0), None, "cosine"),
}
COSINE = gdj.Cosine(0.0)


def _case(name, n):
    """(sampler, literal runner, schedule, ts) for a case on an n-step grid."""
    sampler, literal, end = CASES[name]
    if end == "cosine":  # iPNDM's own levels: uniform in t on Cosine(s=0), from abar = 0
        schedule, ts = COSINE, np.linspace(1.0, 0.0, n + 1)
        floor = sampler.alpha_floor

        def literal(mo, ab, x, floor=floor, mean=None):
            return zoo.ipndm(mo, ab, x, alpha_floor=floor, mean=mean)

    else:
        schedule, ts = DISCRETE, _grid(n, end)
    if name == "pndm-prk":
        mids = _mids(schedule, ts)

        def literal(mo, ab, x, mids=mids):
            return zoo.pndm_prk(mo, ab, mids, x)

    return sampler, literal, schedule, ts


def _literal_law(name, n, lam, m):
    """Per-mode law of the literal loop on a diagonal problem: mean multiplier and variance from standard init."""
    _, literal, schedule, ts = _case(name, n)
    problem = _mc.Problem(U=np.eye(len(lam)), lam=np.asarray(lam), mu=np.asarray(m))
    model = _mc_multistep.noisy_denoiser(problem)
    abars = _abars(schedule, ts)
    kwargs = {"mean": np.asarray(m)} if CASES[name][2] == "cosine" else {}
    offset = literal(model, abars, np.zeros((1, len(lam))), **kwargs)[0]
    gain = literal(model, abars, np.ones((1, len(lam))), **kwargs)[0] - offset
    return offset / np.asarray(m), gain**2


SLOW = {"unipc-1", "unipc-3", "deis-1", "deis-2", "deis-3-full", "lms-2", "plms", "ipndm-exact", "unipc-2-eps-disable-mc",
        "pndm-prk-mc", "ipndm-mc"}


def _params(names, suffix=""):
    return [pytest.param(n, marks=pytest.mark.slow) if n + suffix in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_matches_independent_recursion(name):
    """N = 3, 8, 20 (one compilation: padded grids). Mean multipliers to 1e-11 and variances to 1e-10 relative,
    except for modes that end far from the exact marginal (|v/R^2 - 1| >= 1/2, after a coarse last step onto a
    small eigenvalue): there the engine reports its normalized covariance, whose O(eps) entries the last step's
    normalized weights (~50-100, alternating) amplify to up to 4e-8 (measured against 40-digit arithmetic; the
    engine's deviation agrees to 1e-12). An engine choice, reported to the lead; bounded here by 1e-7."""
    source = gdj.GaussianSource(MODES, mean=MEAN)
    sampler, _, schedule, _ = _case(name, 3)
    run = jax.jit(lambda ts, n: gdj.sample_law(source, schedule, sampler, ts, num_steps=n))
    for n in (3, 8, 20):
        ts = _case(name, n)[3]
        padded = np.concatenate([ts, np.linspace(ts[-1], ts[-1] - 1e-6, 22 - len(ts))[1:] if ts[-1] > 0 else np.zeros(21 - n)])
        law = run(jnp.asarray(padded), n)
        _check_against_literal(name, n, ts, schedule, law)


def _check_against_literal(name, n, ts, schedule, law):
    g_ref, v_ref = _literal_law(name, n, MODES, MEAN)
    np.testing.assert_allclose(law.mean_multiplier, g_ref, rtol=1e-11)
    R2 = float(schedule.alpha_bar(ts[-1])) * MODES + float(schedule.one_minus_alpha_bar(ts[-1]))
    far = np.abs(v_ref / R2 - 1) >= 0.5
    rel = np.abs(np.asarray(law.variance) / v_ref - 1)
    assert np.all(rel[~far] < 1e-10) and np.all(rel[far] < 1e-7), (rel, far)


def _z_scores(samples, problem, law):
    mean = problem.U @ (np.asarray(law.mean_multiplier) * problem.mean_coordinates)
    cov = (problem.U * np.asarray(law.variance)) @ problem.U.T
    return _mc.all_z_scores(samples, mean, cov)


@pytest.mark.parametrize(
    "name", _params(["unipc-3", "unipc-2-eps-disable", "deis-3", "lms-4", "plms", "pndm-prk", "ipndm"], "-mc")
)
def test_monte_carlo_full_coordinates(name):
    rng = np.random.default_rng(17)
    problem = _mc.random_problem(rng, LAM)
    sampler, literal, schedule, ts = _case(name, 7)
    model = _mc_multistep.noisy_denoiser(problem)
    x = rng.standard_normal((100_000, 3))
    kwargs = {"mean": problem.mu} if CASES[name][2] == "cosine" else {}
    out = literal(model, _abars(schedule, ts), x, **kwargs)
    law = gdj.sample_law(gdj.GaussianSource(LAM, mean=problem.mean_coordinates), schedule, sampler, jnp.asarray(ts))
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))



@pytest.mark.parametrize(
    "name",
    [n if n in ("unipc-3", "plms") else pytest.param(n, marks=pytest.mark.slow)
     for n in ["unipc-3", "unipc-2-eps-disable", "deis-3", "lms-4", "plms", "pndm-prk", "ipndm"]],
)
def test_model_error_propagation_monte_carlo(name):
    """A synthetic imperfect denoiser (exact posterior mean plus an independent N(0, U diag(s^2) U^T) error at every
    evaluation, s^2 piecewise linear in log-SNR) in the literal loops against `sample_law(..., model_error=...)`:
    UniPC's corrector reuses the evaluation at the uncorrected point in the predictor and later steps, PLMS's Heun
    warm-up evaluates a scratch point once, RK's stages are combined through a partial transfer; each evaluation's
    error must enter every use with the right correlation. The law without the error must be rejected."""
    rng = np.random.default_rng(5)
    problem = _mc.random_problem(rng, LAM)
    sampler, literal, schedule, ts = _case(name, 6)
    model = _mc_multistep.piecewise_error_denoiser(problem, rng)
    x = rng.standard_normal((100_000, 3))
    kwargs = {"mean": problem.mu} if CASES[name][2] == "cosine" else {}
    out = literal(model, _abars(schedule, ts), x, **kwargs)
    source = gdj.GaussianSource(LAM, mean=problem.mean_coordinates)
    profile = gdj.ErrorProfile(jnp.asarray(_mc_multistep.ERROR_LOG_SNR), jnp.asarray(_mc_multistep.ERROR_MOMENTS))
    law = gdj.sample_law(source, schedule, sampler, jnp.asarray(ts), model_error=profile)
    z = _z_scores(out, problem, law)
    assert np.max(np.abs(z)) < Z_MAX, np.max(np.abs(z))
    exact = gdj.sample_law(source, schedule, sampler, jnp.asarray(ts))
    assert np.max(np.abs(_z_scores(out, problem, exact))) > 10 * Z_MAX

# ----------------------------------------------------------------------------------------------
# diffusers' own loops in float64 (an exact Gaussian model per mode)


def _assert_law_close(law, g_ref, v_ref, final_variance):
    """Means to 1e-11; variances to 1e-10, or 1e-6 for modes that end far from the exact marginal (see
    `test_matches_independent_recursion`; noise-prediction UniPC's last steps have the largest normalized
    weights: 1.5e-7 measured)."""
    np.testing.assert_allclose(law.mean_multiplier, g_ref, rtol=1e-11)
    far = np.abs(v_ref / final_variance - 1) >= 0.5
    rel = np.abs(np.asarray(law.variance) / v_ref - 1)
    assert np.all(rel[~far] < 1e-10) and np.all(rel[far] < 1e-6), (rel, far)


def _torch_model(ac):
    """The exact noise prediction of N(MEAN, diag(MODES)) at training index i (float64 tensors)."""
    torch = pytest.importorskip("torch")
    lam, m = torch.tensor(MODES), torch.tensor(MEAN)

    def denoiser(x, abar):
        a = math.sqrt(abar)
        return m + lam * a / (abar * lam + 1 - abar) * (x - a * m)

    def eps(x, abar):
        return (x - math.sqrt(abar) * denoiser(x, abar)) / math.sqrt(1 - abar)

    start = torch.stack([torch.zeros(len(MODES), dtype=torch.float64), torch.ones(len(MODES), dtype=torch.float64)])
    return torch, denoiser, eps, start


def _offset_gain(x, torch):
    """Mean multiplier and gain^2 from the runs started at 0 and at 1."""
    off, gain = x[0].numpy(), (x[1] - x[0]).numpy()
    return off / MEAN, gain**2


def _run_padded(schedule, sampler, grids, init="standard"):
    """sample_law on several grids with one compilation (padded to the longest)."""
    source = gdj.GaussianSource(MODES, mean=MEAN)
    size = max(len(ts) for ts in grids)
    run = jax.jit(lambda ts, n: gdj.sample_law(source, schedule, sampler, ts, num_steps=n, init=init))
    out = []
    for ts in grids:
        pad = np.full(size - len(ts), ts[-1])  # padding is never read
        out.append(run(jnp.asarray(np.concatenate([ts, pad])), len(ts) - 1))
    return out


def _diffusers_multistep(cls, config, n, final):
    """UniPC / DEIS loop with float64 `sigmas` (final level: 0 or the first training level)."""
    scheduler = cls(**config)
    scheduler.set_timesteps(n)
    ac = scheduler.alphas_cumprod.double().numpy()
    torch, _, eps, x = _torch_model(ac)
    steps = scheduler.timesteps.numpy()
    sigmas = np.sqrt((1 - ac[steps]) / ac[steps])
    last = 0.0 if final == "zero" else math.sqrt((1 - ac[0]) / ac[0])
    scheduler.sigmas = torch.tensor(np.concatenate([sigmas, [last]]), dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(eps(x, ac[int(t)]), t, x).prev_sample
    ts = np.concatenate([(steps + 1) / 1000.0, [0.0 if final == "zero" else 1e-3]])
    return ac, ts, *_offset_gain(x, torch)


TRAILING = {"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}
UNIPC_CONFIGS = [
    ({"solver_order": 1}, "zero"),
    ({"solver_order": 2}, "zero"),
    ({"solver_order": 3}, "zero"),
    ({"solver_order": 3, "disable_corrector": [0, 3]}, "zero"),
    ({"solver_order": 3, "solver_type": "bh1", **TRAILING}, "first"),
    ({"solver_order": 2, "solver_type": "bh1", "lower_order_final": False, **TRAILING}, "first"),
    ({"solver_order": 3, "lower_order_final": False, **TRAILING}, "first"),
    ({"solver_order": 3, "lower_order_final": False, "predict_x0": False, **TRAILING}, "first"),
    ({"solver_order": 3, "predict_x0": False, "solver_type": "bh1", "disable_corrector": [1], **TRAILING}, "first"),
]


def _package_options(config):
    return {k: v for k, v in config.items() if k not in ("timestep_spacing", "final_sigmas_type")}


@pytest.mark.parametrize("config,final", UNIPC_CONFIGS)
def test_unipc_matches_diffusers(config, final):
    diffusers = pytest.importorskip("diffusers")
    runs = [_diffusers_multistep(diffusers.UniPCMultistepScheduler, config, n, final) for n in (3, 8, 20)]
    ac = runs[0][0]
    schedule = gdj.Discrete(ac)
    laws = _run_padded(schedule, gdj.UniPC(**_package_options(config)), [r[1] for r in runs])
    for (_, ts, g, v), law in zip(runs, laws):
        _assert_law_close(law, g, v, ac[0] * MODES + 1 - ac[0] if final == "first" else MODES)


def test_unipc_bh1_onto_sigma_zero():
    """diffusers' UniPC with `solver_type="bh1"` and its default final sigma 0 returns NaN: the last (first-order)
    predictor computes `alpha_t * B_h * pred_res` with B_h = -h = -inf and pred_res = 0. The package takes the
    limit, which is DDIM's clean jump: the same law as with the final level at 1 - abar = 1e-24 (sigma_N = 1e-12,
    which enters the last step through sigma_N/sigma_{N-1}); 1e-6 for the smallest mode, which ends far from the
    exact marginal (see `_assert_law_close`)."""
    diffusers = pytest.importorskip("diffusers")
    ac, ts, g, _ = _diffusers_multistep(diffusers.UniPCMultistepScheduler, {"solver_order": 3, "solver_type": "bh1"}, 8, "zero")
    assert np.all(np.isnan(g))
    schedule = gdj.Discrete(ac)
    near = ts.copy()
    near[-1] = float(gdj.grids.time_of_log_snr(schedule, jnp.asarray(np.log(1e24))))
    assert 0 < near[-1] < 1e-12
    clean, almost = _run_padded(schedule, gdj.UniPC(3, "bh1"), [ts, near])
    np.testing.assert_allclose(clean.mean_multiplier, almost.mean_multiplier, rtol=1e-9)
    np.testing.assert_allclose(clean.variance, almost.variance, rtol=1e-6)
    np.testing.assert_allclose(clean.variance[1:], almost.variance[1:], rtol=1e-8)  # the level 1e-12 enters through sigma_N / sigma_{N-1}


@pytest.mark.parametrize("config", [{"solver_order": 1}, {"solver_order": 2}, {"solver_order": 3},
                                    {"solver_order": 3, "lower_order_final": False}])
def test_deis_matches_diffusers(config):
    diffusers = pytest.importorskip("diffusers")
    runs = [_diffusers_multistep(diffusers.DEISMultistepScheduler, config, n, "first") for n in (3, 8, 20)]
    ac = runs[0][0]
    laws = _run_padded(gdj.Discrete(ac), gdj.DEIS(**config), [r[1] for r in runs])
    for (_, _, g, v), law in zip(runs, laws):
        _assert_law_close(law, g, v, ac[0] * MODES + 1 - ac[0])


def test_lms_coefficients_match_diffusers():
    """The closed-form Adams-Bashforth weights equal diffusers' `get_lms_coefficient` (scipy quad of the Lagrange
    polynomial) on random decreasing sigmas, every order and position, to 1e-12 relative (float64 sigmas)."""
    diffusers = pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from gaussdiff_jax._sampler._lms import lms_coefficients

    rng = np.random.default_rng(3)
    scheduler = diffusers.LMSDiscreteScheduler()
    for _ in range(5):
        sigmas = np.concatenate([np.sort(rng.uniform(0.01, 80.0, 7))[::-1], [0.0]])
        scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float64)
        for i in range(len(sigmas) - 1):
            for order in range(1, min(i + 1, 4) + 1):
                delta = sigmas[i + 1] - sigmas[i]
                nodes = [0.0] + [(sigmas[i - q] - sigmas[i]) / delta for q in range(1, order)]
                ours = [float(c) for c in lms_coefficients(delta, nodes)]
                theirs = [scheduler.get_lms_coefficient(order, i, j) for j in range(order)]
                np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12 * abs(delta))


def test_lms_matches_diffusers():
    """LMSDiscreteScheduler (order 4) in float64. N = 4, 10, 28 put its fractional `linspace(0, 999, N)` timesteps on
    integers (elsewhere diffusers interpolates sigma linearly in the index: a different grid, not a different
    sampler). Its sample lives in sigma units, started from sigma_max z: init = 1 - abar(t_0)."""
    diffusers = pytest.importorskip("diffusers")
    runs = []
    for n in (4, 10, 28):
        scheduler = diffusers.LMSDiscreteScheduler()
        scheduler.set_timesteps(n)
        ac = scheduler.alphas_cumprod.double().numpy()
        torch, _, eps, x = _torch_model(ac)
        idx = scheduler.timesteps.numpy().astype(int)
        assert np.all(idx == scheduler.timesteps.numpy())
        sigmas = np.sqrt((1 - ac[idx]) / ac[idx])
        scheduler.sigmas = torch.tensor(np.concatenate([sigmas, [0.0]]), dtype=torch.float64)
        for t in scheduler.timesteps:
            x = scheduler.step(eps(scheduler.scale_model_input(x, t), ac[int(t)]), t, x).prev_sample
        g, v = _offset_gain(x, torch)
        runs.append((np.concatenate([(idx + 1) / 1000.0, [0.0]]), g, v * sigmas[0] ** 2))
    schedule = gdj.Discrete(ac)
    init = float(schedule.one_minus_alpha_bar(1.0))  # every grid starts at t = 1 (index 999)
    laws = _run_padded(schedule, gdj.LMS(), [r[0] for r in runs], init=init)
    for (_, g, v), law in zip(runs, laws):
        _assert_law_close(law, g, v, MODES)


@pytest.mark.parametrize("config", [
    {"skip_prk_steps": True, "steps_offset": 1},  # Stable Diffusion 1.x
    {"skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": True},
    {"skip_prk_steps": False, "steps_offset": 1},
])
def test_pndm_matches_diffusers(config):
    """PNDMScheduler ("leading" spacing) with float64 `alphas_cumprod`: `ts` = its distinct levels, then the
    final level (training index 0, or abar = 1 with `set_alpha_to_one`); N + 1 (N + 9) model calls."""
    diffusers = pytest.importorskip("diffusers")
    runs = []
    for n in (5, 10, 50):
        scheduler = diffusers.PNDMScheduler(**config)
        scheduler.set_timesteps(n)
        ac = scheduler.alphas_cumprod.double().numpy()
        torch, _, eps, x = _torch_model(ac)
        scheduler.alphas_cumprod = torch.tensor(ac, dtype=torch.float64)
        one = config.get("set_alpha_to_one", False)
        scheduler.final_alpha_cumprod = torch.tensor(1.0 if one else ac[0], dtype=torch.float64)
        for t in scheduler.timesteps:
            x = scheduler.step(eps(x, ac[int(t)]), t, x).prev_sample
        levels = np.asarray(scheduler._timesteps)[::-1]
        ts = np.concatenate([(levels + 1) / 1000.0, [0.0 if one else 1e-3]])
        sampler = gdj.PNDM(config["skip_prk_steps"])
        assert sampler.num_evaluations(None, ts) == len(scheduler.timesteps)
        runs.append((ts, *_offset_gain(x, torch)))
    laws = _run_padded(gdj.Discrete(ac), sampler, [r[0] for r in runs])
    for (ts, g, v), law in zip(runs, laws):
        _assert_law_close(law, g, v, MODES if ts[-1] == 0 else ac[0] * MODES + 1 - ac[0])


@pytest.mark.parametrize("alpha_floor", [1e-8, 0.0])
def test_ipndm_matches_diffusers(alpha_floor):
    """IPNDMScheduler with float64 levels and an exact v-prediction model: `Cosine(0)` with ts = its model
    timesteps and 0. With `alpha_floor=0` the first step keeps alpha' D (the mean), which diffusers drops: the
    variances agree and the means differ by exactly that (checked against the literal loop)."""
    diffusers = pytest.importorskip("diffusers")
    runs = []
    for n in (3, 10, 40):
        scheduler = diffusers.IPNDMScheduler()
        scheduler.set_timesteps(n)
        torch, denoiser, _, x = _torch_model(None)
        steps = np.concatenate([np.linspace(1, 0, n + 1)[:-1], [0.0]])
        sigma = np.sin(steps * math.pi / 2) ** 2
        alpha = np.sqrt(1 - sigma**2)
        scheduler.betas, scheduler.alphas = torch.tensor(sigma), torch.tensor(alpha)
        for k in range(n):
            d = denoiser(x, alpha[k] ** 2) if alpha[k] > 0 else torch.tensor(MEAN).expand_as(x)
            e = (x - alpha[k] * d) / sigma[k]
            x = scheduler.step(alpha[k] * e - sigma[k] * d, scheduler.timesteps[k], x).prev_sample
        g, v = _offset_gain(x, torch)
        if alpha_floor == 0.0:  # the exact transfer's mean, from the literal loop on the same levels
            problem = _mc.Problem(U=np.eye(len(MODES)), lam=MODES, mu=MEAN)
            model = _mc_multistep.noisy_denoiser(problem)
            start = np.zeros((1, len(MODES)))
            g = zoo.ipndm(model, list(alpha**2), start, alpha_floor=0.0, mean=MEAN)[0] / MEAN
        runs.append((2 / math.pi * np.arctan2(sigma, alpha), g, v))
        np.testing.assert_allclose(runs[-1][0][:-1], scheduler.timesteps.numpy(), rtol=1e-6)
    laws = _run_padded(COSINE, gdj.IPNDM(alpha_floor), [r[0] for r in runs])
    for (_, g, v), law in zip(runs, laws):
        _assert_law_close(law, g, v, MODES)


# ----------------------------------------------------------------------------------------------
# Convergence orders, gradients, residuals, registry


CONVERGENCE = {
    "unipc-2": gdj.UniPC(2),  # lower_order_final: its last step is an uncorrected DDIM step -> 2
    "unipc-1-full": gdj.UniPC(1, lower_order_final=False),
    "unipc-2-full": gdj.UniPC(2, lower_order_final=False),  # 3
    "unipc-3-eps-full": gdj.UniPC(3, predict_x0=False, lower_order_final=False),  # 3
    "unipc-3-full-disable0": gdj.UniPC(3, lower_order_final=False, disable_corrector=(0,)),  # 2
    "unip-1": gdj.UniPC(1, corrector=False),  # DDIM: 1
    "unip-3": gdj.UniPC(3, corrector=False, lower_order_final=False),  # 2
    "deis-1": gdj.DEIS(1),
    "deis-3": gdj.DEIS(3),
    "lms-2": gdj.LMS(2),
    "lms-4": gdj.LMS(),
    "plms": gdj.PNDM(),
    "pndm-prk": gdj.PNDM(skip_prk_steps=False),
    "ipndm": gdj.IPNDM(),
}
FAST_CONVERGENCE = {"unipc-2-full", "deis-3", "plms"}
CONVERGENCE_NS = (320, 640, 1280)


def _kl_vs_n(sampler):
    """KL(p_tmin || output) from the exact start on uniform log-SNR grids from -6 to 6 (one compilation)."""
    lam = jnp.asarray([0.03, 0.5, 4.0])
    source, schedule = gdj.GaussianSource(lam), gdj.LinearBeta()
    size = max(CONVERGENCE_NS) + 1
    run = jax.jit(lambda ts, n: gdj.kl(source, gdj.sample_law(source, schedule, sampler, ts, init="exact", num_steps=n),
                                       target="truncated"))
    out = []
    for n in CONVERGENCE_NS:
        ts = gdj.grids.time_of_log_snr(schedule, jnp.linspace(-6.0, 6.0, n + 1))
        out.append(float(run(jnp.concatenate([ts, jnp.full(size - n - 1, ts[-1])]), n)))
    return np.asarray(out)


@pytest.mark.parametrize("name", [n if n in FAST_CONVERGENCE else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CONVERGENCE])
def test_convergence_order(name):
    """KL ~ N^{-2p} with p = `sampler.order`: slope between N = 640 and 1280 within 0.25 of -2p (LMS-4 reaches its
    warm-up-limited order 2 only beyond N ~ 500: -6.9, -6.3, -5.1, -4.4, -4.1 from N = 40 on)."""
    sampler = CONVERGENCE[name]
    slopes = np.diff(np.log(_kl_vs_n(sampler))) / np.diff(np.log(CONVERGENCE_NS))
    assert abs(slopes[-1] + 2 * sampler.order) < 0.25, (sampler.order, slopes)


@pytest.mark.slow
def test_unipc_3_data_prediction_converges_faster_than_stated():
    """UniPC-3 (data prediction, no lower-order end) is stated with order 3 (the corrected first step has local
    error O(h^3) in general); on Gaussian data it measures 4 (slope -7.9 for N = 160 .. 1280), while the noise-
    prediction variant measures 3. The stated order is a lower bound."""
    sampler = gdj.UniPC(3, lower_order_final=False)
    assert sampler.order == 3
    slopes = np.diff(np.log(_kl_vs_n(sampler))) / np.diff(np.log(CONVERGENCE_NS))
    assert slopes[-1] < -2 * sampler.order - 1.0, slopes


GRADIENT_SAMPLERS = {
    "unipc-3": gdj.UniPC(3),
    "unipc-2-eps": gdj.UniPC(2, predict_x0=False, disable_corrector=(2,)),
    "deis-3": gdj.DEIS(3),
    "lms": gdj.LMS(),
    "plms": gdj.PNDM(),
    "pndm-prk": gdj.PNDM(skip_prk_steps=False),
    "ipndm": gdj.IPNDM(),
}


@pytest.mark.parametrize("name", [n if n in ("unipc-3", "pndm-prk") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in GRADIENT_SAMPLERS])
def test_gradients_match_finite_differences(name):
    """d W2^2 / d(grid times) and d / d beta_max against central differences (the grid ends at t = 0 but for
    noise prediction, whose grid ends at the first training level)."""
    sampler = GRADIENT_SAMPLERS[name]
    lam = jnp.asarray([0.05, 0.7, 2.5])
    source = gdj.GaussianSource(lam, mean=jnp.asarray([0.2, -0.4, 1.0]))
    ts0 = jnp.asarray(_grid(8, "first" if name == "unipc-2-eps" else "clean"))

    @jax.jit
    def loss(ts, beta_max):
        law = gdj.sample_law(source, gdj.LinearBeta(beta_max=beta_max), sampler, ts)
        return gdj.w2_squared(source, law, target="data")

    g_ts, g_beta = jax.grad(loss, argnums=(0, 1))(ts0, 20.0)
    assert np.all(np.isfinite(np.asarray(g_ts)))
    eps = 1e-6
    for i in (1, 4, 7):
        e = jnp.zeros_like(ts0).at[i].set(eps)
        fd = (loss(ts0 + e, 20.0) - loss(ts0 - e, 20.0)) / (2 * eps)
        assert abs(float(g_ts[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (i, g_ts[i], fd)
    fd = (loss(ts0, 20.0 + eps) - loss(ts0, 20.0 - eps)) / (2 * eps)
    assert abs(float(g_beta) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


ALL_VARIANTS = [c[0] for c in CASES.values()] + list(CONVERGENCE.values()) + [
    gdj.UniPC(3, "bh1", predict_x0=False, lower_order_final=False, disable_corrector=(0, 2)),
    gdj.LMS(3),
]


@pytest.mark.parametrize("end", ["clean", "first"])
def test_stated_residuals(end):
    """On random grids (float64) every write's stated residuals equal the computed sums: sum of total data weights
    minus alpha_new and of total noise weights minus sigma_new (base slot's x-term included), to 1e-12."""
    rng = np.random.default_rng(8)
    schedule = gdj.LinearBeta()
    for sampler in ALL_VARIANTS:
        for n in (1, 2, 5, 12):
            ts = np.sort(rng.uniform(1e-3, 1.0, n + 1))[::-1]
            ts[0] = 1.0
            if end == "clean":
                ts[-1] = 0.0
            levels = [gdj.Level.at(schedule, jnp.asarray(ts[0]))] * sampler.num_slots
            for k in range(n):
                new = gdj.Level.at(schedule, jnp.asarray(ts[k + 1]))
                writes, _ = sampler.step(schedule, tuple(levels), new, None, gdj.StepInfo(jnp.int32(k), jnp.int32(n)))
                for target, cmb in writes:
                    A = [float(cmb.data[j]) for j in range(sampler.num_slots)]
                    S = [float(cmb.noise[j]) for j in range(sampler.num_slots)]
                    A[cmb.base] += float(cmb.scale) * float(levels[cmb.base].alpha)
                    S[cmb.base] += float(cmb.scale) * float(levels[cmb.base].sigma)
                    size = 1.0 + sum(abs(a) for a in A) + sum(abs(s) for s in S)
                    assert abs(sum(A) - float(cmb.level.alpha) - float(cmb.data_residual)) < 1e-12 * size
                    assert abs(sum(S) - float(cmb.level.sigma) - float(cmb.noise_residual)) < 1e-12 * size
                    if target is None:
                        levels = [cmb.level] + levels[:-1]
                    else:
                        levels[target] = cmb.level
                assert float(levels[0].t) == ts[k + 1]


REGISTERED = {
    "unipc": (gdj.UniPC, 3, 1), "unipc-3m": (gdj.UniPC, 4, 1), "unipc-bh1": (gdj.UniPC, 4, 1), "unip": (gdj.UniPC, 2, 1),
    "deis": (gdj.DEIS, 2, 1), "deis-3m": (gdj.DEIS, 3, 1), "lms": (gdj.LMS, 4, 1),
    "plms": (gdj.PNDM, 5, 2), "pndm": (gdj.PNDM, 6, 5), "ipndm": (gdj.IPNDM, 4, 1),
}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_registry_round_trip_and_facts(name):
    cls, slots, writes = REGISTERED[name]
    sampler = gdj.samplers.make(name)
    assert type(sampler) is cls and gdj.samplers.name_of(sampler) == name
    assert sampler.num_slots == slots and sampler.is_deterministic and not sampler.needs_beta
    assert sampler.evaluations_per_step == 1
    schedule = gdj.LinearBeta()
    levels = (gdj.Level.at(schedule, jnp.asarray(1.0)),) * slots
    out, _ = sampler.step(schedule, levels, gdj.Level.at(schedule, jnp.asarray(0.5)), None, gdj.StepInfo(jnp.int32(0), jnp.int32(4)))
    assert len(out) == writes
    ts = np.linspace(1.0, 0.0, 11)
    extra = {"plms": 1, "pndm": 9}.get(name, 0)
    assert sampler.num_evaluations(schedule, ts) == 10 + extra
    assert sampler.steps_for_nfe(10 + extra) == 10


def test_invalid_options_are_clear_errors():
    for make, text in [
        (lambda: gdj.UniPC(4), "solver_order"),
        (lambda: gdj.UniPC(2, "midpoint"), "solver_type"),
        (lambda: gdj.UniPC(2, disable_corrector=(-1,)), "disable_corrector"),
        (lambda: gdj.DEIS(4), "solver_order"),
        (lambda: gdj.LMS(5), "solver_order"),
        (lambda: gdj.PNDM(prk_midpoint=1.0), "prk_midpoint"),
        (lambda: gdj.IPNDM(alpha_floor=-1.0), "alpha_floor"),
    ]:
        with pytest.raises(ValueError, match=text):
            make()


FLOAT32_SAMPLERS = {
    "unipc-2": gdj.UniPC(2),
    "unipc-3": gdj.UniPC(3),
    "unipc-3-bh1": gdj.UniPC(3, "bh1"),
    "unipc-2-eps": gdj.UniPC(2, predict_x0=False),
    "unip-3": gdj.UniPC(3, corrector=False),
    "deis-2": gdj.DEIS(2),
    "deis-3": gdj.DEIS(3),
    "lms": gdj.LMS(),
    "plms": gdj.PNDM(),
    "pndm-prk": gdj.PNDM(skip_prk_steps=False),
    "ipndm": gdj.IPNDM(),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(FLOAT32_SAMPLERS)
)
def test_float32_matches_float64(name):
    """The bar of `test_float32.py` / `test_multistep.py`: 1e-3 relative for N = 1 .. 10^4, both KL directions and
    W2, on CIFAR-10 and a 1e-6..1e6 spectrum with a mean (linear beta, uniform grid 1 -> 1e-3, standard init)."""
    from test_float32 import assert_float32_matches_float64

    # PNDM-PRK at N = 1: one Runge-Kutta step from t = 1 (alpha = 0.0067) multiplies differences of noise predictions
    # by alpha'/alpha ~ 150 (variance 1e6 x p_0's): the float32 cancellation of `test_multistep`'s dpm-2m N = 1.
    assert_float32_matches_float64(FLOAT32_SAMPLERS[name], skip=(1,) if name == "pndm-prk" else ())


@pytest.mark.parametrize("sampler", [gdj.UniPC(2), gdj.UniPC(3, "bh1", predict_x0=False), gdj.DEIS(3), gdj.LMS(),
                                     gdj.IPNDM(), gdj.IPNDM(0.0)])
def test_start_at_abar_zero_is_finite(sampler):
    """Grids from t = 1 on Cosine(0) start at abar = 0 (infinite sigma): the first step is DDIM written on D and
    eps_hat, history points there leave the interpolation (lower order), UniPC skips its corrector across the
    infinite step; the law is finite. PNDM's warm-up is undefined there: a clear error."""
    law = gdj.sample_law(gdj.GaussianSource(LAM, mean=np.ones(3)), COSINE, sampler, jnp.linspace(1.0, 0.0, 9))
    assert np.all(np.isfinite(np.asarray(law.variance))) and np.all(np.isfinite(np.asarray(law.mean_multiplier)))


def test_pndm_start_at_abar_zero_is_a_clear_error():
    for sampler in (gdj.PNDM(), gdj.PNDM(skip_prk_steps=False)):
        with pytest.raises(Exception, match="PNDM: the grid starts at abar = 0"):
            gdj.sample_law(gdj.GaussianSource(LAM), COSINE, sampler, jnp.linspace(1.0, 0.0, 9))
