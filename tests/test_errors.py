"""Bad input gets a clear error, never a silent NaN; batches of spectra work.

Outside jit a bad value raises `ValueError` with a message naming the problem (and the fix); inside
`eqx.filter_jit` the same message comes back as equinox's runtime error (`eqx.EquinoxRuntimeError`, raised
when the result is computed), inside `jax.jit` as XLA's `JaxRuntimeError` with the message buried in its text,
and under `gdj.readable_errors()` as the same `ValueError` as outside jit. Shape problems are caught while
tracing, so they are `ValueError` under jit too.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

LAM = np.array([0.1, 1.0, 3.0])
TS = jnp.linspace(1.0, 1e-3, 11)
JIT_ERROR = eqx.EquinoxRuntimeError


def _law(lam, schedule, sampler, ts):
    return gdj.sample_law(gdj.GaussianSource(lam), schedule, sampler, ts).variance


_jit_law = eqx.filter_jit(_law)


@pytest.mark.parametrize(
    "eigenvalues, match",
    [
        (np.array([0.1, -1.0]), "negative or NaN"),
        (np.array([0.1, np.nan]), "negative or NaN"),
        (np.array([1.0, np.inf]), "finite"),
    ],
)
def test_bad_eigenvalues(eigenvalues, match):
    with pytest.raises(ValueError, match=match):
        gdj.GaussianSource(eigenvalues)
    with pytest.raises(JIT_ERROR, match=match):
        jax.block_until_ready(eqx.filter_jit(lambda lam: gdj.GaussianSource(lam).eigenvalues)(jnp.asarray(eigenvalues)))


def test_bad_mean_and_weights():
    with pytest.raises(ValueError, match="mean must be finite"):
        gdj.GaussianSource(LAM, mean=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        gdj.GaussianSource(LAM, weights=np.array([1.0, -1.0, 1.0]))


@pytest.mark.parametrize(
    "ts, match",
    [
        (jnp.array([1.0, 0.5, 0.5, 0.0]), "strictly decreasing"),
        (jnp.array([0.0, 0.5, 1.0]), "strictly decreasing"),
        (jnp.array([1.5, 0.5, 0.0]), r"\[0, 1\]"),
        (jnp.array([1.0, 0.5, -0.1]), r"\[0, 1\]"),
        (jnp.array([1.0, jnp.nan, 0.0]), "NaN"),
    ],
)
def test_bad_grids(ts, match):
    with pytest.raises(ValueError, match=match):
        _law(LAM, gdj.LinearBeta(), gdj.DDIM(), ts)
    with pytest.raises(JIT_ERROR, match=match):
        jax.block_until_ready(_jit_law(LAM, gdj.LinearBeta(), gdj.DDIM(), ts))


def _sample(ts):
    return gdj.sample_law(gdj.GaussianSource(LAM), gdj.LinearBeta(), gdj.DDIM(), ts).variance


@pytest.mark.parametrize("jit", [jax.jit, eqx.filter_jit], ids=["jax.jit", "eqx.filter_jit"])
def test_jit_errors_read_as_the_package_message(jit):
    """Under `readable_errors` a bad grid inside jit raises the very `ValueError` raised outside jit: its text is
    the package's message (so its first line is too). Without it, plain `jax.jit` gives XLA's text, in which the
    message is a line of its own that `gdj.error_message` recovers."""
    bad = jnp.array([1.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError) as eager:
        _sample(bad)
    message = str(eager.value)
    assert message.startswith("time grid must be strictly decreasing")
    with pytest.raises((jax.errors.JaxRuntimeError, JIT_ERROR)) as raw:
        jax.block_until_ready(jit(_sample)(bad))
    assert any(line.endswith(message) for line in str(raw.value).splitlines())
    assert gdj.error_message(raw.value) == message
    with pytest.raises(ValueError) as readable, gdj.readable_errors():
        jax.block_until_ready(jit(_sample)(bad))
    assert str(readable.value) == message
    assert isinstance(readable.value.__cause__, (jax.errors.JaxRuntimeError, JIT_ERROR))
    decorated = gdj.readable_errors()(lambda ts: jax.block_until_ready(jit(_sample)(ts)))
    with pytest.raises(ValueError, match=r"^time grid must be strictly decreasing"):
        decorated(bad)
    assert np.all(np.isfinite(decorated(TS)))  # good input: untouched
    # A negative eigenvalue (another check, inside the source's constructor) is translated too.
    negative = jnp.array([0.1, -1.0])
    with pytest.raises(ValueError, match=r"^GaussianSource: eigenvalues .*negative or NaN"), gdj.readable_errors():
        jax.block_until_ready(jit(lambda lam: gdj.GaussianSource(lam).eigenvalues)(negative))


def test_readable_errors_leaves_other_errors_alone():
    with pytest.raises(RuntimeError, match="unrelated"), gdj.readable_errors():
        raise RuntimeError("unrelated")
    with pytest.raises(ValueError, match="at least 2 points"), gdj.readable_errors():  # trace time: unchanged
        jax.jit(_sample)(jnp.array([1.0]))
    assert gdj.error_message(RuntimeError("unrelated")) is None


def test_fewer_than_one_step():
    for law in (_law, _jit_law):  # a shape problem: caught while tracing, also under jit
        with pytest.raises(ValueError, match="at least 2 points"):
            law(LAM, gdj.LinearBeta(), gdj.DDIM(), jnp.array([1.0]))
        with pytest.raises(ValueError, match="1-D"):
            law(LAM, gdj.LinearBeta(), gdj.DDIM(), jnp.ones((2, 3)))


def test_mismatched_batch_shapes():
    with pytest.raises(ValueError, match="does not broadcast"):
        gdj.GaussianSource(np.ones((3, 4)), mean=np.ones((2, 4)))
    with pytest.raises(ValueError, match="does not broadcast"):
        gdj.GaussianSource(np.ones((3, 4)), weights=np.ones((2, 4)))
    law = gdj.continuous_limit(gdj.GaussianSource(np.ones((2, 4))), gdj.LinearBeta(), 1.0, 1e-3)
    other = gdj.GaussianSource(np.ones((3, 4)))
    with pytest.raises(ValueError, match="same source"):
        gdj.kl(other, law)
    with pytest.raises(ValueError, match="same source"):
        eqx.filter_jit(gdj.w2)(other, law)


def test_kl_against_singular_target_names_the_fix():
    src = gdj.GaussianSource(np.array([0.0, 1.0]))
    law = gdj.continuous_limit(src, gdj.LinearBeta(), 1.0, 1e-3, kind="ode")
    with pytest.raises(ValueError, match="singular target.*target='truncated'"):
        gdj.kl(src, law, target="data")
    with pytest.raises(JIT_ERROR, match="singular target"):
        jax.block_until_ready(eqx.filter_jit(lambda s, l: gdj.kl(s, l, target="data"))(src, law))
    # What is finite stays available: KL to p_{t_min} (t_min > 0) and W2 to the data.
    assert np.isfinite(gdj.kl(src, law, target="truncated"))
    assert np.isfinite(gdj.w2(src, law, target="data"))


def test_heun_at_t_zero_with_zero_eigenvalue_raises_instead_of_nan():
    """Heun's last stage divides by R^2(0) = lambda = 0: an explanatory error, not a NaN."""
    lam, ts = np.array([0.0, 1.0]), jnp.linspace(1.0, 0.0, 11)
    with pytest.raises(ValueError, match="Heun.*t_min > 0"):
        _law(lam, gdj.LinearBeta(), gdj.Heun(), ts)
    with pytest.raises(JIT_ERROR, match="t_min > 0"):
        jax.block_until_ready(_jit_law(lam, gdj.LinearBeta(), gdj.Heun(), ts))
    # Euler only evaluates the score at the start of each step: fine down to t = 0.
    assert np.all(np.isfinite(_law(lam, gdj.LinearBeta(), gdj.Euler(), ts)))


@pytest.mark.parametrize("sampler", [gdj.Euler(), gdj.EDMHeun()], ids=["Euler", "EDMHeun"])
def test_sampler_needing_finite_beta_or_sigma_at_t0_equal_1_raises(sampler):
    """Tangent has abar(1) = 0: beta(1) = sigma(1) = inf. Samplers in t or in sigma raise; DDIM is fine."""
    with pytest.raises(ValueError, match="finite"):
        _law(LAM, gdj.Tangent(1.0), sampler, TS)
    with pytest.raises(JIT_ERROR, match="finite"):
        jax.block_until_ready(_jit_law(LAM, gdj.Tangent(1.0), sampler, TS))


def test_ddim_from_abar_zero_is_fine():
    assert np.all(np.isfinite(_law(LAM, gdj.Tangent(1.0), gdj.DDIM(), TS)))


def test_bad_options():
    src = gdj.GaussianSource(LAM)
    with pytest.raises(ValueError, match="init"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), TS, init="noise")
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), TS)
    with pytest.raises(ValueError, match="target"):
        gdj.kl(src, law, target="p0")
    with pytest.raises(ValueError, match="direction"):
        gdj.kl(src, law, direction="forward")
    with pytest.raises(ValueError, match="eta"):
        gdj.DDIM(eta=1.5)
    with pytest.raises(ValueError, match="beta"):
        gdj.DDPM(beta="linear")
    with pytest.raises(ValueError, match="beta_max"):
        gdj.LinearBeta(1.0, 0.5)
    with pytest.raises(ValueError, match="kind"):
        gdj.continuous_limit(src, gdj.LinearBeta(), kind="flow")


def test_ddpm_linearized_step_too_large_raises():
    """h beta(t) = 1 * 20 >= 1: sqrt(1 - beta_k) is undefined. The check runs per step inside the scan, so
    under jit it is equinox's runtime error; outside jit (an eager scan) JAX wraps the same message in its
    own runtime error."""
    args = (LAM, gdj.LinearBeta(), gdj.DDPM(beta="linearized"), jnp.array([1.0, 0.0]))
    with pytest.raises(JIT_ERROR, match=r"linearized.*h\*beta"):
        jax.block_until_ready(_jit_law(*args))
    with pytest.raises((JIT_ERROR, jax.errors.JaxRuntimeError), match=r"linearized.*h\*beta"):
        jax.block_until_ready(_law(*args))


@eqx.filter_jit
def _kl_heun(source):
    return gdj.kl(source, gdj.sample_law(source, gdj.LinearBeta(), gdj.Heun(), TS), target="truncated")


def test_batched_spectra_match_the_loop_and_vmap():
    """A (B, d) source works directly, and sample_law under jax.vmap over spectra equals the loop."""
    lams = np.array([[0.1, 1.0, 3.0], [0.5, 2.0, 8.0], [1e-4, 1e-2, 40.0]])
    means = np.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
    batched = _kl_heun(gdj.GaussianSource(lams, mean=means))
    vmapped = jax.vmap(lambda lam, m: _kl_heun(gdj.GaussianSource(lam, mean=m)))(jnp.asarray(lams), jnp.asarray(means))
    looped = np.array([float(_kl_heun(gdj.GaussianSource(lam, mean=m))) for lam, m in zip(lams, means)])
    assert batched.shape == (3,) and np.all(looped > 0)
    np.testing.assert_allclose(batched, looped, rtol=1e-13)
    np.testing.assert_allclose(vmapped, looped, rtol=1e-13)


# ------------------------------------------------------------------------------ schedules at their end points
SCHEDULES = {
    "LinearBeta": gdj.LinearBeta(),
    "Cosine": gdj.Cosine(),
    "Cosine(s=0)": gdj.Cosine(0.0),
    "EDM": gdj.EDM(),
    "EDM(sigma_min=0)": gdj.EDM(0.0, 80.0, 7.0),
    "LogSNRLinear": gdj.LogSNRLinear(),
    "Tangent": gdj.Tangent(1.3),
    "Tangent(finite)": gdj.Tangent(0.7, sigma_min=0.01, sigma_max=50.0),
}
POINTWISE = ("alpha_bar", "one_minus_alpha_bar", "sigma", "log_snr", "log_alpha_bar", "beta")
PAIRWISE = ("alpha_bar_increment", "log_alpha_bar_ratio")


def _quantity(schedule, name, times):
    return getattr(schedule, name)(*times)


def _param_grads(schedule, name, times):
    """d quantity / d each floating parameter (a flat list of scalars)."""
    params, static = eqx.partition(schedule, eqx.is_inexact_array)
    grads = jax.grad(lambda p: _quantity(eqx.combine(p, static), name, times))(params)
    return [float(g) for g in jax.tree_util.tree_leaves(grads)]


def _finite_difference_grads(schedule, name, times):
    """Float64 finite differences in each parameter: central; forward where the parameter sits at 0 (EDM's
    sigma_min, whose domain is >= 0), and there `None` where the one-sided derivative is infinite (the forward
    difference grows 10x from h to h/1000: sigma_min^(1/rho) has slope ~h^(1/rho - 1)); `EDM` takes it as 0."""
    params, static = eqx.partition(schedule, eqx.is_inexact_array)
    leaves, tree = jax.tree_util.tree_flatten(params)

    def at(i, dp):
        moved = [q + dp if j == i else q for j, q in enumerate(leaves)]
        return float(_quantity(eqx.combine(jax.tree_util.tree_unflatten(tree, moved), static), name, times))

    out = []
    for i, p in enumerate(leaves):
        if float(p) == 0:
            fd = [(at(i, h) - at(i, 0.0)) / h for h in (1e-6, 1e-9)]
            out.append(fd[1] if abs(fd[1]) <= 10 * abs(fd[0]) + 1e-6 else None)
        else:
            h = 1e-6 * abs(float(p))
            out.append((at(i, h) - at(i, -h)) / (2 * h))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("end", [0.0, 1.0])
@pytest.mark.parametrize("key", list(SCHEDULES))
def test_schedules_at_their_end_points(key, end, dtype):
    """Every quantity and its gradient w.r.t. the schedule's parameters at t = 0 and t = 1: never NaN; a finite
    value is the limit from inside (t = 1e-9 away, float64) and its gradient matches float64 finite differences;
    an infinite value is approached from inside (|q| > 15, same sign) and has gradient 0 up to rounding (it is
    infinite for every parameter value). Pairwise quantities on [1, 0], on the half interval at `end`, and on [end, end]."""
    ref = SCHEDULES[key]
    schedule = gdj.cast(ref, dtype)
    inside = end + (1e-9 if end == 0 else -1e-9)
    cases = [(name, (end,), (inside,)) for name in POINTWISE]
    half = (0.5, 0.0) if end == 0 else (1.0, 0.5)
    near = (0.5, inside) if end == 0 else (inside, 0.5)
    for name in PAIRWISE:
        cases += [(name, (1.0, 0.0), (1 - 1e-9, 1e-9)), (name, half, near), (name, (end, end), (end, end))]
    rtol = 1e-6 if dtype == np.float64 else 2e-3
    for name, times, times_inside in cases:
        value = float(_quantity(schedule, name, [jnp.asarray(t, dtype) for t in times]))
        grads = _param_grads(schedule, name, [jnp.asarray(t, dtype) for t in times])
        what = f"{key}.{name}{times} [{np.dtype(dtype).name}] = {value}, grads {grads}"
        assert not np.isnan(value) and not np.any(np.isnan(grads)), what
        limit = float(_quantity(ref, name, [jnp.asarray(t) for t in times_inside]))
        if np.isinf(value):
            assert np.sign(limit) == np.sign(value) and abs(limit) > 15, (what, limit)
            np.testing.assert_allclose(grads, 0.0, atol=rtol, err_msg=what)
            continue
        assert abs(value - limit) <= 1e-4 * max(1.0, abs(value)), (what, limit)
        fd = _finite_difference_grads(ref, name, [jnp.asarray(t) for t in times])
        scale = max(1.0, abs(value))
        for g, f in zip(grads, fd, strict=True):
            expected = 0.0 if f is None else f
            np.testing.assert_allclose(g, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def test_edm_with_sigma_min_zero_has_zero_rate_at_t_zero():
    """EDM(sigma_min=0).beta(0) = 2 sigma sigma' / (1 + sigma^2) = 0 (sigma(0) = 0, sigma'(0) = 0 for rho > 1);
    for rho < 1/2, sigma' ~ u^(rho - 1) wins: inf. Interior values agree with autodiff of log(alpha_bar)."""
    assert float(gdj.EDM(0.0, 80.0, 7.0).beta(0.0)) == 0.0
    assert float(gdj.EDM(0.0, 80.0, 0.4).beta(0.0)) == np.inf
    ts = jnp.linspace(0.0, 1.0, 11)[1:-1]
    for schedule in SCHEDULES.values():
        autodiff = jax.vmap(jax.grad(lambda t, s=schedule: -s.log_alpha_bar(t)))(ts)
        np.testing.assert_allclose(schedule.beta(ts), autodiff, rtol=1e-12)
