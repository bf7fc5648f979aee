"""Throughput of the closed-form engine on the current JAX device, against a plain numpy loop.

Workload: the Pierret–Galerne ADSN texture spectrum (196 608 modes), LinearBeta, 1000 grid points from
t = 1 to 1e-3, W2 to the data, for EM, EI, DDPM, Euler, Heun, RK4; plus a batched sweep (64 spectra of
d = 3072 under `jax.vmap`). Compile time (first call) is reported apart from run time (median of
repeats, `block_until_ready`). The numpy baseline runs the same recursions per step, vectorized over
modes, in float64 on the host, in the same process.

Run from the repository root: `PYTHONPATH=. python benchmarks/bench_throughput.py`.
"""

from __future__ import annotations

import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import gaussdiff_jax as gdj  # noqa: E402

SAMPLERS = {
    "EM": gdj.EulerMaruyama(),
    "EI": gdj.ExponentialIntegrator(),
    "DDPM": gdj.DDPM(beta="linearized"),
    "Euler": gdj.Euler(),
    "Heun": gdj.Heun(),
    "RK4": gdj.RK4(),
}


def numpy_w2(name: str, lam: np.ndarray, ts: np.ndarray, bmin=0.1, bmax=20.0) -> float:
    """What a user would write: the per-step affine recursion of MATH.md section 2, numpy float64."""

    def beta(t):
        return bmin + (bmax - bmin) * t

    def abar(t):
        return np.exp(-(bmin * t + 0.5 * (bmax - bmin) * t * t))

    def field(s):
        ab = abar(s)
        R2 = ab * lam + 1 - ab
        b = 0.5 * beta(s)
        return b * (1 - 1 / R2), b * np.sqrt(ab) / R2

    g, v = np.zeros_like(lam), np.ones_like(lam)
    for s, s2 in zip(ts[:-1], ts[1:]):
        h = s - s2
        ab = abar(s)
        R2 = ab * lam + 1 - ab
        b = 0.5 * beta(s)
        if name == "EM":
            A, C, Q = 1 + h * b * (1 - 2 / R2), 2 * h * b * np.sqrt(ab) / R2, 2 * h * b
        elif name == "EI":
            delta = 0.5 * (np.log(abar(s2)) - np.log(ab))
            g1 = np.expm1(delta)
            A, C, Q = 1 + g1 * (1 - 2 / R2), 2 * g1 * np.sqrt(ab) / R2, np.expm1(2 * delta)
        elif name == "DDPM":
            bk = 2 * h * b
            A = (1 - bk / R2) / np.sqrt(1 - bk)
            C, Q = bk * np.sqrt(ab) / (R2 * np.sqrt(1 - bk)), bk
        else:
            a1, c1 = field(s)
            if name == "Euler":
                A, C = 1 + h * a1, h * c1
            elif name == "Heun":
                a2, c2 = field(s2)
                A = 1 + h / 2 * (a1 + a2 * (1 + h * a1))
                C = h / 2 * (c1 + a2 * h * c1 + c2)
            else:  # RK4
                am, cm = field(s - h / 2)
                a4, c4 = field(s2)
                K1, L1 = a1, c1
                K2, L2 = am * (1 + h / 2 * K1), am * h / 2 * L1 + cm
                K3, L3 = am * (1 + h / 2 * K2), am * h / 2 * L2 + cm
                K4, L4 = a4 * (1 + h * K3), a4 * h * L3 + c4
                A = 1 + h / 6 * (K1 + 2 * K2 + 2 * K3 + K4)
                C = h / 6 * (L1 + 2 * L2 + 2 * L3 + L4)
            Q = 0.0
        g, v = A * g + C, A * A * v + Q
    return float(np.sqrt(np.sum((np.sqrt(v) - np.sqrt(lam)) ** 2)))


def timed(fn, *args, repeats=5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t0)
    run = statistics.median(runs)
    return out, max(first - run, 0.0), run


def main():
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}; host {platform.processor() or platform.machine()}")
    lam = gdj.spectra.load("adsn_fabric")
    ts = np.linspace(1.0, 1e-3, 1000)
    print(f"\nADSN workload: d = {lam.size}, 1000 points, eps = 1e-3, W2 to data\n")
    print("| sampler | dtype | compile (s) | run (ms) | numpy f64 (ms) | speed-up | rel. diff vs numpy |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, sampler in SAMPLERS.items():
        t0 = time.perf_counter()
        ref = numpy_w2(name, lam, ts)
        t_np = time.perf_counter() - t0
        for dtype in (jnp.float64, jnp.float32):
            src = gdj.cast(gdj.GaussianSource(lam), dtype)
            sch = gdj.cast(gdj.LinearBeta(), dtype)
            grid = jnp.asarray(ts, dtype)

            @jax.jit
            def w2(src, sch, grid, sampler=sampler):
                return gdj.w2(src, gdj.sample_law(src, sch, sampler, grid))

            out, compile_s, run_s = timed(w2, src, sch, grid)
            print(
                f"| {name} | {jnp.dtype(dtype).name} | {compile_s:.2f} | {1e3 * run_s:.2f} | {1e3 * t_np:.0f} | "
                f"{t_np / run_s:.0f}x | {abs(float(out) / ref - 1):.1e} |"
            )

    print("\nBatched sweep: 64 spectra (CIFAR-10 scaled by 64 factors), d = 3072, Heun, 1000 points, KL truncated\n")
    base = gdj.spectra.load("cifar10_preprint2024")
    scales = np.geomspace(0.1, 10, 64)
    print("| dtype | compile (s) | run (ms) | modes x steps / s |")
    print("|---|---:|---:|---:|")
    for dtype in (jnp.float64, jnp.float32):
        src = gdj.cast(gdj.GaussianSource(scales[:, None] * base[None, :]), dtype)
        sch = gdj.cast(gdj.LinearBeta(), dtype)
        grid = jnp.asarray(ts, dtype)

        @jax.jit
        def kl(src, sch, grid):
            return gdj.kl(src, gdj.sample_law(src, sch, gdj.Heun(), grid), target="truncated")

        _, compile_s, run_s = timed(kl, src, sch, grid)
        rate = scales.size * base.size * (ts.size - 1) / run_s
        print(f"| {jnp.dtype(dtype).name} | {compile_s:.2f} | {1e3 * run_s:.2f} | {rate:.3g} |")


if __name__ == "__main__":
    main()
