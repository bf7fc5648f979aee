"""The Pierret–Galerne ADSN workload on this machine, side by side with a plain numpy loop, in one process.

(a) ADSN texture spectrum (196 608 modes), LinearBeta, 1000 points from t = 1 to 1e-3, standard init, W2
    to the data, for EM, EI, DDPM (linearized, as in [PG]), Euler, Heun, RK4: the numpy loop of
    `bench_throughput.numpy_w2` against the engine on all modes (1 host device, and split over 2 host
    devices), on the exactly deduplicated spectrum (lossless), and on the compressed spectrum
    (`gdj.compress`, error estimated); plus the whole six-sampler workload as one `gdj.sweep` call.
(b) Closed form against Monte Carlo estimation of the same W2 (digits spectrum, d = 64).
(c) Compile time apart from run time (first call minus the median steady call).
FLOP/s: XLA's count for one loop body (its cost analysis counts a while-loop body once) times the number
of steps, over the run time, against peaks measured here (float64 matmul; an elementwise FMA loop).

Run from the repository root: `PYTHONPATH=. python benchmarks/bench_adsn.py` (about 5 minutes on 2 cores).
Writes `benchmarks/results/adsn_cpu.md`.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import platform
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gaussdiff_jax as gdj

sys.path.insert(0, str(Path(__file__).parent))
from bench_throughput import numpy_w2

SAMPLERS = {
    "EM": gdj.EulerMaruyama(),
    "EI": gdj.ExponentialIntegrator(),
    "DDPM": gdj.DDPM(beta="linearized"),
    "Euler": gdj.Euler(),
    "Heun": gdj.Heun(),
    "RK4": gdj.RK4(),
}
SCHEDULE = gdj.LinearBeta()
LINES: list[str] = []


def say(line: str = ""):
    print(line, flush=True)
    LINES.append(line)


def timed(fn, *args, repeats=5):
    """(result, compile seconds, median run seconds)."""
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


def split_over_devices(source: gdj.GaussianSource) -> gdj.GaussianSource:
    """Place a source's modes over all devices (padding with weight-0 modes), as `sweep(sharding="modes")`."""
    from gaussdiff_jax._sharding import _pad_modes

    mesh = Mesh(np.array(jax.devices()), ("devices",))
    padded = _pad_modes(source, len(jax.devices()))
    return jax.device_put(padded, NamedSharding(mesh, PartitionSpec("devices")))


def w2_function(sampler):
    @jax.jit
    def w2(source, ts):
        return jnp.sqrt(gdj.w2_squared(source, gdj.sample_law(source, SCHEDULE, sampler, ts)))

    return w2


def xla_flops(fn, *args) -> float:
    """XLA's flop count of a jitted function (a while-loop body is counted once)."""
    cost = fn.lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def measured_peaks() -> dict[str, float]:
    """Float64 GFLOP/s: numpy and jax matmul (n = 2048), and XLA-generated elementwise code at its best
    (8 independent 16-deep multiply-add chains per element, 2e6 elements), counted by XLA like the engine."""
    n = 2048
    a = np.random.default_rng(0).normal(size=(n, n))
    a @ a
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    numpy_mm = 3 * 2 * n**3 / (time.perf_counter() - t0) / 1e9
    ja = jax.device_put(a, jax.devices()[0])
    mm = jax.jit(lambda x: x @ x)
    _, _, run = timed(mm, ja, repeats=3)
    jax_mm = 2 * n**3 / run / 1e9

    @jax.jit
    def chains(x):
        ys = [x + 0.01 * c for c in range(8)]
        for i in range(16):
            ys = [y * x + (1.0 + 1e-3 * (i + c)) for c, y in enumerate(ys)]
        return jnp.sum(sum(ys))

    x = jnp.linspace(0.0, 0.5, 2_000_000)
    _, _, run = timed(chains, x, repeats=7)
    return {"numpy matmul": numpy_mm, "jax matmul": jax_mm, "XLA elementwise": xla_flops(chains, x) / run / 1e9}


def flops_per_mode_step(sampler, dim: int, ts) -> float:
    """XLA's flops per mode for the loop body (counted once) plus the O(d) set-up and divergence (once)."""
    source = gdj.GaussianSource(jnp.linspace(0.01, 2.0, dim))
    return xla_flops(w2_function(sampler), source, ts) / dim


def part_a(peaks):
    lam = gdj.spectra.load("adsn_fabric")
    ts_np = np.linspace(1.0, 1e-3, 1000)
    ts = jnp.asarray(ts_np)
    steps = ts_np.size - 1
    full = gdj.GaussianSource(lam)
    t0 = time.perf_counter()
    dedup = gdj.deduplicate(full)
    t_dedup = time.perf_counter() - t0
    t0 = time.perf_counter()
    compressed = gdj.compress(full)
    t_compress = time.perf_counter() - t0
    say(f"## (a) ADSN workload: d = {lam.size}, {ts_np.size} points (t = 1 to 1e-3), LinearBeta, W2 to the data")
    say()
    say(
        f"Exact deduplication: {dedup.dim} weighted modes ({t_dedup * 1e3:.0f} ms, once). Compression "
        f"(order 6, bin width 0.5): {compressed.num_nodes} nodes ({t_compress * 1e3:.0f} ms, once). "
        f"Devices: {len(jax.devices())} host CPU devices for the 2-device column."
    )
    say()
    say(
        "| sampler | numpy loop (ms) | engine, 1 device (ms) | speed-up | engine, 2 devices | speed-up | "
        "exact dedup, 2 devices | speed-up | compressed (ms) | speed-up | compressed rel. error (estimate) | "
        "max rel. diff vs numpy (uncompressed) | compile (s) |"
    )
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    totals = {"numpy": 0.0}
    split_full, split_dedup = split_over_devices(full), split_over_devices(dedup)
    flop_rows = []
    for name, sampler in SAMPLERS.items():
        t0 = time.perf_counter()
        ref = numpy_w2(name, lam, ts_np)
        t_np = time.perf_counter() - t0
        totals["numpy"] += t_np
        fn = w2_function(sampler)
        out1, compile1, run1 = timed(fn, full, ts)
        out2, _, run2 = timed(fn, split_full, ts)
        out3, _, run3 = timed(fn, split_dedup, ts)
        out4, _, run4 = timed(fn, compressed.source, ts, repeats=21)

        def per_mode(source, sampler=sampler):
            return gdj.w2_squared(source, gdj.sample_law(source, SCHEDULE, sampler, ts), reduce=False)

        value, estimate = compressed.evaluate(per_mode)
        exact_sq = float(out1) ** 2
        comp_err = abs(float(value) - exact_sq) / exact_sq
        diffs = [abs(float(o) / ref - 1) for o in (out1, out2, out3)]
        say(
            f"| {name} | {t_np * 1e3:.0f} | {run1 * 1e3:.0f} | {t_np / run1:.1f}x | {run2 * 1e3:.0f} | "
            f"{t_np / run2:.1f}x | {run3 * 1e3:.1f} | {t_np / run3:.0f}x | {run4 * 1e3:.2f} | {t_np / run4:.0f}x | "
            f"{comp_err:.1e} ({float(estimate) / exact_sq:.1e}) | {max(diffs):.1e} | {compile1:.2f} |"
        )
        fpms = flops_per_mode_step(sampler, 4096, ts)
        flop_rows.append((name, fpms, fpms * lam.size * steps / run1 / 1e9, run1 / (lam.size * steps) * 1e9))
    say()
    say("W2 relative errors of the compressed spectrum are for W2² (`Compression.evaluate` of `w2_squared`).")
    say()

    # The whole workload as one sweep call (6 samplers, all modes, split over both devices).
    samplers = list(SAMPLERS.values())
    grid = lambda schedule, n: ts_np
    for label, source in (("all modes", full), ("exact dedup", dedup), ("compressed", compressed.source)):

        def run(source=source):
            return gdj.sweep(source, samplers, [steps], SCHEDULE, grid=grid, metrics=("w2",), sharding="modes").w2

        t0 = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - t0
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            runs.append(time.perf_counter() - t0)
        totals[label] = (statistics.median(runs), first - statistics.median(runs))
    say("Whole workload (six samplers) as one `gdj.sweep(..., sharding=\"modes\")` call on 2 host devices:")
    say()
    say("| spectrum | numpy loop, 6 samplers (s) | one sweep call (s) | speed-up | compile (s) |")
    say("|---|---:|---:|---:|---:|")
    for label in ("all modes", "exact dedup", "compressed"):
        run, comp = totals[label]
        say(f"| {label} | {totals['numpy']:.2f} | {run:.3f} | {totals['numpy'] / run:.0f}x | {comp:.1f} |")
    say()
    say("### FLOP/s (all modes)")
    say()
    say(
        "XLA's cost analysis counts every elementwise operation on a (d,) array as d flops (selects and "
        "broadcast scalars included), once for the loop body; the peak is the same count on the best "
        "elementwise kernel XLA generates here."
    )
    say()
    say(
        "The engine's XLA count exceeds what the peak kernel achieves, so it overcounts (broadcast scalar work); "
        "see benchmarks/README.md for a hand count."
    )
    say()
    say("| sampler | XLA flops per mode-step | ns per mode-step | XLA-counted GFLOP/s (1 device) |")
    say("|---|---:|---:|---:|")
    for name, fpms, g1, ns in flop_rows:
        say(f"| {name} | {fpms:.0f} | {ns:.2f} | {g1:.1f} |")
    say()


def gaussian_fit_w2(samples: np.ndarray, lam: np.ndarray) -> float:
    """W2 between the Gaussian fitted to samples and N(0, diag(lam)) (Bures formula)."""
    mu = samples.mean(axis=0)
    cov = np.cov(samples.T)
    root_lam = np.sqrt(lam)
    inner = root_lam[:, None] * cov * root_lam[None, :]
    ev = np.clip(np.linalg.eigvalsh(inner), 0.0, None)
    return float(np.sqrt(max(mu @ mu + np.trace(cov) + lam.sum() - 2 * np.sqrt(ev).sum(), 0.0)))


def part_b():
    lam = gdj.spectra.load("digits")
    d = lam.size
    ts = jnp.linspace(1.0, 1e-3, 101)
    sampler = gdj.EulerMaruyama()
    source = gdj.GaussianSource(lam)
    closed = w2_function(sampler)
    exact, compile_s, run_cf = timed(closed, source, ts, repeats=21)
    exact = float(exact)
    score = gdj.linear_score(jnp.zeros(d), jnp.diag(jnp.asarray(lam)), SCHEDULE)
    say("## (b) Closed form vs Monte Carlo, same W2 (digits spectrum d = 64, EM, 100 steps, t_min = 1e-3)")
    say()
    say(
        f"Closed form: W2 = {exact:.10f} in {run_cf * 1e3:.2f} ms (compile {compile_s:.2f} s), accurate to "
        "round-off (~1e-12 relative; agrees with the numpy recursion to 1e-13)."
    )
    say()
    say("Monte Carlo: the literal EM sampler with the exact score on n particles in full coordinates, W2 of the")
    say("Gaussian fitted to the particles (Bures formula); error = RMS over 4 seeds of (estimate - closed form).")
    say()
    say("| n particles | time per estimate (s) | RMS rel. error | bias (mean rel. error) |")
    say("|---:|---:|---:|---:|")
    sim = jax.jit(
        lambda key, n: gdj.simulate(sampler, SCHEDULE, ts, score, key, n, dim=d), static_argnums=1
    )
    rows = []
    for n in (1_000, 10_000, 100_000):
        jax.block_until_ready(sim(jax.random.key(0), n))
        errs, times = [], []
        for seed in range(4):
            t0 = time.perf_counter()
            x = np.asarray(jax.block_until_ready(sim(jax.random.key(seed + 1), n)))
            est = gaussian_fit_w2(x, lam)
            times.append(time.perf_counter() - t0)
            errs.append(est / exact - 1)
        rms, bias, t = float(np.sqrt(np.mean(np.square(errs)))), float(np.mean(errs)), statistics.median(times)
        rows.append((n, t, abs(bias), float(np.std(errs, ddof=1))))
        say(f"| {n:,} | {t:.2f} | {rms:.1e} | {bias:+.1e} |")
    # The plug-in estimate's bias falls like 1/n (measured), its spread like 1/sqrt(n): extrapolate each
    # from the largest run and take the larger particle count.
    n_big, t_big, bias_big, sd_big = rows[-1]
    say()
    for target in (1e-2, 1e-3, 1e-6):
        n_need = max(n_big * bias_big / target, n_big * (sd_big / target) ** 2)
        t_need = t_big * n_need / n_big
        say(
            f"- relative accuracy {target:.0e}: Monte Carlo needs ~{n_need:.1e} particles, ~{t_need:.2g} s "
            f"(bias as 1/n, spread as 1/sqrt(n), from n = {n_big:,}); the closed form takes "
            f"{run_cf * 1e3:.2f} ms: {t_need / run_cf:.1e}x."
        )
    say()


def main():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    load = open("/proc/loadavg").read().split()[:3]
    say("# ADSN benchmark (CPU)")
    say()
    say(
        f"Machine: {cpu}, {os.cpu_count()} cores; jax {jax.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}; load average at start {' '.join(load)}."
    )
    say()
    peaks = measured_peaks()
    say("Measured float64 peaks (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()) + ".")
    say()
    part_a(peaks)
    part_b()
    say(f"Load average at end: {' '.join(open('/proc/loadavg').read().split()[:3])}.")
    out = Path(__file__).parent / "results" / "adsn_cpu.md"
    out.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
