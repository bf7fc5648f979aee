r"""The `gaussdiff` command: exact sampler errors and schedule optimization from the shell.

Subcommands (run `gaussdiff <subcommand> --help` for the options of each), one module each:

- `eval`: the exact KL / W2 error of one sampler with one schedule and time grid on a spectrum.
- `optimize`: optimize a time grid (or a schedule) for the exact KL or W2; prints a table against
  baselines, writes `result.json` and `schedule.png`.
- `compare`: a table of samplers x NFE budgets x schedules (printed, saved as CSV and PNG).
- `sweep`: a large product of cases written line by line to a JSON-lines file; rerunning the same
  command resumes where it stopped.
- `export`: turn a grid (from `optimize`, or a named schedule and grid) into diffusers timesteps or
  sigmas, k-diffusion / ComfyUI sigmas, or JSON.

Every subcommand works on a Gaussian "data" law given by its covariance spectrum: a bundled name
(`gdj.spectra.available()`, e.g. `cifar10`) or a `.npy` / `.txt` file of eigenvalues. User errors
(a malformed spectrum file, an unknown name, a non-monotone grid) print one line on stderr and exit
with code 2.

**The common problem.** All candidates run from `--sigma-max` down to `--sigma-min` (noise levels
$\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$, default the EDM range 80 -> 0.002), start from
$x \sim \mathcal N(0, I)$ (`--init standard`) and are scored against $p_{\sigma_{\min}}$
(`--target truncated`): with `sigma_min > 0` the KL stays finite even though CIFAR-10 has 9 zero
eigenvalues. On each schedule the grid spans the times $t(\sigma_{\max}) \ge t \ge t(\sigma_{\min})$.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import compare, export, optimize, sweep
from . import eval as eval_
from ._problem import GRID_HELP, SCHEDULE_HELP
from ._problem import SubInterval as SubInterval
from ._problem import time_of_sigma as time_of_sigma
from ._shared import EXIT_USAGE, PROG, SAMPLER_HELP, CLIError, Parser, one_line

_START_HERE = (
    "Exact KL / W2 errors of diffusion samplers on Gaussian data, and schedule optimization.\n\n"
    "Data are a covariance spectrum (bundled: cifar10, cifar10_preprint2024, adsn_fabric; or a .npy file).\n"
    "Every number is exact (closed form per eigenvalue), not a Monte Carlo estimate.\n\n"
    "Start here:\n"
    "  gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart\n"
    "  gaussdiff eval --sampler heun --schedule edm --nfe 20\n"
    "  gaussdiff compare --samplers ddim,heun --schedules edm,tangent --nfe 10,20,40 --out cmp\n"
    "  gaussdiff sweep --spectra cifar10 --samplers ddim,euler --nfe 10,20 --out sweep.jsonl\n"
    "  gaussdiff export --from quickstart/result.json --format k-diffusion"
)


def _epilog() -> str:
    """The lists of samplers, schedules and grids shown under each subcommand's options."""
    samplers = "\n".join(f"  {k:10s} {v[0]}" for k, v in SAMPLER_HELP.items())
    schedules = "\n".join(f"  {k:15s} {v}" for k, v in SCHEDULE_HELP.items())
    grids = "\n".join(f"  {k:10s} {v}" for k, v in GRID_HELP.items())
    return f"samplers:\n{samplers}\n\nschedules:\n{schedules}\n\ngrids:\n{grids}"


def build_parser() -> argparse.ArgumentParser:
    """The `gaussdiff` argument parser (one subparser per subcommand)."""
    parser = Parser(prog=PROG, description=_START_HERE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=Parser)
    epilog = _epilog()
    for module in (eval_, optimize, compare, sweep, export):
        module.add_parser(sub, epilog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gaussdiff` console script. Returns the exit code (0 ok, 2 user error)."""
    import equinox as eqx

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    try:
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
