"""Cost per mode-step of the engine's vector path (multistep samplers: a small per-mode state with a covariance
recursion) next to its scalar path (one-step samplers), in one process (issue 12).

For each sampler: `gdj.w2(source, gdj.sample_law(source, LinearBeta(), sampler, ts))` under `jax.jit`, float64,
d modes, N steps; the median of repeated calls after a compiling call (compile time reported apart), and the
cost per mode-step = time / (d N) and per mode-evaluation = time / (d NFE). Ratios are against DDIM (scalar path,
one evaluation per step).

    PYTHONPATH=. python benchmarks/bench_multistep.py [--modes 65536] [--steps 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import gaussdiff_jax as gdj  # noqa: E402

SAMPLERS = {
    "DDIM (scalar)": gdj.DDIM(),
    "Heun (scalar, 2 evals)": gdj.Heun(),
    "DPM-Solver++ 2M (vector)": gdj.DPMSolverMultistep(2),
    "DPM-Solver++ 3M (vector)": gdj.DPMSolverMultistep(3),
    "UniPC bh2 order 2 (vector)": gdj.UniPC(2),
    "PLMS (vector)": gdj.PNDM(),
    "DPM-Solver 2S singlestep (vector)": gdj.DPMSolverSinglestep(2),
}


def _time(fn, repeats: int) -> tuple[float, float]:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    median = statistics.median(runs)
    return median, first - median


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    d, n = args.modes, args.steps
    source = gdj.GaussianSource(jnp.geomspace(1e-4, 50.0, d))
    schedule = gdj.LinearBeta()
    ts = jnp.linspace(1.0, 1e-3, n + 1)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}; d = {d}, N = {n}, float64, median of {args.repeats}.\n")
    print("| sampler | time (ms) | compile (s) | ns per mode-step | ns per mode-evaluation | × DDIM per mode-step |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for name, sampler in SAMPLERS.items():
        f = jax.jit(lambda s, t, sampler=sampler: gdj.w2(s, gdj.sample_law(s, schedule, sampler, t)))
        seconds, compile_s = _time(lambda: f(source, ts), args.repeats)
        per_step = seconds / (d * n) * 1e9
        nfe = sampler.num_evaluations(schedule, ts)
        base = per_step if base is None else base
        print(f"| {name} | {seconds * 1e3:.1f} | {compile_s:.2f} | {per_step:.2f} | {seconds / (d * nfe) * 1e9:.2f} "
              f"| {per_step / base:.2f} |")


if __name__ == "__main__":
    main()
