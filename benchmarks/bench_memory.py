"""(d) Peak memory for d = 10^6 modes and N = 1000 steps, forward and gradient, float64.

For each case: XLA's buffer plan (`compile().memory_analysis()`: arguments + outputs + temporaries) and the
measured peak resident memory of a fresh process (`ru_maxrss` after the call minus `ru_maxrss` after
imports and data creation). Cases: W2² forward; its gradient with respect to `LinearBeta.beta_max`
without checkpointing (reverse mode stores per-step residuals, O(N d)); and with `checkpoint=32`
(segments recomputed on the backward pass, O((N/32 + 32) d)). A case whose plan exceeds the memory
limit below is reported from the plan only.

Run from the repository root: `PYTHONPATH=. python benchmarks/bench_memory.py`. Writes
`benchmarks/results/memory_cpu.md`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

D, N = 1_000_000, 1000
RUN_LIMIT_GIB = 12.0
CASES = [
    ("EulerMaruyama", "forward", None),
    ("EulerMaruyama", "gradient", None),
    ("EulerMaruyama", "gradient", 32),
    ("Heun", "forward", None),
    ("Heun", "gradient", None),
    ("Heun", "gradient", 32),
]


def _case(sampler_name: str, mode: str, checkpoint, run: bool) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import gaussdiff_jax as gdj

    source = gdj.GaussianSource(jnp.geomspace(1e-4, 10.0, D))
    ts = jnp.linspace(1.0, 1e-3, N + 1)
    sampler = getattr(gdj, sampler_name)()

    def loss(beta_max):
        law = gdj.sample_law(source, gdj.LinearBeta(beta_max=beta_max), sampler, ts, checkpoint=checkpoint)
        return gdj.w2_squared(source, law)

    fn = jax.jit(loss if mode == "forward" else jax.grad(loss))
    beta_max = jnp.asarray(20.0)
    jax.block_until_ready(source.eigenvalues)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    compiled = fn.lower(beta_max).compile()
    m = compiled.memory_analysis()
    plan = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    out = {"plan_bytes": plan, "temp_bytes": m.temp_size_in_bytes}
    if run and plan < RUN_LIMIT_GIB * 2**30:
        t0 = time.perf_counter()
        value = float(jax.block_until_ready(compiled(beta_max)))
        out["seconds"] = time.perf_counter() - t0
        out["value"] = value
        out["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return out


def _cpu() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")


def _mem_gib() -> float:
    return next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")) / 2**20


def main():
    if len(sys.argv) > 1:  # child: one case, JSON on stdout
        name, mode, ck = sys.argv[1], sys.argv[2], None if sys.argv[3] == "none" else int(sys.argv[3])
        print(json.dumps(_case(name, mode, ck, run=True)))
        return
    lines = [
        "# Peak memory (CPU), d = 10^6 modes, N = 1000 steps, float64, W2² loss",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, {_mem_gib():.0f} GiB; jax {version('jax')}, jaxlib {version('jaxlib')}.",
        "",
        f"Each case in a fresh process; load average at start {' '.join(open('/proc/loadavg').read().split()[:3])}.",
        f"Per-mode vector: d x 8 bytes = {D * 8 / 2**20:.1f} MiB. Cases whose plan exceeds {RUN_LIMIT_GIB:.0f} GiB are not run.",
        "",
        "| sampler | pass | checkpoint | XLA plan (MiB) | of which temporaries (MiB) | plan in per-mode vectors | "
        "measured peak RSS increase (MiB) | run (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name, mode, ck in CASES:
        proc = subprocess.run(
            [sys.executable, __file__, name, mode, str(ck).lower()],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])),
            timeout=900,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "not run (plan too large)"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else "–"
        row = (
            f"| {name} | {mode} | {ck or 'none'} | {r['plan_bytes'] / 2**20:.0f} | "
            f"{r['temp_bytes'] / 2**20:.0f} | {r['plan_bytes'] / (8 * D):.0f} | {peak} | {secs} |"
        )
        print(row, flush=True)
        lines.append(row)
    lines += [
        "",
        f"Load average at end {' '.join(open('/proc/loadavg').read().split()[:3])}. Plan = XLA's buffer assignment "
        "(arguments + outputs + temporaries) from `compile().memory_analysis()`; measured = `ru_maxrss` after "
        "compiling and running minus `ru_maxrss` after imports and data creation (so it includes the compiler's "
        "own memory).",
    ]
    out = Path(__file__).parent / "results" / "memory_cpu.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
