"""How far the engine is from the machine's limit: `sample_law` against a plain `lax.scan` of the same recursion.

Workload (issue 15): the ADSN texture spectrum (196 608 modes), LinearBeta, 1000 points from t = 1 to 1e-3,
standard init, W2 to the data, float64 and float32, EM and Heun (and the other one-step samplers of
`bench_throughput.SAMPLERS`), one process:

- **engine**: `gdj.w2(src, gdj.sample_law(src, schedule, sampler, ts))` under `jax.jit`, as users call it (the
  deviation recursions that keep float32 right, the finiteness checks, the default rematerialization);
- **plain scan**: the same sampler's per-step affine coefficients (`sampler.step`: gain, offset, noise variance,
  per mode) folded by a bare `lax.scan` on the plain mean and variance, `g' = A g + C`, `v' = A^2 v + Q`: the
  cheapest correct float64 program for the recursion, and what the engine's extra state costs on top of it;
- **numpy loop**: `bench_throughput.numpy_w2`, the same recursion vectorized over modes on the host.

Reported: median of 5 steady calls, compile time apart (first call minus the median), ns per mode-step, the
engine's ratio to the plain scan, and the relative W2 difference of each float32 run to the float64 engine
(the plain scan in float32 shows why the engine carries deviations).

Run from the repository root: `PYTHONPATH=. python benchmarks/bench_engine_limit.py [--samplers EM,Heun]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

import gaussdiff_jax as gdj

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import SAMPLERS, numpy_w2, timed


def plain_law(sampler, schedule, lam, ts):
    """Mean multiplier g and variance v of the output: `sampler.step`'s affine map folded by a bare scan."""

    def body(carry, times):
        g, v = carry
        step = sampler.step(schedule, times[0], times[1], lam)
        gain = step.gain
        return (gain * g + step.offset, gain * gain * v + step.noise_variance), None

    start = (jnp.zeros_like(lam), jnp.ones_like(lam))  # standard init: x ~ N(0, 1), no dependence on the mean
    (g, v), _ = jax.lax.scan(body, start, (ts[:-1], ts[1:]))
    return g, v


def plain_w2(sampler, schedule, lam, ts):
    """W2 to the data (mean 0): sqrt(sum (sqrt(v) - sqrt(lam))^2), as `numpy_w2`."""
    _, v = plain_law(sampler, schedule, lam, ts)
    return jnp.sqrt(jnp.sum((jnp.sqrt(v) - jnp.sqrt(lam)) ** 2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samplers", default="EM,Heun", help="comma-separated names of bench_throughput.SAMPLERS")
    parser.add_argument("--points", type=int, default=1000)
    options = parser.parse_args()
    lam64 = np.asarray(gdj.spectra.load("adsn_fabric"), dtype=np.float64)
    ts64 = np.linspace(1.0, 1e-3, options.points)
    mode_steps = lam64.size * (options.points - 1)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"({jax.devices()[0].platform}); load average {os.getloadavg()[0]:.1f}. ADSN, d = {lam64.size}, "
        f"{options.points} points, LinearBeta, standard init, W2 to the data.\n"
    )
    print(
        "| sampler | dtype | numpy loop (ms) | plain scan (ms) | engine (ms) | engine / plain | engine ns per "
        "mode-step | engine × numpy | compile engine / plain (s) | W2 rel. diff to f64 engine: engine / plain |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for name in options.samplers.split(","):
        sampler = SAMPLERS[name]
        t0 = time.perf_counter()
        numpy_w2(name, lam64, ts64)
        t_numpy = time.perf_counter() - t0
        reference = None
        for dtype in (jnp.float64, jnp.float32):
            source = gdj.cast(gdj.GaussianSource(lam64), dtype)
            schedule = gdj.cast(gdj.LinearBeta(), dtype)
            ts = jnp.asarray(ts64, dtype)
            lam = source.eigenvalues

            engine = jax.jit(lambda src, sch, grid, s=sampler: gdj.w2(src, gdj.sample_law(src, sch, s, grid)))
            plain = jax.jit(lambda sch, lam_, grid, s=sampler: plain_w2(s, sch, lam_, grid))
            w_engine, c_engine, r_engine = timed(engine, source, schedule, ts)
            w_plain, c_plain, r_plain = timed(plain, schedule, lam, ts)
            if reference is None:
                reference = float(w_engine)
            print(
                f"| {name} | {jnp.dtype(dtype).name} | {1e3 * t_numpy:.0f} | {1e3 * r_plain:.1f} | "
                f"{1e3 * r_engine:.1f} | {r_engine / r_plain:.2f} | {1e9 * r_engine / mode_steps:.2f} | "
                f"{t_numpy / r_engine:.1f} | {c_engine:.2f} / {c_plain:.2f} | "
                f"{abs(float(w_engine) / reference - 1):.1e} / {abs(float(w_plain) / reference - 1):.1e} |"
            )


if __name__ == "__main__":
    main()
