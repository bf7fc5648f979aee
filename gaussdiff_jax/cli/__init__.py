r"""The `gaussdiff` command: exact sampler errors and schedule optimization from the shell.

Subcommands (run `gaussdiff <subcommand> --help` for the options of each), one module each with its
`add_parser` and `run(args)`:

- `eval`: the exact KL / W2 error of one sampler with one schedule and time grid on a spectrum.
- `optimize`: optimize a time grid (or a schedule) for the exact KL or W2; prints a table against
  baselines, writes `result.json` and `schedule.png`.
- `compare`: a table of samplers x NFE budgets x schedules (printed, saved as CSV, JSON and PNG).
- `sweep`: a large product of cases written line by line to a JSON-lines file; rerunning the same
  command resumes where it stopped.
- `export`: turn a grid (from a result, or a named schedule and grid) into diffusers timesteps or
  sigmas, k-diffusion / ComfyUI sigmas, or JSON.

Shared pieces: `_shared` (errors, spectra, samplers from `gdj.samplers`, output paths and printing,
argument groups), `_problem` (schedules by name, grids from `gdj.grids`, the `Problem` of a run),
`_evaluate` (every evaluation goes through `gdj.sweep`), `_diagnose` (causes of failures, where a KL
comes from).

Every subcommand works on a Gaussian "data" law given by its covariance spectrum: a bundled name
(`gdj.spectra.available()`, e.g. `cifar10`) or a `.npy` / `.txt` / `.csv` file of eigenvalues. User
errors print one line on stderr and exit with code 2.

**The common problem.** All candidates run from `--sigma-max` down to `--sigma-min` (noise levels
$\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$, default the EDM range 80 -> 0.002), start from
$x \sim \mathcal N(0, I)$ (`--init standard`) and are scored against $p_{\sigma_{\min}}$
(`--target truncated`): with `sigma_min > 0` the KL stays finite even though CIFAR-10 has 9 zero
eigenvalues. On each schedule the grid spans the times $t(\sigma_{\max}) \ge t \ge t(\sigma_{\min})$;
a schedule that does not reach one of the levels is an error, not clamped.

**Compilation cache.** What is paid once per machine is kept on disk, under `$GAUSSDIFF_CACHE_DIR`
(default `$XDG_CACHE_HOME/gaussdiff_jax`, else `~/.cache/gaussdiff_jax`): XLA compilations in `jax/`
(JAX's persistent cache; a cache directory already configured for JAX is kept) and Euler-Lagrange
optima per spectrum in `euler_lagrange/`. `--no-compile-cache` or `GAUSSDIFF_NO_COMPILE_CACHE=1` turn
it off. With the cache on, compiled programs are traced without equinox's in-jit checks (which JAX
cannot cache) and the command checks their results itself (see `_shared.runtime_checks`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from . import compare, export, optimize, sweep
from . import eval as eval_
from ._problem import SCHEDULE_HELP, grid_help
from ._shared import (
    EXIT_USAGE,
    PROG,
    CLIError,
    Parser,
    compile_cache_dir,
    gdj,
    one_line,
    phase,
    runtime_checks,
    sampler_help,
    use_cache_dir,
)

_SUBCOMMANDS = (eval_, optimize, compare, sweep, export)


def _description() -> str:
    spectra = ", ".join(gdj().spectra.available())
    return (
        "Exact KL / W2 errors of diffusion samplers on Gaussian data, and schedule optimization.\n\n"
        f"Data are a covariance spectrum: bundled ({spectra})\nor a .npy / .txt / .csv file of eigenvalues.\n"
        "Every number is exact (closed form per eigenvalue), not a Monte Carlo estimate.\n\n"
        "Start here:\n"
        "  gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart\n"
        "  gaussdiff eval --sampler heun --schedule edm --nfe 20\n"
        "  gaussdiff compare --samplers ddim,heun --schedules edm,tangent --nfe 10,20,40 --out cmp\n"
        "  gaussdiff sweep --spectra cifar10 --samplers ddim,euler --nfe 10,20 --out sweep.jsonl\n"
        "  gaussdiff export --from quickstart/result.json --format k-diffusion\n\n"
        "Compilations are cached on disk ($GAUSSDIFF_CACHE_DIR, default $XDG_CACHE_HOME/gaussdiff_jax or\n"
        "~/.cache/gaussdiff_jax), so repeated runs start faster; --no-compile-cache (on any subcommand)\n"
        "or GAUSSDIFF_NO_COMPILE_CACHE=1 turns that off. GAUSSDIFF_DEBUG=1 shows tracebacks."
    )


def _epilog() -> str:
    """The lists of samplers, schedules and grids shown under each subcommand's options."""
    samplers = "\n".join(f"  {k:10s} {v}" for k, v in sampler_help())
    schedules = "\n".join(f"  {k:20s} {v}" for k, v in SCHEDULE_HELP.items())
    grids = "\n".join(f"  {k:10s} {v}" for k, v in grid_help())
    return f"samplers:\n{samplers}\n\nschedules:\n{schedules}\n\ngrids:\n{grids}"


def build_parser() -> argparse.ArgumentParser:
    """The `gaussdiff` argument parser (one subparser per subcommand)."""
    parser = Parser(prog=PROG, description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    epilog = _epilog()
    for module in _SUBCOMMANDS:
        module.add_parser(sub, epilog)
    return parser


def _enable_compile_cache(args) -> bool:
    """Switch on JAX's persistent compilation cache (see the module docstring); whether it is on."""
    import jax

    use_cache_dir(None)
    path = None if getattr(args, "no_compile_cache", False) else compile_cache_dir()
    if path is None:
        return bool(jax.config.jax_compilation_cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return bool(jax.config.jax_compilation_cache_dir)  # a read-only home: run without our cache
    use_cache_dir(path.parent)
    if jax.config.jax_compilation_cache_dir:
        return True  # the user configured JAX's cache: keep it
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every compilation: on CPU most take well under JAX's default threshold of one second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gaussdiff` console script. Returns the exit code (0 ok, 2 user error)."""
    import equinox as eqx

    if os.environ.get("GAUSSDIFF_TIMING"):  # the CPU spent before main: Python, JAX and package imports
        sys.stderr.write(f"{PROG} timing: start-up (imports): {time.process_time():.2f} s CPU\n")
    with phase("argument parser"):
        parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    cached = _enable_compile_cache(args)
    try:
        # Programs with in-jit checks cannot be cached: trace without them and check the results instead.
        with runtime_checks(not cached):
            return int(args.func(args) or 0)
    except CLIError as error:
        sys.stderr.write(f"{PROG} {args.command}: error: {error}\n")
        return EXIT_USAGE
    except (ValueError, FloatingPointError, eqx.EquinoxRuntimeError) as error:
        if os.environ.get("GAUSSDIFF_DEBUG"):
            raise
        sys.stderr.write(f"{PROG} {args.command}: error: {one_line(error)} (set GAUSSDIFF_DEBUG=1 for a traceback)\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
