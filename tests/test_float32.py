r"""float32 (GPU/TPU precision) agrees with float64 computed on the same float32-representable inputs.

Two spectra side by side in one 1-D source: CIFAR-10 (`cifar10_preprint2024`, all > 0, ~6e-6..221) and a synthetic
spectrum 1e-6..1e6 (200 modes), with a nonzero mean; one law of the 3272 modes, and each spectrum's divergences from
it with weight 0 on the other's modes (modes are independent: this is the two runs in one, at the cost of
3272 mode-steps rather than 2 x 3072 for a padded batch); linear beta, uniform float32 grids from 1 to
$t_{\min} = 10^{-3}$ with N = 1..10^4 steps, standard init, target `truncated`. For each N
one compilation computes both precisions: the float32 run on the cast inputs, and the float64 run on
the *same* inputs cast back (so only rounding inside the computation differs).

One cell is ill-posed at float32 resolution and is tested for what is true there (see
`test_heun_cifar_n10_is_ill_conditioned`): Heun, N = 10, KL(target || sample) on CIFAR-10.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # long float32 / optimization runs: the full suite only (`-m "not slow"` skips them)

NS = (1, 10, 100, 1000, 10000)
T_MIN = 1e-3
SAMPLERS = {"DDIM": gdj.DDIM(), "Heun": gdj.Heun(), "EM": gdj.EulerMaruyama()}
QUANTITIES = ("kl_target_to_sample", "kl_sample_to_target", "w2")
SPECTRA = ("cifar10_preprint2024", "synthetic_1e-6_1e6")
# Relative tolerance 1e-3 everywhere except this cell (ill-conditioned: see the test below).
ILL_CONDITIONED = {("Heun", "cifar10_preprint2024", 10, "kl_target_to_sample"): 3e-2}


CIFAR_MODES = 3072  # modes [0, 3072) of `_source32` are CIFAR-10's, the rest the synthetic spectrum's


def _source32():
    cifar = gdj.spectra.load("cifar10_preprint2024")
    assert cifar.size == CIFAR_MODES
    synthetic = np.geomspace(1e-6, 1e6, 200)
    mean = np.linspace(-1.0, 1.0, CIFAR_MODES)
    lam = np.concatenate([cifar, synthetic])
    return gdj.cast(gdj.GaussianSource(lam, mean=np.concatenate([mean, mean[: synthetic.size]])), jnp.float32)


def _spectra(source):
    """CIFAR-10 and the synthetic spectrum as two sources on the same modes (weight 0 on the other's modes)."""
    cifar = jnp.arange(source.eigenvalues.shape[-1]) < CIFAR_MODES
    dtype = source.eigenvalues.dtype
    return [gdj.GaussianSource(source.eigenvalues, mean=source.mean, weights=w.astype(dtype)) for w in (cifar, ~cifar)]


def _divergences(source, schedule, ts, samplers=SAMPLERS):
    out = {}
    spectra = _spectra(source)
    for name, sampler in samplers.items():
        law = gdj.sample_law(source, schedule, sampler, ts, init="standard")
        out[name] = jnp.stack(
            [
                jnp.stack([gdj.kl(s, law, target="truncated") for s in spectra]),
                jnp.stack([gdj.kl(s, law, target="truncated", direction="sample_to_target") for s in spectra]),
                jnp.stack([gdj.w2(s, law, target="truncated") for s in spectra]),
            ]
        )  # (3 quantities, 2 spectra)
        if name == "DDIM":
            out["DDIM-law"] = law
        if name == "Heun":
            out["Heun-kl-modes"] = gdj.kl(spectra[0], law, target="truncated", reduce=False)  # CIFAR-10's modes
    return out


@eqx.filter_jit
def _both_precisions(source32, ts32, samplers=SAMPLERS):
    """The same problem in float32 and in float64 (inputs: the float32 values, cast up)."""
    schedule32 = gdj.cast(gdj.LinearBeta(), jnp.float32)
    single = _divergences(source32, schedule32, ts32, samplers)
    double = _divergences(
        gdj.cast(source32, jnp.float64), gdj.cast(schedule32, jnp.float64), ts32.astype(jnp.float64), samplers
    )
    return single, double


def _grid32(n):
    return jnp.linspace(1.0, T_MIN, n + 1, dtype=jnp.float32)


def assert_float32_matches_float64(sampler, *, skip=(), bars=None):
    """The float32 bar every sampler meets: both KL directions and W2 within 1e-3 relative of float64 for
    N = 1 .. 10^4 on `_source32` (CIFAR-10 and a 1e-6..1e6 spectrum with a mean), uniform grids 1 -> 1e-3,
    standard init. `skip`: step counts left out (with the reason at the call site); `bars`: looser bars per N."""
    source32 = _source32()
    for n in (1, 10, 100, 1000, 10000):
        if n in skip:
            continue
        single, double = (np.asarray(x["s"], dtype=np.float64) for x in _both_precisions(source32, _grid32(n), {"s": sampler}))
        assert np.all(np.isfinite(single)), n
        rel = np.max(np.abs(single / double - 1))
        assert rel < (bars or {}).get(n, 1e-3), (n, rel)


@pytest.fixture(scope="module")
def runs():
    source32 = _source32()
    return {n: _both_precisions(source32, _grid32(n)) for n in NS}


def test_float32_run_is_float32(runs):
    single, double = runs[10]
    assert single["DDIM"].dtype == jnp.float32 and single["DDIM-law"].variance.dtype == jnp.float32
    assert double["DDIM"].dtype == jnp.float64


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_float32_matches_float64(runs, name):
    for n in NS:
        single, double = (np.asarray(x[name], dtype=np.float64) for x in runs[n])
        assert np.all(np.isfinite(single)) and np.all(double > 0), (n, single, double)
        rel = np.abs(single / double - 1)
        for i, quantity in enumerate(QUANTITIES):
            for j, spectrum in enumerate(SPECTRA):
                tol = ILL_CONDITIONED.get((name, spectrum, n, quantity), 1e-3)
                assert rel[i, j] <= tol, (name, n, quantity, spectrum, rel[i, j], double[i, j])


def test_heun_cifar_n10_is_ill_conditioned(runs):
    """Why Heun, N = 10, KL(target || sample) on CIFAR-10 is not asked to agree to 1e-3.

    On the last step (t = 0.1009 -> 1e-3) the mode with lambda = 4.86e-4 has (1 + h a)(1 + h a') ~ -1,
    so its gain A = ((1 + h a)(1 + h a') + 1)/2 ~ 3.5e-5 is a true near-root (A changes sign as
    lambda varies). Its variance ~ A^2 collapses and that single mode carries ~98% of KL(target ||
    sample) ~ 1/A^2. Changing that one float32 eigenvalue by one ulp changes the float64 KL by more than
    1e-3: the quantity is not determined to 1e-3 by float32 inputs, and no float32 evaluation (which
    rounds the O(1) factors of A to ~6e-8) can be required to match it. The observed float32 error
    (~1e-2) is that of ~7 ulps of the critical eigenvalue.
    """
    source32 = _source32()
    per_mode = np.asarray(runs[10][1]["Heun-kl-modes"])[:CIFAR_MODES]  # float64, CIFAR-10
    i = int(np.argmax(per_mode))
    assert per_mode[i] > 0.9 * per_mode.sum()
    ts = _grid32(10).astype(jnp.float64)
    lam_i = jnp.asarray(source32.eigenvalues[i], dtype=jnp.float64)
    gain = float(gdj.Heun().step(gdj.LinearBeta(), ts[-2], ts[-1], lam_i).gain)
    assert 0 < abs(gain) < 1e-4

    base = float(runs[10][1]["Heun"][0, 0])
    eigenvalues = np.asarray(source32.eigenvalues)
    for direction in (np.inf, -np.inf):
        bumped = eigenvalues.copy()
        bumped[i] = np.nextafter(bumped[i], np.float32(direction))
        source = eqx.tree_at(lambda s: s.eigenvalues, source32, jnp.asarray(bumped))
        _, double = _both_precisions(source, _grid32(10))  # same shapes: no new compilation
        assert abs(float(double["Heun"][0, 0]) / base - 1) > 1e-3
    # Everything else about this run is well conditioned and agrees to 1e-3 (checked above); and the
    # float32 error stays within a few tens of the one-ulp sensitivity.
    single = float(runs[10][0]["Heun"][0, 0])
    assert abs(single / base - 1) < 3e-2


def test_coarse_stiff_step_float32():
    """One step t = 1 -> 1e-3 in float32 vs float64 on the same inputs, per mode of CIFAR-10.

    Runge-Kutta samplers put their last stage at t_next itself: in float32 t - (t - t_next) differs from
    t_next by ~ulp(1) = 1.3e-5 relative to t_next = 1e-3, which moved beta and R^2 at the last stage and
    cost Heun and RK4 1e-5 in the gain (and made Heun's gain and gain - 1 disagree)."""
    lam32 = jnp.asarray(gdj.spectra.load("cifar10_preprint2024"), dtype=jnp.float32)
    schedule32 = gdj.cast(gdj.LinearBeta(), jnp.float32)
    t, t_next = jnp.float32(1.0), jnp.float32(T_MIN)
    for sampler in (gdj.Euler(), gdj.Heun(), gdj.RK4()):
        single = sampler.step(schedule32, t, t_next, lam32)
        double = sampler.step(gdj.cast(schedule32, jnp.float64), t.astype(jnp.float64), t_next.astype(jnp.float64),
                              lam32.astype(jnp.float64))
        for a in (single.gain, 1 + single.gain_minus_one):
            err = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(double.gain))
            assert np.max(err / np.maximum(np.abs(np.asarray(double.gain)), 1.0)) < 2e-6, type(sampler).__name__


def test_edm_heun_coarse_step_float32():
    """EDMHeun's gain g = ((1 + u1)(1 + u2) + 1)/2 on one coarse step: 1 + u1 ~ 1e-4 and (1 + u1)(1 + u2) ~ -1
    for tiny eigenvalues, but g is a ratio of sums of positive terms (no true root), so float32 must hold
    it to full precision. (Computed as 1 + (A - 1) it was off by 8% on the 1e-6 mode: 1.4e-3 on the KL.)"""
    samplers = {"EDMHeun": gdj.EDMHeun()}
    for n in (1, 2):
        single, double = (np.asarray(x["EDMHeun"], dtype=np.float64) for x in _both_precisions(_source32(), _grid32(n), samplers))
        np.testing.assert_array_less(np.abs(single / double - 1), 1e-5)


@eqx.filter_jit
def _euler_exact_init(source32, ts32):
    schedule32 = gdj.cast(gdj.LinearBeta(), jnp.float32)
    law32 = gdj.sample_law(source32, schedule32, gdj.Euler(), ts32, init="exact")
    source64, schedule64 = gdj.cast(source32, jnp.float64), gdj.cast(schedule32, jnp.float64)
    law64 = gdj.sample_law(source64, schedule64, gdj.Euler(), ts32.astype(jnp.float64), init="exact")
    divergence = lambda s, law: gdj.kl(s, law, target="truncated", direction="sample_to_target")  # noqa: E731
    return law32, divergence(source32, law32), divergence(source64, law64), schedule32.alpha_bar(ts32)


def test_naive_formulation_fails_in_float32():
    r"""The contrast of MATH.md section 3: a KL of ~1e-8 nats (1e-10 per mode; Euler, N = 10^4, exact init).

    - naive recursion and formula (what a user would write in float32): $v \leftarrow A^2 v$ with Euler's
      textbook gain $A = 1 + \frac h2\beta(s)(\lambda - 1)\bar\alpha(s)/R^2(s)$, then $r - 1 - \ln r$: wrong;
    - the engine (relative-deviation recursion, log-ratio and series): right to 1e-3.
    (The naive formula alone, on the engine's accurate float32 variance, costs ~1e-4 relative here: r - 1
    is exact and float32 log is relatively accurate; it is the variance recursion that must be stable.)
    """
    lam = np.geomspace(0.5, 2.0, 100)
    source32 = gdj.cast(gdj.GaussianSource(lam), jnp.float32)
    ts32 = jnp.linspace(0.95, 0.05, 10001, dtype=jnp.float32)
    law32, stable, exact, ab = _euler_exact_init(source32, ts32)
    stable, exact = float(stable), float(exact)
    assert 1e-9 < exact < 1e-7
    assert abs(stable / exact - 1) < 1e-3

    lam32, ab, t = np.asarray(source32.eigenvalues), np.asarray(ab), np.asarray(ts32)
    target32 = ab[-1] * lam32 + (1 - ab[-1])
    r = np.asarray(law32.variance) / target32
    naive_formula = 0.5 * float(np.sum(r - np.float32(1) - np.log(r), dtype=np.float32))
    assert abs(naive_formula / exact - 1) < 1e-2

    v = ab[0] * lam32 + (1 - ab[0])  # exact init
    beta_min, beta_max = np.float32(0.1), np.float32(20.0)
    for k in range(len(t) - 1):
        h, beta = t[k] - t[k + 1], beta_min + (beta_max - beta_min) * t[k]
        R2 = ab[k] * lam32 + (1 - ab[k])
        A = 1 + h * np.float32(0.5) * beta * (lam32 - 1) * ab[k] / R2
        v = A * A * v
    r = v / target32
    naive = 0.5 * float(np.sum(r - np.float32(1) - np.log(r), dtype=np.float32))
    assert abs(naive / exact - 1) > 0.5, (naive, exact)
