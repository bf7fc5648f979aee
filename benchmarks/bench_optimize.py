"""Benchmark: optimizing a DDIM time grid on the CIFAR-10 spectrum (d = 3072), optax vs scipy.

The problem: the exact KL(p_0 || p_sample) of N deterministic DDIM steps (standard init) on the schedule
sigma = tan(pi t / 2) (`Tangent(1)`), as a function of the grid t_0 = 1 > t_1 > ... > t_N = 0, parameterized
by softmax logits of the N step lengths (`gdj.LearnableGrid`). N = 10 and 50. Spectrum: the bundled
`cifar10_preprint2024` (all 3072 eigenvalues > 0, min 6.3e-6, so the KL to the data is finite).

Contenders, in one process, on the same loss and the same parameterization:

- gaussdiff_jax + optax L-BFGS (zoom line search): `ddim_law` (rotation formula) + `kl`, one jitted
  optax step (value, grad and line search); compile time reported separately. Also end-to-end `gdj.optimize`.
- gaussdiff_jax + optax Adam (lr 0.05), for reference.
- baseline: scipy.optimize.minimize(method="L-BFGS-B") on a plain numpy implementation of the same rotation
  formula with a hand-written gradient (what a user would write).

"Steps to convergence": optimizer iterations until the loss is within 1e-8 (relative) of the best value any
contender found; time to convergence is measured to that iteration (jax: excluding compilation).

Run: `python benchmarks/bench_optimize.py` (prints a Markdown table).
"""

from __future__ import annotations

import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import numpy as np
import optax
from scipy import optimize as sopt

import gaussdiff_jax as gdj

SPECTRUM = "cifar10_preprint2024"
TOL = 1e-8


# ---------------------------------------------------------------- numpy baseline (hand-written gradient)


class NumpyLoss:
    """KL(p_0 || p_sample) of DDIM on sigma = tan(pi t / 2), grid from softmax logits, with its gradient."""

    def __init__(self, lam: np.ndarray):
        self.root = np.sqrt(lam)
        self.lam = lam
        self.evaluations = 0

    def __call__(self, logits: np.ndarray):
        self.evaluations += 1
        p = np.exp(logits - logits.max())
        p /= p.sum()
        t = np.concatenate([[1.0], 1.0 - np.cumsum(p)[:-1], [0.0]])
        # theta_k = atan(sigma_k / sqrt(lam)): pi/2 at t = 1, 0 at t = 0.
        sigma = np.tan(0.5 * np.pi * t[1:-1])
        theta = np.empty((t.size, self.lam.size))
        theta[0], theta[-1] = 0.5 * np.pi, 0.0
        theta[1:-1] = np.arctan(sigma[:, None] / self.root[None, :])
        delta = theta[:-1] - theta[1:]  # (N, d), in [0, pi/2)
        u = np.sum(np.log(np.cos(delta) ** 2), axis=0)  # ln(v / lam); R^2(t_0) = 1
        value = 0.5 * np.sum(np.expm1(-u) + u)
        # Chain rule: dKL/du, du/dtheta_k = 2 (tan delta_{k-1} - tan delta_k), dtheta/dt, dt_k/dp_j, softmax.
        dkl_du = 0.5 * (1.0 - np.exp(-u))
        tan_d = np.tan(delta)
        du_dtheta = 2.0 * (tan_d[:-1] - tan_d[1:])  # interior points k = 1..N-1
        dtheta_dt = (
            0.5 * np.pi * self.root[None, :] * (1 + sigma[:, None] ** 2) / (self.lam[None, :] + sigma[:, None] ** 2)
        )
        dkl_dt = np.sum(dkl_du[None, :] * du_dtheta * dtheta_dt, axis=1)  # (N - 1,)
        # t_k = 1 - sum_{j < k} p_j: dKL/dp_j = -sum_{k > j} dKL/dt_k.
        dkl_dp = np.zeros_like(p)
        dkl_dp[:-1] = -np.cumsum(dkl_dt[::-1])[::-1]
        grad = p * (dkl_dp - np.dot(p, dkl_dp))
        return value, grad


def run_scipy(lam: np.ndarray, num_steps: int):
    loss = NumpyLoss(lam)
    trace = [(0.0, float(loss(np.zeros(num_steps))[0]))]  # entry k: the loss after k iterations
    loss.evaluations = 0
    start = time.perf_counter()

    def callback(intermediate_result):
        trace.append((time.perf_counter() - start, float(intermediate_result.fun)))

    result = sopt.minimize(
        loss,
        np.zeros(num_steps),
        jac=True,
        method="L-BFGS-B",
        callback=callback,
        options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 10},
    )
    total = time.perf_counter() - start
    return {"trace": trace, "total": total, "final": float(result.fun), "evaluations": loss.evaluations, "x": result.x}


# ---------------------------------------------------------------- gaussdiff_jax + optax


def jax_loss(source, schedule):
    def loss(grid):
        return gdj.kl(source, gdj.ddim_law(source, schedule, grid.times()))

    return loss


def run_optax(source, num_steps: int, optimizer, max_steps: int):
    schedule = gdj.Tangent(1.0)
    loss = jax_loss(source, schedule)
    params, static = eqx.partition(gdj.LearnableGrid(num_steps), eqx.is_inexact_array)
    optimizer = optax.with_extra_args_support(optimizer)

    def value_of(p):
        return loss(eqx.combine(p, static))

    def step(p, state):
        value, grad = jax.value_and_grad(value_of)(p)
        updates, state = optimizer.update(grad, state, p, value=value, grad=grad, value_fn=value_of)
        return optax.apply_updates(p, updates), state, value

    # Strong-typed initial state: optax.lbfgs starts with weak-typed line-search info (would recompile once).
    state = jax.tree_util.tree_map(lambda x: x.astype(x.dtype) if eqx.is_array(x) else x, optimizer.init(params))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, state).compile()
    compile_time = time.perf_counter() - t0
    trace = []
    start = time.perf_counter()
    for _ in range(max_steps):
        params, state, value = compiled(params, state)
        trace.append((time.perf_counter() - start, float(value)))  # loss *before* this step
    final = float(jax.jit(value_of)(params))
    trace.append((time.perf_counter() - start, final))
    # One evaluation of loss and gradient (jitted), for the per-evaluation cost.
    vg = jax.jit(jax.value_and_grad(value_of))
    jax.block_until_ready(vg(params))
    t0 = time.perf_counter()
    for _ in range(20):
        jax.block_until_ready(vg(params))
    per_eval = (time.perf_counter() - t0) / 20
    return {"trace": trace, "compile": compile_time, "final": final, "per_eval": per_eval, "params": params}


def run_gdj_optimize(source, num_steps: int, steps: int):
    loss = jax_loss(source, gdj.Tangent(1.0))
    t0 = time.perf_counter()
    result = gdj.optimize(loss, gdj.LearnableGrid(num_steps), optimizer=optax.lbfgs(), steps=steps, progress=False)
    return time.perf_counter() - t0, float(result.losses[-1])


def converged_at(trace, target):
    """(iteration, seconds) of the first trace entry with loss <= target, or None."""
    for k, (seconds, value) in enumerate(trace):
        if value <= target:
            return k, seconds
    return None


def main():
    lam = gdj.spectra.load(SPECTRUM)
    source = gdj.GaussianSource(lam)
    rows = []
    notes = []
    for num_steps in (10, 50):
        uniform = float(jax.jit(jax_loss(source, gdj.Tangent(1.0)))(gdj.LearnableGrid(num_steps)))
        # Agreement of the two implementations at the start (uniform grid) and their gradients.
        np_value, np_grad = NumpyLoss(lam)(np.zeros(num_steps))
        params, static = eqx.partition(gdj.LearnableGrid(num_steps), eqx.is_inexact_array)
        jx_grad = jax.grad(lambda p, static=static: jax_loss(source, gdj.Tangent(1.0))(eqx.combine(p, static)))(
            params
        ).logits
        notes.append(
            f"N = {num_steps}: uniform-grid KL = {uniform:.6g} (numpy {np_value:.6g}); max |grad numpy - grad jax| = "
            f"{np.max(np.abs(np_grad - np.asarray(jx_grad))):.2g}"
        )
        scipy = run_scipy(lam, num_steps)
        lbfgs = run_optax(source, num_steps, optax.lbfgs(), max_steps=60 if num_steps == 10 else 150)
        adam = run_optax(source, num_steps, optax.adam(0.05), max_steps=2000)
        best = min(scipy["final"], lbfgs["final"], adam["final"], *(v for _, v in scipy["trace"]))
        target = best * (1 + TOL)
        e2e_time, e2e_final = run_gdj_optimize(source, num_steps, steps=60 if num_steps == 10 else 150)
        for name, res, evals in [
            ("optax L-BFGS (jax)", lbfgs, None),
            ("optax Adam lr=0.05 (jax)", adam, None),
            ("scipy L-BFGS-B (numpy, hand-written gradient)", scipy, scipy["evaluations"]),
        ]:
            hit = converged_at(res["trace"], target)
            steps = f"{hit[0]}" if hit else f"not in {len(res['trace']) - 1}"
            seconds = f"{hit[1]:.3f}" if hit else "-"
            compile_time = f"{res['compile']:.2f}" if "compile" in res else "-"
            per_eval = f"{1e3 * res['per_eval']:.2f}" if "per_eval" in res else "-"
            rows.append(
                f"| {num_steps} | {name} | {steps} | {seconds} | {compile_time} | {per_eval} | "
                f"{res['final']:.10g} | {res['final'] / uniform:.4f} |" + (f" {evals} evals |" if evals else " |")
            )
        rows.append(
            f"| {num_steps} | gdj.optimize(optax.lbfgs()), end to end | {60 if num_steps == 10 else 150} (fixed) | "
            f"{e2e_time:.2f} (incl. compile) | - | - | {e2e_final:.10g} | {e2e_final / uniform:.4f} | |"
        )
        # numpy per-evaluation cost
        loss = NumpyLoss(lam)
        x = np.zeros(num_steps)
        t0 = time.perf_counter()
        for _ in range(20):
            loss(x)
        notes.append(
            f"N = {num_steps}: numpy loss+gradient {1e3 * (time.perf_counter() - t0) / 20:.2f} ms per evaluation"
        )
    print(
        f"Machine: {platform.processor() or platform.machine()}, jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"optax {optax.__version__}, float64. Spectrum: {SPECTRUM} (d = {lam.size}).\n"
    )
    print(
        "| N | method | steps to 1e-8 | time to 1e-8 (s) | compile (s) | loss+grad (ms) | final KL | final / uniform | |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    for note in notes:
        print("- " + note)


if __name__ == "__main__":
    main()
