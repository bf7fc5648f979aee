"""Sweeps and padded step counts: same numbers as one `sample_law` per cell, one compilation, O(d) memory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj
from gaussdiff_jax._scale import _sweep

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

T_MIN = 1e-3


def _grid(schedule, n):
    return gdj.grids.uniform(schedule, n, t_max=1.0, t_min=T_MIN)


def _spectra():
    rng = np.random.default_rng(1)
    cifar = gdj.GaussianSource(jnp.asarray(gdj.spectra.load("cifar10_preprint2024")))
    with_mean = gdj.GaussianSource(rng.uniform(0.02, 5.0, 40), mean=rng.normal(size=40))
    # weighted (deduplicated) spectrum with repeats, of a third size
    weighted = gdj.deduplicate(gdj.GaussianSource(np.repeat(rng.uniform(0.1, 2.0, 25), 3)))
    return [cifar, with_mean, weighted]


SAMPLERS = [gdj.EulerMaruyama(), gdj.DDPM(), gdj.Heun(), gdj.DDIM()]
COUNTS = [3, 21]
SCHEDULES = [gdj.LinearBeta(beta_max=12.0), gdj.LinearBeta(beta_min=0.2, beta_max=22.0)]


def test_sweep_matches_sample_law_cell_by_cell():
    spectra = _spectra()
    res = gdj.sweep(spectra, SAMPLERS, COUNTS, SCHEDULES, grid=_grid, metrics=("kl", "kl_reverse", "w2"))
    assert res.kl.shape == res.kl_reverse.shape == res.w2.shape == (3, 4, 2, 2)
    assert res.num_steps == tuple(COUNTS)
    assert res.samplers == ("EulerMaruyama", "DDPM", "Heun", "DDIM")

    @eqx.filter_jit
    def reference(src, sch, smp, ts):
        law = gdj.sample_law(src, sch, smp, ts)
        return {
            "kl": gdj.kl(src, law),
            "kl_reverse": gdj.kl(src, law, direction="sample_to_target"),
            "w2": gdj.w2(src, law),
        }

    worst = 0.0
    for i, src in enumerate(spectra):
        for j, smp in enumerate(SAMPLERS):
            for c, n in enumerate(COUNTS):
                for p, sch in enumerate(SCHEDULES):
                    for m, r in reference(src, sch, smp, _grid(sch, n)).items():
                        got = float(getattr(res, m)[i, j, c, p])
                        worst = max(worst, abs(got - float(r)) / abs(float(r)))
    # Only summation order and vectorization differ (the padded modes and steps contribute exactly 0).
    assert worst < 1e-13
    rows = res.rows()
    assert len(rows) == 3 * 4 * 2 * 2
    # row order: spectrum, sampler, step count, schedule (last fastest)
    assert rows[7] == {
        "spectrum": 0,
        "sampler": "DDPM",
        "num_steps": 21,
        "schedule": 1,
        "kl": float(res.kl[0, 1, 1, 1]),
        "kl_reverse": float(res.kl_reverse[0, 1, 1, 1]),
        "w2": float(res.w2[0, 1, 1, 1]),
    }


def test_named_grid_and_defaults():
    src = _spectra()[1]
    res = gdj.sweep(src, gdj.Heun(), [5, 9], gdj.LinearBeta(), grid="quadratic", t_min=2e-3)
    for c, n in enumerate([5, 9]):
        ts = gdj.grids.quadratic(None, n, t_max=1.0, t_min=2e-3)
        law = gdj.sample_law(src, gdj.LinearBeta(), gdj.Heun(), ts)
        np.testing.assert_allclose(res.kl[0, 0, c, 0], gdj.kl(src, law), rtol=1e-13)
        np.testing.assert_allclose(res.w2[0, 0, c, 0], gdj.w2(src, law), rtol=1e-13)
    assert res.kl_reverse is None


def test_one_trace_for_new_step_counts(monkeypatch):
    """Counts of different lengths share one compiled function as long as the largest count is the same."""
    traces = []
    real = _sweep.sample_law

    def counting(*args, **kwargs):
        traces.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "sample_law", counting)
    src = _spectra()[1]
    first = gdj.sweep(src, gdj.DDPM(), [2, 7, 30], gdj.LinearBeta(), grid=_grid)
    n_traced = len(traces)
    assert n_traced >= 1
    second = gdj.sweep(src, gdj.DDPM(), [5, 13, 30], gdj.LinearBeta(), grid=_grid)
    assert len(traces) == n_traced  # no new trace, so no new compilation
    np.testing.assert_array_equal(first.kl[..., 2, :], second.kl[..., 2, :])
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), _grid(None, 13))
    np.testing.assert_allclose(second.kl[0, 0, 1, 0], gdj.kl(src, law), rtol=1e-13)


def test_padded_steps_are_exact_identities_with_zero_gradient():
    src = _spectra()[1]
    sch = gdj.LinearBeta()
    ts = _grid(None, 17)
    padded = jnp.concatenate([ts, jnp.full(9, T_MIN)])
    for smp in (gdj.Heun(), gdj.DDPM()):

        def loss(grid, n=None, smp=smp):
            return gdj.w2_squared(src, gdj.sample_law(src, sch, smp, grid, num_steps=n))

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        v_ref, g_ref = value_and_grad(ts)
        v_pad, g_pad = value_and_grad(padded, jnp.int32(17))
        assert v_pad == v_ref  # bit-identical
        np.testing.assert_allclose(g_pad[:18], g_ref, rtol=1e-12)  # fusion may differ in the last bit
        np.testing.assert_array_equal(g_pad[18:], 0.0)
        assert loss(padded, 17) == loss(ts)  # also outside jit


def test_checkpointed_gradient_is_identical():
    src = _spectra()[1]
    ts = _grid(None, 40)

    def loss(beta_max, checkpoint):
        schedule = gdj.LinearBeta(beta_max=beta_max)
        return gdj.w2_squared(src, gdj.sample_law(src, schedule, gdj.Heun(), ts, checkpoint=checkpoint))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_ref = grad(jnp.asarray(18.0), None)
    for k in (1, 6, 64):  # segments of 1, not dividing N, larger than N
        np.testing.assert_allclose(grad(jnp.asarray(18.0), k), g_ref, rtol=1e-13)


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_memory_forward_independent_of_steps_and_checkpointing_shrinks_gradient():
    """XLA's own buffer plan: the forward pass keeps O(d), reverse mode O(N d) unless checkpointed."""
    d = 20_000
    src = gdj.GaussianSource(jnp.linspace(0.01, 3.0, d))
    sch = gdj.LinearBeta()

    def forward(ts):
        return gdj.w2_squared(src, gdj.sample_law(src, sch, gdj.Heun(), ts))

    small, large = _temp_bytes(forward, _grid(None, 64)), _temp_bytes(forward, _grid(None, 1024))
    assert large < 1.2 * small + 1e5
    assert large < 40 * d * 8  # a few per-mode vectors, not N of them

    def gradient(ts, checkpoint=None):
        return jax.grad(
            lambda b: gdj.w2_squared(
                src, gdj.sample_law(src, gdj.LinearBeta(beta_max=b), gdj.Heun(), ts, checkpoint=checkpoint)
            )
        )(jnp.asarray(20.0))

    ts = _grid(None, 1024)
    plain = _temp_bytes(gradient, ts)
    segmented = _temp_bytes(lambda t: gradient(t, checkpoint=32), ts)
    assert plain > 1024 * d * 8  # at least one per-mode vector per step is stored
    assert segmented < plain / 8


def test_float32_sweep_matches_float64():
    # (Heun's KL(target || sample) on CIFAR at N = 10 is ill-conditioned in float32, see test_float32.py.)
    spectra = _spectra()[:2]
    samplers = [gdj.DDPM(), gdj.EulerMaruyama()]
    res64 = gdj.sweep(spectra, samplers, [10, 50], gdj.LinearBeta(), grid=_grid)
    spectra32 = [gdj.cast(s, jnp.float32) for s in spectra]
    res32 = gdj.sweep(spectra32, samplers, [10, 50], gdj.LinearBeta(), grid=_grid)
    assert res32.kl.dtype == res32.w2.dtype == jnp.float32
    np.testing.assert_allclose(res32.kl, res64.kl, rtol=2e-4)
    np.testing.assert_allclose(res32.w2, res64.w2, rtol=2e-4)


def test_mixed_schedule_types_one_trace_per_structure(monkeypatch):
    """A list mixing schedule types is grouped by structure: one trace per (group, sampler), all groups in one
    compiled program, results in list order."""
    traces = []
    real = _sweep.sample_law

    def counting(*args, **kwargs):
        traces.append(type(args[1]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "sample_law", counting)
    src = _spectra()[1]
    schedules = [
        gdj.LinearBeta(),
        gdj.EDM(0.01, 50.0, 7.0),
        gdj.LogSNRLinear(),
        gdj.LinearBeta(beta_max=15.0),
        gdj.Tangent(0.5, sigma_min=0.01, sigma_max=50.0),
        gdj.EDM(0.02, 40.0, 5.0),
    ]
    samplers = [gdj.DDPM(), gdj.Heun()]
    # Per-schedule grids: a name for some, a callable for others.
    grids = [_grid, "uniform", _grid, "quadratic", _grid, "uniform"]
    res = gdj.sweep(src, samplers, [4, 9], schedules, grid=grids, t_min=T_MIN, metrics=("kl", "w2"))
    assert res.kl.shape == (1, 2, 2, 6)
    # 4 structures (LinearBeta, EDM, LogSNRLinear, Tangent) x 2 samplers; vmap traces sample_law once per call.
    assert sorted(set(traces)) == ["EDM", "LinearBeta", "LogSNRLinear", "Tangent"] and len(traces) == 8
    for p, (sch, g) in enumerate(zip(schedules, grids)):
        for j, smp in enumerate(samplers):
            for c, n in enumerate([4, 9]):
                ts = g(sch, n) if callable(g) else gdj.grids.make(g, sch, num_steps=n, t_max=1.0, t_min=T_MIN)
                law = gdj.sample_law(src, sch, smp, ts)
                np.testing.assert_allclose(res.kl[0, j, c, p], gdj.kl(src, law), rtol=1e-12)
                np.testing.assert_allclose(res.w2[0, j, c, p], gdj.w2(src, law), rtol=1e-12)


def test_spectra_shape_rule():
    """A list holds one spectrum per entry; one source may be a batch (S, d); nothing else is flattened."""
    rng = np.random.default_rng(3)
    a = gdj.GaussianSource(rng.uniform(0.1, 2.0, (2, 4)))
    b = gdj.GaussianSource(rng.uniform(0.1, 2.0, (3, 5)))
    with pytest.raises(ValueError, match="one spectrum"):
        gdj.sweep([a, b], gdj.DDPM(), 3, gdj.LinearBeta(), grid=_grid)
    with pytest.raises(ValueError, match="ambiguous"):
        gdj.sweep(gdj.GaussianSource(rng.uniform(0.1, 2.0, (2, 3, 4))), gdj.DDPM(), 3, gdj.LinearBeta(), grid=_grid)
    batched = gdj.sweep(b, gdj.DDPM(), 3, gdj.LinearBeta(), grid=_grid)
    listed = gdj.sweep([gdj.GaussianSource(row) for row in b.eigenvalues], gdj.DDPM(), 3, gdj.LinearBeta(), grid=_grid)
    assert batched.kl.shape == listed.kl.shape == (3, 1, 1, 1)
    np.testing.assert_allclose(batched.kl, listed.kl, rtol=1e-14)


def test_bad_input_is_a_clear_error():
    src = _spectra()[1]
    with pytest.raises(ValueError, match="zero eigenvalue"):
        gdj.sweep(gdj.GaussianSource(jnp.asarray([0.0, 1.0])), gdj.DDPM(), 5, gdj.LinearBeta())
    ok = gdj.sweep(gdj.GaussianSource(jnp.asarray([0.0, 1.0])), gdj.DDPM(), 5, gdj.LinearBeta(), metrics=("w2",))
    assert np.isfinite(ok.w2).all() and ok.kl is None
    with pytest.raises(ValueError, match="metrics must be"):
        gdj.sweep(src, gdj.DDPM(), 5, gdj.LinearBeta(), metrics=("tv",))
    with pytest.raises(ValueError, match="positive integers"):
        gdj.sweep(src, gdj.DDPM(), [0, 5], gdj.LinearBeta())
    with pytest.raises(ValueError, match="unknown grid"):
        gdj.sweep(src, gdj.DDPM(), 5, gdj.LinearBeta(), grid="fibonacci")
    with pytest.raises(ValueError, match="2 grid specs for 1 schedules"):
        gdj.sweep(src, gdj.DDPM(), 5, gdj.LinearBeta(), grid=["uniform", "uniform"])
    with pytest.raises(ValueError, match="expected AbstractSampler"):
        gdj.sweep(src, [gdj.DDPM(), "heun"], 5, gdj.LinearBeta())
    ts = _grid(None, 5)
    with pytest.raises(ValueError, match=r"num_steps must lie in \[1, 5\]"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), ts, num_steps=6)
    with pytest.raises(ValueError, match="integer scalar"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), ts, num_steps=2.5)
    with pytest.raises(ValueError, match="checkpoint"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), ts, checkpoint=0)
    # padding is not validated, the active part is
    padded = jnp.concatenate([ts, jnp.asarray([0.5, 0.9])])
    gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), padded, num_steps=5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), padded, num_steps=6)
