"""Benchmark: scoring many time grids and the integer search of `optimize_grid` (issue 11.4).

Case of the issue: scikit-learn's digits spectrum (d = 64; its three zero eigenvalues floored at the
dequantization variance (1/16)^2/12 of pixels in sixteenths, so the KL to the data is finite), diffusers'
`linear` 1000-step table, DDIM, NFE 5 / 10 / 20, KL(data || output).

Contenders, in one process, on the same grids:

- scoring: one jitted call per grid (the previous `score_grids` / integer search: `eqx.filter_jit` of
  `sample_law` + `kl` + `w2_squared` on one grid, called in a Python loop) against the batched
  `grid_errors` (`jax.vmap` over chunks of 16 grids, one compiled function per grid length), on 256 random
  grids of the budget's length. Compile time (first call minus a warm call) is reported apart.
- integer search, from the best rounded baseline: the previous search (moves +-1, +-2 of one point,
  best improving move per round, one jitted call per candidate, at most 200 rounds) against the new one
  (moves +-1, +-2, +-4, ... plus combined moves, every round batched). Both warmed up first (compile
  excluded); reported: seconds, rounds, the KL reached.

Run: `python benchmarks/bench_timesteps.py` (prints Markdown tables and the machine).
"""

from __future__ import annotations

import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import numpy as np

import gaussdiff_jax as gdj
from gaussdiff_jax._optimization._grid_scores import grid_errors
from gaussdiff_jax._optimization._timesteps import _integer_polish

NFES = (5, 10, 20)
OPTIONS = {"init": "standard", "target": "data", "direction": "target_to_sample"}


@eqx.filter_jit
def _one_grid(source, schedule, sampler, ts):
    law = gdj.sample_law(source, schedule, sampler, ts)
    return gdj.kl(source, law), gdj.w2_squared(source, law)


def per_grid_errors(source, schedule, sampler, grids):
    """The previous scoring: one jitted call per grid."""
    out = [_one_grid(source, schedule, sampler, jax.numpy.asarray(g)) for g in grids]
    return np.array([float(k) for k, _ in out]), np.sqrt([float(w) for _, w in out])


def previous_polish(source, schedule, sampler, ts, max_rounds=200):
    """The previous integer search (moves +-1, +-2 of one point, one call per candidate), as it was."""
    T = schedule.num_train_timesteps
    ts = np.asarray(ts, dtype=np.float64)
    idx = np.round(ts[:-1] * T - 1).astype(np.int64)  # clean end (t_N = 0)

    def to_grid(i):
        return np.concatenate([(i + 1.0) / T, [0.0]])

    current = float(per_grid_errors(source, schedule, sampler, [to_grid(idx)])[0][0])
    for rounds in range(max_rounds):
        candidates = []
        for k in range(1, idx.shape[0]):
            for move in (-2, -1, 1, 2):
                j = idx.copy()
                j[k] += move
                lo = j[k + 1] if k + 1 < j.shape[0] else -1
                if lo < j[k] < j[k - 1]:
                    candidates.append(j)
        vals = per_grid_errors(source, schedule, sampler, [to_grid(c) for c in candidates])[0]
        best = int(np.argmin(vals))
        if not vals[best] < current:
            return current, rounds
        idx, current = candidates[best], float(vals[best])
    return current, max_rounds


def seconds(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main():
    floor = (1 / 16) ** 2 / 12
    source = gdj.GaussianSource(np.maximum(gdj.spectra.load("digits"), floor))
    schedule = gdj.Discrete.from_diffusers("linear")
    sampler = gdj.DDIM()
    rng = np.random.default_rng(0)
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; jax {jax.__version__} on {jax.devices()[0].platform}\n"
    )
    print("Scoring 256 random grids (d = 64): one call per grid vs batched; run times warm, compile apart.\n")
    print(
        "| NFE | per grid: compile (s) | per grid: run (s) | batched: compile (s) | batched: run (s) | run speed-up |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for nfe in NFES:
        inner = np.sort(rng.uniform(1e-3, 0.999, size=(256, nfe - 1)), axis=1)[:, ::-1]
        grids = np.concatenate([np.ones((256, 1)), inner, np.zeros((256, 1))], axis=1)
        _, first_loop = seconds(per_grid_errors, source, schedule, sampler, grids[:1])
        (k_loop, _), loop = seconds(per_grid_errors, source, schedule, sampler, grids)
        _, first_batch = seconds(grid_errors, source, schedule, sampler, grids[:1], **OPTIONS)
        (k_batch, _), batch = seconds(grid_errors, source, schedule, sampler, grids, **OPTIONS)
        assert np.allclose(k_loop, k_batch, rtol=1e-12), "batched scores differ"
        print(f"| {nfe} | {first_loop:.2f} | {loop:.3f} | {first_batch:.2f} | {batch:.3f} | {loop / batch:.1f}x |")

    print("\nInteger search from the best rounded baseline (compile excluded: both warmed up above).\n")
    print("| NFE | start (KL) | previous: s | rounds | KL | new: s | rounds | KL |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for nfe in NFES:
        base = gdj.score_grids(source, schedule, sampler, nfe, integer=True)
        start = min(base, key=lambda s: s.kl)
        (old_kl, old_rounds), old_s = seconds(previous_polish, source, schedule, sampler, start.times)
        (grid, rounds, _), new_s = seconds(
            _integer_polish, source, schedule, sampler, start.times, "kl", options=OPTIONS
        )
        new_kl = gdj.score_grid(source, schedule, sampler, grid).kl
        print(
            f"| {nfe} | {start.name} ({start.kl:.4g}) | {old_s:.1f} | {old_rounds} | {old_kl:.4g} "
            f"| {new_s:.1f} | {rounds} | {new_kl:.4g} |"
        )


if __name__ == "__main__":
    main()
