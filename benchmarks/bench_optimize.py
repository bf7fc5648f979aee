"""Benchmark: time to optimize a DDIM time grid, `gdj.optimize` (compiled loop) vs scipy L-BFGS-B on numpy.

The problem (issue 15): the exact KL(p_{t_min} || DDIM output) or W2^2 of N deterministic DDIM steps (standard
init) on the CIFAR-10 spectrum (`gdj.spectra.load("cifar10")`, d = 3072, 9 zero eigenvalues), schedule
`Tangent(1.0)` (sigma = tan(pi t / 2)), grid `LearnableGrid(N, 1, t_min)` (softmax logits of the step lengths)
from t = 1 (sigma = inf) to sigma_min = 0.002 (EDM's, the CLI's default; the truncated target keeps the KL
finite with zero eigenvalues). N = 10, 20, 50; float64.

Contenders, in one process, on the same loss and parameterization:

- `gdj.optimize(loss, LearnableGrid(N), steps=..., tol=...)` (default optimizer: `optax.lbfgs()`) with the loss written
  as the README shows (`gdj.sample_law(src, base, gdj.DDIM(), grid.times())`), and with the DDIM closed form
  `gdj.ddim_law` (the CLI's fast path); each on every mode and on the spectrum's quadrature compression
  (`gdj.compress(src).source`, 204 weighted modes, built once per spectrum and timed apart; what
  `optimize_grid` and the CLI use after checking it at the start).
- baseline: `scipy.optimize.minimize(method="L-BFGS-B")` (memory 10, as optax's) on a plain numpy closed form
  with a hand-written gradient (`NumpyLoss`, MATH.md sections 3-4), what a user would write.

The optimum f* is the best value of both methods run to tight tolerances. "Time to 1e-8" is the wall time of
a call that stops at the first iteration whose loss is within 1e-8 (relative) of f*: scipy with `maxiter` set
to that iteration, gdj with `steps` set to it and `tol=0` (the same compiled loop: `steps` and `tol` are traced).
Cold = the first call for a problem in the process (trace + compile + run), warm = later calls (median of 5);
compile = cold - warm. Also reported: each method with its own stopping rule (scipy `ftol=1e-12, gtol=1e-8`;
gdj `tol=1e-8`), and `--profile`: where an iteration's time goes.

Run: `PYTHONPATH=. python benchmarks/bench_optimize.py [--quick] [--profile]` (prints Markdown).
"""

from __future__ import annotations

import os

# scipy's L-BFGS-B calls BLAS on tiny vectors: with OpenBLAS's threads a shared machine adds up to ~80 ms of thread
# contention to a 3 ms run. One thread is scipy at its best (and does not touch XLA, which has its own pool).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import platform
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import numpy as np
import optax
from scipy import optimize as sopt

import gaussdiff_jax as gdj

SPECTRUM = "cifar10"
SIGMA_MIN = 0.002
T_MIN = 2 / math.pi * math.atan(SIGMA_MIN)  # Tangent(1): sigma = tan(pi t / 2)
TOL = 1e-8
REPEATS = 5


# ---------------------------------------------------------------- numpy baseline (hand-written gradient)


class NumpyLoss:
    r"""KL(p_{t_min} || DDIM) or W2^2 of DDIM on sigma = tan(pi t / 2), grid from softmax logits, with its gradient.

    Per mode (MATH.md section 4), with theta_k = atan(sigma_k / sqrt(lam)) and delta_k = theta_k - theta_{k+1}:
    u = ln(v / R^2(t_min)) = sum_k ln cos^2 delta_k - ln R^2(t_0). Section 3: KL = 1/2 sum (expm1(-u) + u),
    W2^2 = sum R^2(t_min) expm1(u / 2)^2. No arctangent is needed: with phi = pi t / 2,
    tan delta_k = sqrt(lam) sin(phi_k - phi_{k+1}) / (lam cos phi_k cos phi_{k+1} + sin phi_k sin phi_{k+1})
    (finite at phi = pi/2) and ln cos^2 delta = -log1p(tan^2 delta): one division and one log1p per mode-step.
    The grid is `LearnableGrid`'s: step lengths (t_max - t_min) p, p = (softmax(z) + c) / (1 + N c), c = 16 eps.
    """

    def __init__(self, lam: np.ndarray, metric: str, t_max: float = 1.0, t_min: float = T_MIN):
        self.root, self.lam, self.metric = np.sqrt(lam), lam, metric
        self.t_max, self.t_min = t_max, t_min
        phi = 0.5 * np.pi * t_min
        self.R2_min = np.cos(phi) ** 2 * lam + np.sin(phi) ** 2
        phi = 0.5 * np.pi * t_max
        self.log_R2_0 = np.log1p(np.cos(phi) ** 2 * (lam - 1))
        self.evaluations = 0

    def __call__(self, z: np.ndarray):
        self.evaluations += 1
        n, c, span = z.size, 16 * np.finfo(np.float64).eps, self.t_max - self.t_min
        s = np.exp(z - z.max())
        s /= s.sum()
        p = (s + c) / (1 + n * c)
        t = np.concatenate([[self.t_max], self.t_max - span * np.cumsum(p)[:-1], [self.t_min]])
        phi = 0.5 * np.pi * t
        sin, cos = np.sin(phi), np.cos(phi)
        if self.t_max == 1.0:
            cos[0] = 0.0  # exactly sigma = inf
        tan_d = (
            np.sin(phi[:-1] - phi[1:])[:, None]
            * self.root
            / (np.outer(cos[:-1] * cos[1:], self.lam) + (sin[:-1] * sin[1:])[:, None])
        )  # (N, d)
        u = -np.sum(np.log1p(tan_d**2), axis=0) - self.log_R2_0
        if self.metric == "kl":
            value = 0.5 * np.sum(np.expm1(-u) + u)
            dvalue_du = -0.5 * np.expm1(-u)
        else:
            half = np.expm1(0.5 * u)
            value = np.sum(self.R2_min * half**2)
            dvalue_du = self.R2_min * half * (half + 1)
        # Chain rule: du/dtheta_k = 2 (tan delta_{k-1} - tan delta_k) at interior points,
        # dtheta/dt = (pi/2) sqrt(lam) / (lam cos^2 + sin^2), dt_k/dp_j = -span for j < k, then the softmax.
        dtheta_dt = 0.5 * np.pi * self.root / (np.outer(cos[1:-1] ** 2, self.lam) + (sin[1:-1] ** 2)[:, None])
        dvalue_dt = (2 * (tan_d[:-1] - tan_d[1:]) * dtheta_dt) @ dvalue_du  # (N - 1,)
        dvalue_dp = np.zeros(n)
        dvalue_dp[:-1] = -span * np.cumsum(dvalue_dt[::-1])[::-1]
        grad = s * (dvalue_dp - np.dot(s, dvalue_dp)) / (1 + n * c)
        return value, grad


def run_scipy(loss: NumpyLoss, n: int, *, maxiter: int, ftol: float = 0.0, gtol: float = 0.0, trace=False):
    """scipy L-BFGS-B from zero logits; `(seconds, result, losses after each iteration or None)`."""
    values = [loss(np.zeros(n))[0]] if trace else None

    def callback(intermediate_result):  # scipy passes the iterate's result when the argument has this name
        values.append(float(intermediate_result.fun))

    loss.evaluations = 0
    start = time.perf_counter()
    result = sopt.minimize(
        loss,
        np.zeros(n),
        jac=True,
        method="L-BFGS-B",
        callback=callback if trace else None,
        options={"maxiter": maxiter, "ftol": ftol, "gtol": gtol, "maxcor": 10},
    )
    return time.perf_counter() - start, result, values


# ---------------------------------------------------------------- gaussdiff_jax


def jax_loss(source, metric: str, closed_form: bool, checkpoint: int | None = None):
    """The README's loss (`sample_law`, optionally with `checkpoint`) or the DDIM closed form (`ddim_law`)."""
    base = gdj.Tangent(1.0)

    def loss(grid):
        ts = grid.times()
        if closed_form:
            law = gdj.ddim_law(source, base, ts)
        else:
            law = gdj.sample_law(source, base, gdj.DDIM(), ts, checkpoint=checkpoint)
        if metric == "kl":
            return gdj.kl(source, law, target="truncated")
        return gdj.w2_squared(source, law, target="truncated")

    return loss


def run_gdj(loss, n: int, *, steps: int, tol: float):
    start = time.perf_counter()
    # The default optimizer (L-BFGS, `optax.lbfgs()`), as a user calls it.
    result = gdj.optimize(loss, gdj.LearnableGrid(n, 1.0, T_MIN), steps=steps, tol=tol, progress=False)
    return time.perf_counter() - start, result


def first_within(values, target):
    """The first index whose value is <= target, or None."""
    hits = np.flatnonzero(np.asarray(values) <= target)
    return int(hits[0]) if hits.size else None


def fastest(fn, repeats=REPEATS):
    """The shortest of `repeats` timings `fn()[0]` (on a shared machine the least disturbed one)."""
    return min(fn()[0] for _ in range(repeats))


def case(source, lam, n: int, metric: str):
    """All measurements for one (N, metric); returns Markdown rows and a dict of raw numbers."""
    np_loss = NumpyLoss(lam, metric)
    compressed = gdj.compress(source).source  # once per spectrum (timed apart, in `main`)
    jax_losses = {
        "sample_law": jax_loss(source, metric, False),
        "ddim_law": jax_loss(source, metric, True),
        "sample_law, compressed": jax_loss(compressed, metric, False),
        "ddim_law, compressed": jax_loss(compressed, metric, True),
    }
    # Agreement at the start and of the gradients (uniform grid and a random one).
    z = np.random.default_rng(0).normal(size=n)
    params, static = eqx.partition(gdj.LearnableGrid(n, 1.0, T_MIN, logits=z), eqx.is_inexact_array)
    jv, jg = jax.jit(jax.value_and_grad(lambda p: jax_losses["sample_law"](eqx.combine(p, static))))(params)
    nv, ng = np_loss(z)
    agreement = (abs(nv / float(jv) - 1), float(np.max(np.abs(ng - np.asarray(jg.logits))) / np.max(np.abs(ng))))
    # Cold gdj calls (compile included), then the optimum: both methods to tight tolerances.
    cold = {name: run_gdj(loss, n, steps=2000, tol=1e-14) for name, loss in jax_losses.items()}
    _, _, scipy_values = run_scipy(np_loss, n, maxiter=2000, ftol=1e-15, gtol=1e-13, trace=True)
    best = min(min(scipy_values), *(float(np.min(r.losses)) for _, r in cold.values()))
    target = best * (1 + TOL)
    # The compressed loss against the exact one at the optimum found on it.
    optimum = cold["ddim_law, compressed"][1].module
    exact_there = float(jax_losses["ddim_law"](optimum))
    compressed_error = abs(float(jax_losses["ddim_law, compressed"](optimum)) / exact_there - 1)
    rows, raw = [], {"N": n, "metric": metric, "optimum": best, "agreement": agreement}
    raw["compressed"] = (compressed_error, exact_there / best - 1)
    # scipy: iterations to 1e-8, the time of a call stopping there, and its own stopping rule.
    k_scipy = first_within(scipy_values, target)
    t_scipy = fastest(lambda: run_scipy(np_loss, n, maxiter=k_scipy))
    evals = (run_scipy(np_loss, n, maxiter=k_scipy), np_loss.evaluations)[1]
    t_own, own, _ = run_scipy(np_loss, n, maxiter=2000, ftol=1e-12, gtol=1e-8)
    per_eval_np = fastest(lambda: _timed(lambda: np_loss(z)), repeats=21)
    raw["scipy"] = {
        "k": k_scipy,
        "t": t_scipy,
        "evals": evals,
        "own_t": t_own,
        "own_k": own.nit,
        "own_rel": own.fun / best - 1,
        "eval_ms": 1e3 * per_eval_np,
    }
    rows.append(
        f"| {n} | {metric} | scipy L-BFGS-B, numpy closed form | {k_scipy} ({evals} evals) | {1e3 * t_scipy:.1f} | "
        f"1.00 | – | {1e3 * t_own:.1f} ({own.nit} it, {own.fun / best - 1:.1e}) | {1e3 * per_eval_np:.2f} |"
    )
    for name, loss in jax_losses.items():
        t_cold, result = cold[name]
        k = first_within(result.losses, target)
        if k is None:
            rows.append(f"| {n} | {metric} | gdj.optimize, {name} | not reached ({result.num_steps}) | | | | | |")
            continue
        t_warm = fastest(lambda loss=loss, k=k: run_gdj(loss, n, steps=k, tol=0.0))
        t_own, own = run_gdj(loss, n, steps=2000, tol=TOL)
        t_own = fastest(lambda loss=loss: run_gdj(loss, n, steps=2000, tol=TOL))
        t_full = fastest(lambda loss=loss: run_gdj(loss, n, steps=2000, tol=1e-14), repeats=3)
        compile_s = t_cold - t_full
        per_eval = _eval_ms(loss, n)
        raw[name] = {
            "k": k,
            "t": t_warm,
            "cold": t_cold,
            "compile": compile_s,
            "own_t": t_own,
            "own_k": own.num_steps,
            "own_status": own.status,
            "own_rel": float(own.losses[-1]) / best - 1,
            "eval_ms": per_eval,
        }
        rows.append(
            f"| {n} | {metric} | gdj.optimize (L-BFGS), {name} | {k} | {1e3 * t_warm:.1f} | {t_scipy / t_warm:.2f} | "
            f"{compile_s:.2f} | {1e3 * t_own:.1f} ({own.num_steps} it, {own.status}, "
            f"{float(own.losses[-1]) / best - 1:.1e}) | {per_eval:.2f} |"
        )
    return rows, raw


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _eval_ms(loss, n):
    params, static = eqx.partition(gdj.LearnableGrid(n, 1.0, T_MIN), eqx.is_inexact_array)
    vg = jax.jit(jax.value_and_grad(lambda p: loss(eqx.combine(p, static))))
    jax.block_until_ready(vg(params))
    return 1e3 * fastest(lambda: _timed(lambda: jax.block_until_ready(vg(params))), repeats=21)


def machine() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines()
            if line.startswith("Model name")
        )
    except (StopIteration, OSError):
        model = platform.processor() or platform.machine()
    return (
        f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; jax {jax.__version__} "
        f"({jax.devices()[0].platform}), optax {optax.__version__}, numpy {np.__version__}, "
        f"scipy {sopt.__name__ and __import__('scipy').__version__}, float64"
    )


# ---------------------------------------------------------------- profile: where an iteration's time goes


class LegacyLoop:
    """The previous `gdj.optimize` loop (before issue 15): one `eqx.filter_jit` step per iteration dispatched from
    Python, `float(value)` (a host sync) after each, the best iterate tracked on the host. Built once so that
    its step is compiled once (the old `optimize` built a new closure, hence recompiled, on every call)."""

    def __init__(self, loss_fn, module, optimizer):
        optimizer = optax.with_extra_args_support(optimizer)
        self.params, static = eqx.partition(module, eqx.is_inexact_array)

        def value_of(p):
            return loss_fn(eqx.combine(p, static))

        def step(p, state):
            value, grad = jax.value_and_grad(value_of)(p)
            with jax.numpy_dtype_promotion("standard"):
                updates, state = optimizer.update(grad, state, p, value=value, grad=grad, value_fn=value_of)
                return optax.apply_updates(p, updates), state, value

        with jax.numpy_dtype_promotion("standard"):
            state = optimizer.init(self.params)
        self.state = jax.tree_util.tree_map(
            lambda x: jax.numpy.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x, state
        )
        self.step = eqx.filter_jit(step)
        self.raw = jax.jit(step)

    def __call__(self, steps: int, sync: bool = True, raw: bool = False):
        step = self.raw if raw else self.step
        params, state, losses, best = self.params, self.state, [], (math.inf, None)
        for _ in range(steps):
            previous = params
            params, state, value = step(params, state)
            if sync:
                value = float(value)
                losses.append(value)
                best = min(best, (value, previous), key=lambda b: b[0])
        jax.block_until_ready(params)
        return losses


def per_iteration(run, short: int, long: int, repeats: int = 5) -> float:
    """Seconds per iteration of `run(steps)` (already compiled), from the difference of two lengths (the fastest
    of `repeats` runs each: on a shared machine the minimum is the least disturbed)."""
    run(short)
    a = min(_timed(lambda: run(short))[0] for _ in range(repeats))
    b = min(_timed(lambda: run(long))[0] for _ in range(repeats))
    return (b - a) / (long - short)


def best_ms(fn, repeats: int = 21) -> float:
    fn()
    return 1e3 * min(_timed(fn)[0] for _ in range(repeats))


def rosenbrock(grid):
    """A cheap loss on which L-BFGS works for many iterations (the extended Rosenbrock function of the logits)."""
    x = grid.logits
    return jax.numpy.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def count_evaluations(loss, n: int, steps: int) -> float:
    """Loss evaluations per iteration of `gdj.optimize` with L-BFGS (a host callback counts executions)."""
    calls = []

    def counted(grid):
        jax.debug.callback(lambda: calls.append(1))
        return loss(grid)

    gdj.optimize(counted, gdj.LearnableGrid(n, 1.0, T_MIN), steps=steps, tol=0.0, progress=False)
    return len(calls) / (steps + 1)


def hlo_summary(loss, n: int) -> str:
    """Compile time and op counts of the compiled optimization chunk."""
    import re

    from gaussdiff_jax._optimization import _optimize as internals

    params, static = eqx.partition(gdj.LearnableGrid(n, 1.0, T_MIN), eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)  # as `gdj.optimize` builds its problem
    problem = (internals._Loss(loss), internals._Key.of(optax.lbfgs()), (treedef, static), None)
    carry = internals._start(leaves, problem)
    arguments = (carry, np.asarray(128, np.int32), np.asarray(100, np.int32), np.asarray(1e-8), problem)
    t0 = time.perf_counter()
    lowered = internals._chunk.lower(*arguments)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    text = compiled.compiled.as_text()
    stacked = len(re.findall(rf"f64\[{n},3072\]\{{1,0\}} dynamic-update-slice\(", text))
    return (
        f"trace+lower {t1 - t0:.2f} s, XLA compile {t2 - t1:.2f} s; optimized HLO: {text.count(' while(')} while "
        f"loops, {text.count('custom-call(')} custom calls (equinox error checks: host callbacks behind a "
        f"conditional), {stacked} dynamic-update-slices into ({n}, 3072) arrays (the scan's saved residuals)"
    )


def eval_costs(loss, n: int) -> tuple[float, float, float]:
    """(loss+grad, loss alone, loss+grad inside a compiled loop) in ms, jitted, at the uniform grid."""
    params, static = eqx.partition(gdj.LearnableGrid(n, 1.0, T_MIN), eqx.is_inexact_array)

    def value_of(p):
        return loss(eqx.combine(p, static))

    def looped(p, count):  # `count` gradient steps (tiny, to keep the grid valid) in one while loop
        def body(_, p):
            return jax.tree_util.tree_map(lambda a, b: a - 1e-9 * b, p, jax.grad(value_of)(p))

        return jax.lax.fori_loop(0, count, body, p)

    vg, value, loop = jax.jit(jax.value_and_grad(value_of)), jax.jit(value_of), jax.jit(looped)
    both = best_ms(lambda: jax.block_until_ready(vg(params)))
    alone = best_ms(lambda: jax.block_until_ready(value(params)))
    inside = (
        best_ms(lambda: jax.block_until_ready(loop(params, 25)), 5)
        - best_ms(lambda: jax.block_until_ready(loop(params, 5)), 5)
    ) / 20
    return both, alone, inside


def profile_case(source, n: int) -> list[str]:
    loss = jax_loss(source, "kl", False)
    grid = gdj.LearnableGrid(n, 1.0, T_MIN)
    ms = {}
    for name, fn in (
        ("sample_law", loss),
        ("sample_law checkpoint=1", _checkpointed_loss(source)),
        ("ddim_law", jax_loss(source, "kl", True)),
    ):
        both, alone, inside = eval_costs(fn, n)
        ms[f"{name}: loss+grad"], ms[f"{name}: loss"], ms[f"{name}: loss+grad inside a compiled loop"] = (
            both,
            alone,
            inside,
        )
    np_loss = NumpyLoss(np.asarray(source.eigenvalues), "kl")
    ms["numpy closed form: loss+grad"] = best_ms(lambda: np_loss(np.zeros(n)))
    # The old loop, steps 2..12 (before L-BFGS converges, about 20 iterations here: full work every step).
    old = LegacyLoop(loss, grid, optax.lbfgs())
    ms["old loop: per step (filter_jit step + float sync)"] = 1e3 * per_iteration(old, 2, 12)
    ms["old loop's step, jax.jit, no sync: per step"] = 1e3 * per_iteration(
        lambda k: old(k, sync=False, raw=True), 2, 12
    )
    old = LegacyLoop(rosenbrock, grid, optax.lbfgs())
    ms["old loop, Rosenbrock loss (~free): per step"] = 1e3 * per_iteration(old, 5, 25)
    # The new loop: a whole converging L-BFGS run / its iterations; the loop around a loss that costs nothing.
    result = gdj.optimize(loss, grid, steps=500, progress=False)
    ms[f"new loop: L-BFGS run / {result.num_steps} iterations"] = (
        best_ms(lambda: gdj.optimize(loss, grid, steps=500, progress=False), repeats=5) / result.num_steps
    )
    ms["new loop, Rosenbrock loss (~free): per iteration"] = 1e3 * per_iteration(
        lambda k: gdj.optimize(rosenbrock, grid, steps=k, tol=0.0, progress=False), 5, 25
    )
    evals = count_evaluations(loss, n, 12)
    return [
        f"- N = {n}: "
        + "; ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
        + f"; loss evaluations per L-BFGS iteration: {evals:.2f} (new loop), 2 + line-search steps (old loop)",
        f"- N = {n}, compiled chunk: {hlo_summary(jax_loss(source, 'kl', False), n)}",
    ]


def profile(source):
    print("\n### Profile: where an iteration's time goes (KL, N = 10 and 50; fastest of 5-21 runs)\n")
    for n in (10, 50):
        print("\n".join(profile_case(source, n)), flush=True)
    print(
        f"- equinox runtime checks (validate_grid, law and KL checks; fastest of 2 runs each): {_checks_comparison()}"
    )


def checks_cost(source):
    """Loss+gradient alone and inside a compiled loop (ms), one line; run under EQX_ON_ERROR=raise and =nan."""
    loss = _checkpointed_loss(source)  # the residual stacking of the default scan would hide everything else
    numbers = [x for n in (10, 50) for x in eval_costs(loss, n)[::2]]
    print(" ".join(f"{x:.3f}" for x in numbers))


def _checks_comparison() -> str:
    """Run `checks_cost` with equinox's runtime checks as host callbacks (default) and as NaNs (EQX_ON_ERROR=nan)."""
    results = {}
    for mode in ("raise", "nan", "raise", "nan"):  # alternated, twice: the machine is shared
        env = dict(os.environ, EQX_ON_ERROR=mode)
        out = subprocess.run(
            [sys.executable, __file__, "--checks-cost"], check=False, env=env, capture_output=True, text=True
        )
        results.setdefault(mode, []).append([float(x) for x in out.stdout.split()])
    best = {mode: np.min(np.array(v), axis=0) for mode, v in results.items()}
    names = ["loss+grad N=10", "inside a loop N=10", "loss+grad N=50", "inside a loop N=50"]
    return "; ".join(
        f"{name}: {best['raise'][i]:.2f} ms with checks, {best['nan'][i]:.2f} ms as NaN" for i, name in enumerate(names)
    )


def _checkpointed_loss(source):
    return jax_loss(source, "kl", False, checkpoint=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N = 10 only")
    parser.add_argument("--profile", action="store_true", help="also profile one L-BFGS iteration (N = 10, 50)")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--checks-cost", action="store_true", help=argparse.SUPPRESS)  # used by the profile
    parser.add_argument("--metrics", default="kl,w2")
    options = parser.parse_args()
    lam = np.asarray(gdj.spectra.load(SPECTRUM), dtype=np.float64)
    source = gdj.GaussianSource(lam)
    if options.checks_cost:
        return checks_cost(source)
    if options.profile_only:
        return profile(source)
    print(f"Machine: {machine()}. Spectrum: {SPECTRUM} (d = {lam.size}), sigma_min = {SIGMA_MIN}.\n")
    print(
        "| N | loss | method | iterations to 1e-8 | time to 1e-8, warm (ms) | speed-up vs scipy | compile (s) | "
        "own stopping rule (ms; iterations, stop, rel. error) | loss+grad (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    raws = []
    for n in (10,) if options.quick else (10, 20, 50):
        for metric in options.metrics.split(","):
            rows, raw = case(source, lam, n, metric)
            raws.append(raw)
            print("\n".join(rows), flush=True)
    print()
    for raw in raws:
        print(
            f"- N = {raw['N']}, {raw['metric']}: optimum {raw['optimum']:.12g}; numpy vs jax at random logits: "
            f"value {raw['agreement'][0]:.1e}, gradient {raw['agreement'][1]:.1e} (relative); at the optimum found "
            f"on the compressed spectrum, compressed vs exact loss {raw['compressed'][0]:.1e}, exact loss there "
            f"{raw['compressed'][1]:+.1e} from the optimum (relative)"
        )
    timings = [_timed(lambda: gdj.compress(source))[0] for _ in range(21)]
    print(
        f"- `gdj.compress` of the spectrum ({lam.size} -> {gdj.compress(source).source.eigenvalues.size} modes), "
        f"once per spectrum: {1e3 * np.median(timings):.2f} ms (median of 21, warm)"
    )
    if options.profile:
        profile(source)


if __name__ == "__main__":
    main()
