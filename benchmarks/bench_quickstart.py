"""Benchmark: wall time of the README's quick-start command, with and without JAX's persistent compilation cache.

    gaussdiff select --spectrum cifar10 --nfe 10 --out <tmp>                    (--command select, the default)
    gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out <tmp>   (--command optimize)

run as a subprocess (`python -m gaussdiff_jax ...`), as a user would. Measured:

- no persistent cache (every run compiles everything);
- cache cold: the first run with an empty cache directory (compiles and writes the cache);
- cache warm: later runs with the same directory.

The cache is switched on for the subprocess by environment (`JAX_COMPILATION_CACHE_DIR` in a fresh temporary
directory, the minimum compile time and entry size set to 0 so that every program is cached); the runs without
it also pass `--no-compile-cache` when the CLI has that flag (its own cache, when merged, may pick another
directory: then "cache cold" is only cold if that directory was empty).
JAX does not write programs that contain host callbacks to the persistent cache, and equinox's runtime checks
(`eqx.error_if`, used for input validation inside jit) are host callbacks: `--nan-checks` adds runs with
`EQX_ON_ERROR=nan` (checks turned into NaNs, no callbacks), which shows what the cache gives when every program is
cacheable. Each row also gives the CLI's own record of the optimization time (`optimization.seconds` in result.json) and
the interpreter start-up (`python -c "import gaussdiff_jax"`), for the split of the wall time.

Run: `PYTHONPATH=. python benchmarks/bench_quickstart.py [--command select|optimize] [--repeats 2] [--extra "..."]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "select": ["select", "--spectrum", "cifar10", "--nfe", "10", "--quiet"],
    "optimize": ["optimize", "--spectrum", "cifar10", "--sampler", "ddim", "--nfe", "10", "--quiet"],
}


def cli_has_cache_flag() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "gaussdiff_jax", "optimize", "--help"], check=False, capture_output=True, text=True
    )
    return "--no-compile-cache" in out.stdout


def run(command: list[str], extra: list[str], env: dict[str, str], out: Path) -> tuple[float, float]:
    """(wall seconds, the main job's seconds from result.json) of one quick-start run."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gaussdiff_jax", *command, *extra, "--out", str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the quick start failed:\n{proc.stderr[-2000:]}")
    doc = json.loads((out / "result.json").read_text())
    return wall, float(doc["optimization"]["seconds"] if "optimization" in doc else doc["seconds"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--command", choices=sorted(COMMANDS), default="select")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extra", default="", help="extra CLI arguments, e.g. '--optimizer lbfgs'")
    parser.add_argument("--nan-checks", action="store_true", help="also runs with EQX_ON_ERROR=nan (see below)")
    options = parser.parse_args()
    command = COMMANDS[options.command]
    extra = shlex.split(options.extra)
    flag = cli_has_cache_flag()
    base_env = dict(os.environ)
    for key in ("JAX_COMPILATION_CACHE_DIR",):
        base_env.pop(key, None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gaussdiff_jax"], env=base_env, check=True)
        startup = time.perf_counter() - start
        cache = tmp / "cache"
        cached_env = dict(
            base_env,
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
        uncached_extra = ["--no-compile-cache"] if flag else []
        runs = {"no persistent cache": [], "cache cold (empty)": [], "cache warm": []}
        for k in range(options.repeats):
            runs["no persistent cache"].append(run(command, extra + uncached_extra, base_env, tmp / f"plain{k}"))
        runs["cache cold (empty)"].append(run(command, extra, cached_env, tmp / "cold"))
        for k in range(options.repeats):
            runs["cache warm"].append(run(command, extra, cached_env, tmp / f"warm{k}"))
        entries = sum(1 for _ in cache.rglob("*") if _.is_file()) if cache.exists() else 0
        if options.nan_checks:
            # JAX does not cache programs with host callbacks, and equinox's runtime checks are host callbacks:
            # with EQX_ON_ERROR=nan they become NaNs and every program is cacheable (what the cache could give).
            nan_env = dict(cached_env, JAX_COMPILATION_CACHE_DIR=str(tmp / "cache_nan"), EQX_ON_ERROR="nan")
            runs["EQX_ON_ERROR=nan, cache cold"] = [run(command, extra, nan_env, tmp / "nan_cold")]
            runs["EQX_ON_ERROR=nan, cache warm"] = [
                run(command, extra, nan_env, tmp / f"nan{k}") for k in range(options.repeats)
            ]
        for name, values in runs.items():
            walls, opts = zip(*values)
            rows.append(
                f"| {name} | {statistics.median(walls):.2f} | {min(walls):.2f}-{max(walls):.2f} | "
                f"{statistics.median(opts):.2f} | {len(values)} |"
            )
    how = "cache switched on by JAX_COMPILATION_CACHE_DIR in the environment" + (
        ", off with --no-compile-cache" if flag else " (the CLI has no cache flag yet)"
    )
    print(
        f"Command: gaussdiff {' '.join(command + extra)} --out <tmp>; {how}; load average "
        f"{os.getloadavg()[0]:.1f}; interpreter + `import gaussdiff_jax`: {startup:.2f} s; cache entries written: "
        f"{entries}.\n"
    )
    job = "optimization" if options.command == "optimize" else "select incl. report and plots"
    print(f"| run | wall (s), median | range | {job} (s, result.json) | runs |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
