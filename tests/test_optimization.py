"""Gradient-based schedule optimization with optax reaches the analytic optima (MATH.md section 4):
the isotropic tangent law at every N, gamma* within the tangent family, the Euler-Lagrange optimum on the
leading term and on the exact KL at N = 1000, and the exact finite-N grid optimum. (The AYS / "KL optimal"
reduction is checked in test_optimal.py.)

optax.lbfgs (a quasi-Newton method with a zoom line search; gdj.optimize passes it value, grad and value_fn)
reaches 1e-6 in a few dozen steps where Adam would need thousands. Several independent problems are solved in
one call where possible (a tuple of modules and a separable loss), to compile once.

The second half tests the optimization loop itself (a compiled while loop run in chunks): the stopping rule and
how it is reported, the best iterate, the history, no retracing, reuse of the line search's evaluations,
float32, non-finite losses and progress reports. No timing thresholds (speed: benchmarks/bench_optimize.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gaussdiff_jax as gdj

pytestmark = pytest.mark.slow  # long float32 / optimization runs: the full suite only (`-m "not slow"` skips them)

SPECTRUM = np.array([0.1, 0.5, 1.0, 4.0])


def _optimize(loss, module, steps, tol=1e-8):
    # Plain optax.lbfgs() (its int32 / int64 mixing is handled by gdj.optimize under strict promotion).
    return gdj.optimize(loss, module, optimizer=optax.lbfgs(), steps=steps, tol=tol, progress=False)


def _kl(source, schedule, ts, **kwargs):
    return gdj.kl(source, gdj.ddim_law(source, schedule, ts), **kwargs)


def test_grid_optimization_reaches_exact_finite_n_optima():
    # Five independent grid optimizations of the exact finite-N KL, vmapped in one L-BFGS run:
    # (1-4) isotropic lam = 2, d = 4, N = 2, 5, 10, 50, grids of Tangent(1) (not optimal for lam = 2): the optimum
    #       is KL_min(N) = (d/2)(1/c - 1 + ln c), c = cos^{2N}(pi/2N), on the tangent law's grid;
    # (5)   lam = (0.1, 0.5, 1, 4), N = 4, grid of Tangent(gamma*): the tangent law (uniform grid) lies 16.6% above.
    # Each N-step grid is a 50-step LearnableGrid whose 50 - N surplus steps start at logit -30 (length ~1e-13).
    steps = [2, 5, 10, 50, 4]
    eigenvalues = jnp.asarray(np.stack([np.full(4, 2.0)] * 4 + [SPECTRUM]))
    gammas = jnp.asarray([1.0, 1.0, 1.0, 1.0, float(gdj.tangent_gamma(gdj.GaussianSource(SPECTRUM)))])
    logits = np.full((5, 50), -30.0)
    for row, n in enumerate(steps):
        logits[row, :n] = 0.0  # uniform active steps to start with

    @eqx.filter_jit
    def evaluate(grids):
        def kl_of(grid, lam, gamma):
            return _kl(gdj.GaussianSource(lam), gdj.Tangent(gamma), grid.times())

        return jax.vmap(kl_of)(grids, eigenvalues, gammas), jax.vmap(lambda g: g.times())(grids)

    start = gdj.LearnableGrid(50, logits=logits)
    tangent_uniform = float(evaluate(start)[0][4])
    scale = jnp.asarray([float(gdj.isotropic_optimal_kl(4, n)) for n in steps[:4]] + [tangent_uniform])
    result = _optimize(lambda grids: jnp.sum(evaluate(grids)[0] / scale), start, steps=40, tol=0.0)
    values, times = (np.asarray(x) for x in evaluate(result.module))
    for row, n in enumerate(steps):
        assert times[row, n] < 1e-9  # the surplus steps stayed negligible: an N-step grid
    for row, n in enumerate(steps[:4]):
        # KL_min(N) to 1e-6 ...
        np.testing.assert_allclose(values[row], scale[row], rtol=1e-6)
        # ... on the tangent law's grid: abar_k = 1 / (1 + lam tan^2(pi k / 2N)).
        k = np.arange(n, -1, -1)
        abar = 1 / (1 + np.tan(np.pi * times[row, : n + 1] / 2) ** 2)  # Tangent(1)
        np.testing.assert_allclose(abar, 1 / (1 + 2.0 * np.tan(np.pi * k / (2 * n)) ** 2), atol=1e-6)
    assert abs(tangent_uniform / values[4] - 1.166) < 5e-4, tangent_uniform / values[4]


def test_leading_term_optimization():
    # One L-BFGS run, two independent problems on the leading term D = sum I^2 / 4, lam = (0.1, 0.5, 1, 4):
    # within the tangent family gamma goes to the closed-form gamma* (to 1e-6); a flexible schedule (a 32-knot
    # warp of tan(pi t / 2)) comes within 0.1% of the Euler-Lagrange optimum D* = 8.74182, 9.8% below the best
    # tangent law. (The W2 gamma* and the 42.9% power-law margin are checked without optax in test_optimal.)
    source = gdj.GaussianSource(SPECTRUM)
    D0 = 0.25 * float(jnp.sum(gdj.tangent_functionals(source, 1.0) ** 2))  # value at the start, gamma = 1
    optimum = float(gdj.euler_lagrange_schedule(source).value)

    @eqx.filter_jit
    def parts(modules):
        return [gdj.kl_leading_term(source, schedule, 1) for schedule in modules]

    result = _optimize(
        lambda modules: sum(x / s for x, s in zip(parts(modules), [D0, optimum])),
        (gdj.Tangent(1.0), gdj.LearnableSchedule(32)),
        steps=60,
        tol=0.0,
    )
    tangent_value, value = (float(x) for x in parts(result.module))
    gamma = float(result.module[0].gamma)
    np.testing.assert_allclose(gamma, 0.8062932744, rtol=1e-6)
    np.testing.assert_allclose(gamma, gdj.tangent_gamma(source), rtol=1e-6)
    np.testing.assert_allclose(tangent_value, 9.5993175218, rtol=1e-9)
    assert optimum <= value < 1.001 * optimum, (value, optimum)
    assert 9.5993175218 / value > 1.097


def test_flexible_schedule_exact_kl_at_n1000():
    # Optimizing the exact KL of 1000 uniform DDIM steps: N^2 KL(p_0 || p_sample) comes within 0.5% of D*, and
    # within 0.1% of the prediction with the N^-3 term, D* + sum I*^3 / (12 N).
    source = gdj.GaussianSource(SPECTRUM)
    el = gdj.euler_lagrange_schedule(source)
    D, n = float(el.value), 1000
    predicted = D + float(jnp.sum(el.functionals**3)) / (12 * n)
    ts = jnp.linspace(1.0, 0.0, n + 1)
    result = _optimize(lambda s: n * n * _kl(source, s, ts), gdj.LearnableSchedule(32), steps=40, tol=0.0)
    scaled = result.losses[-1]  # N^2 KL of the returned schedule
    assert D < scaled < 1.005 * D, (scaled, D)
    assert abs(scaled / predicted - 1) < 1e-3, (scaled, predicted)


def test_float32_optimization():
    # An isotropic check in float32 (as on accelerators), with Adam: the optimum to float32 accuracy.
    source = gdj.cast(gdj.GaussianSource(np.full(3, 2.0)), jnp.float32)
    base = gdj.cast(gdj.Tangent(1.0), jnp.float32)
    grid = gdj.cast(gdj.LearnableGrid(8), jnp.float32)
    best = float(gdj.isotropic_optimal_kl(3, 8))
    result = gdj.optimize(
        lambda g: _kl(source, base, g.times()) / best, grid, optimizer=optax.adam(0.05), steps=300, progress=False
    )
    assert result.module.logits.dtype == jnp.float32
    np.testing.assert_allclose(result.losses[-1], 1.0, rtol=1e-4)


# ---------------------------------------------------------------- the optimization loop


def _isotropic_grid_problem(num_steps=5, lam=2.0, dim=4):
    """KL of a DDIM grid on Tangent(1) for the isotropic spectrum lam: minimum KL_min(N) (MATH.md section 4)."""
    source = gdj.GaussianSource(np.full(dim, lam))

    def loss(grid):
        return _kl(source, gdj.Tangent(1.0), grid.times())

    return loss, float(gdj.isotropic_optimal_kl(dim, num_steps))


def test_stops_when_converged_and_reports_it():
    loss, optimum = _isotropic_grid_problem()
    tol = 1e-8
    result = gdj.optimize(loss, gdj.LearnableGrid(5), optimizer=optax.lbfgs(), steps=500, tol=tol, progress=False)
    assert result.status == "converged"
    assert 2 <= result.num_steps < 100, result.num_steps
    assert result.losses.shape == (result.num_steps + 1,)
    # The rule held at the last iterate (checked here from the history and an independent gradient) ...
    f_prev, f_last = result.losses[-2:]
    assert abs(f_last - f_prev) <= tol * abs(f_last)
    value, grad = jax.jit(jax.value_and_grad(loss))(result.module)
    assert float(value) == pytest.approx(f_last, rel=1e-12)
    assert float(jnp.linalg.norm(grad.logits)) <= np.sqrt(tol) * f_last
    # ... and the loss is the closed-form optimum to about tol.
    np.testing.assert_allclose(f_last, optimum, rtol=1e-7)
    # tol = 0 runs to the cap: every step is recorded.
    capped = gdj.optimize(loss, gdj.LearnableGrid(5), optimizer=optax.lbfgs(), steps=7, tol=0.0, progress=False)
    assert capped.status == "max_steps" and capped.num_steps == 7 and capped.losses.shape == (8,)
    np.testing.assert_allclose(capped.losses, result.losses[:8], rtol=1e-12)
    # steps = 0 evaluates the start only.
    start = gdj.optimize(loss, gdj.LearnableGrid(5), steps=0, progress=False)
    assert start.status == "max_steps" and start.losses.shape == (1,)
    assert start.losses[0] == pytest.approx(float(loss(gdj.LearnableGrid(5))), rel=1e-14)


def test_returns_the_best_iterate():
    # Gradient descent with step 1.5 on x^2 doubles |x| and flips its sign: x_k = (-2)^k, the start is best.
    def loss(x):
        return jnp.sum(x**2)

    result = gdj.optimize(loss, jnp.ones(1), optimizer=optax.sgd(1.5), steps=5, tol=0.0, progress=False)
    np.testing.assert_allclose(result.losses, 4.0 ** np.arange(6))
    np.testing.assert_allclose(result.module, [1.0])
    # Descending then overshooting: the best is in the middle. Step 0.75: x_k = (-1/2)^k until the cap.
    result = gdj.optimize(loss, jnp.ones(1), optimizer=optax.sgd(0.75), steps=6, tol=0.0, progress=False)
    np.testing.assert_allclose(result.module, [(-0.5) ** 6])


def test_lbfgs_and_adam_reach_tangent_gamma():
    # Within the tangent family the leading term is minimized by gamma*^4 = tr(Sigma) / tr(Sigma^-1).
    source = gdj.GaussianSource(SPECTRUM)
    expected = float(gdj.tangent_gamma(source))

    def loss(schedule):
        return gdj.kl_leading_term(source, schedule, 1)

    lbfgs = gdj.optimize(loss, gdj.Tangent(1.0), optimizer=optax.lbfgs(), steps=100, tol=1e-15, progress=False)
    adam = gdj.optimize(
        loss,
        gdj.Tangent(1.0),
        optimizer=optax.adam(optax.cosine_decay_schedule(0.02, 1500)),
        steps=1500,
        tol=1e-15,
        progress=False,
    )
    assert lbfgs.num_steps < 100
    np.testing.assert_allclose(float(lbfgs.module.gamma), expected, rtol=1e-6)
    np.testing.assert_allclose(float(adam.module.gamma), expected, rtol=1e-6)


def test_no_retrace_on_second_call():
    # A trace counter in the loss: the second call (new module, a new optax.lbfgs(), another cap and tol) reuses
    # the compiled loop; different data passed as `args` does too.
    traces = []

    def loss(grid, lam):
        traces.append(1)
        return _kl(gdj.GaussianSource(lam), gdj.Tangent(1.0), grid.times())

    lam = jnp.full(3, 2.0)
    first = gdj.optimize(loss, gdj.LearnableGrid(4), optimizer=optax.lbfgs(), steps=30, args=lam, progress=False)
    count = len(traces)
    assert count > 0
    second = gdj.optimize(
        loss, gdj.LearnableGrid(4), optimizer=optax.lbfgs(), steps=12, tol=1e-6, args=lam, progress=False
    )
    other = gdj.optimize(loss, gdj.LearnableGrid(4), optimizer=optax.lbfgs(), steps=30, args=lam * 3, progress=False)
    assert len(traces) == count
    np.testing.assert_allclose(second.losses, first.losses[: second.losses.shape[0]], rtol=1e-12)
    assert other.losses[0] != first.losses[0]
    # A different optimizer configuration is not mistaken for the cached one: Adam's first step moves every
    # parameter by the learning rate, so x = 1 - lr after one step.
    for lr in (0.1, 0.3):
        result = gdj.optimize(
            lambda x: jnp.sum(x**2), jnp.ones(2), optimizer=optax.adam(lr), steps=1, tol=0.0, progress=False
        )
        np.testing.assert_allclose(result.losses, [2.0, 2 * (1 - lr) ** 2], rtol=1e-6)  # Adam eps = 1e-8


def test_reusing_line_search_evaluations_changes_nothing():
    # gdj.optimize reuses the loss and gradient an optax line search computed at the accepted point; an identity
    # transformation after the line search disables that (a fresh evaluation each step): same iterates. On the
    # Rosenbrock function, where the line searches work hard.
    def rosenbrock(x):
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def run(optimizer):
        return gdj.optimize(rosenbrock, jnp.zeros(6), optimizer=optimizer, steps=25, tol=0.0, progress=False)

    reused, fresh = run(optax.lbfgs()), run(optax.chain(optax.lbfgs(), optax.identity()))
    np.testing.assert_allclose(reused.losses, fresh.losses, rtol=1e-12)
    assert reused.losses[-1] < 0.1 * reused.losses[0]
    # The same for a backtracking line search that stores its gradient.
    a, b = (
        run(
            optax.chain(optax.sgd(0.1), optax.scale_by_backtracking_linesearch(max_backtracking_steps=30, store_grad=s))
        )
        for s in (True, False)
    )
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-12)
    assert a.losses[-1] < 0.9 * a.losses[0]


def test_float32_lbfgs_stops():
    _, optimum = _isotropic_grid_problem(num_steps=8, dim=3)
    source = gdj.cast(gdj.GaussianSource(np.full(3, 2.0)), jnp.float32)
    base = gdj.cast(gdj.Tangent(1.0), jnp.float32)

    def loss32(grid):
        return _kl(source, base, grid.times())

    grid = gdj.cast(gdj.LearnableGrid(8), jnp.float32)
    result = gdj.optimize(loss32, grid, optimizer=optax.lbfgs(), steps=200, progress=False)
    assert result.module.logits.dtype == jnp.float32 and result.losses.dtype == np.float32
    assert result.num_steps < 200 and result.status == "converged"
    np.testing.assert_allclose(float(np.min(result.losses)), optimum, rtol=1e-5)


def test_nonfinite_loss_raises_with_the_best_module():
    # log(x) with gradient steps of 1: x = 3 -> 3 - 1/3 -> ... until x < 0, where the loss is NaN.
    def loss(x):
        return jnp.sum(jnp.log(x))

    with pytest.raises(FloatingPointError, match=r"optimize: the loss is nan at step \d+") as info:
        gdj.optimize(loss, jnp.full(1, 3.0), optimizer=optax.sgd(1.0), steps=50, progress=False)
    partial = info.value.result
    assert partial.status == "nonfinite" and np.isnan(partial.losses[-1])
    assert np.all(np.isfinite(partial.losses[:-1]))
    np.testing.assert_allclose(float(partial.module[0]), np.exp(np.min(partial.losses[:-1])), rtol=1e-12)
    # A non-finite start fails at step 0.
    with pytest.raises(FloatingPointError, match="at step 0"):
        gdj.optimize(loss, jnp.full(1, -1.0), optimizer=optax.sgd(1.0), steps=5, progress=False)


def test_progress_reports_and_checks():
    loss, _ = _isotropic_grid_problem()
    calls = []
    result = gdj.optimize(
        loss,
        gdj.LearnableGrid(5),
        optimizer=optax.adam(0.05),
        steps=40,
        tol=0.0,
        progress=lambda step, value: calls.append((step, value)),
    )
    assert calls, "the progress callback never fired"
    steps = [step for step, _ in calls]
    assert steps == sorted(steps) and steps[-1] == result.num_steps == 40
    assert calls[-1][1] == result.losses[-1]
    gdj.optimize(loss, gdj.LearnableGrid(5), optimizer=optax.adam(0.05), steps=5, progress=True)  # rich bar
    with pytest.raises(ValueError, match="real scalar"):
        gdj.optimize(lambda x: x, jnp.ones(2), steps=3, progress=False)
    with pytest.raises(ValueError, match="tol"):
        gdj.optimize(loss, gdj.LearnableGrid(5), tol=-1.0, progress=False)
    with pytest.raises(ValueError, match="steps"):
        gdj.optimize(loss, gdj.LearnableGrid(5), steps=-1, progress=False)
    # filter_spec: only the grid is trained, the base schedule's gamma (an array) is passed through untouched.
    source = gdj.GaussianSource(SPECTRUM)
    module = (gdj.LearnableGrid(4), gdj.Tangent(0.8))
    spec = (True, False)
    result = gdj.optimize(lambda m: _kl(source, m[1], m[0].times()), module, steps=20, filter_spec=spec, progress=False)
    assert float(result.module[1].gamma) == 0.8 and result.losses[-1] < result.losses[0]
