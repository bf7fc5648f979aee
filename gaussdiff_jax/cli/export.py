"""`gaussdiff export`: a grid to diffusers timesteps / sigmas, k-diffusion / ComfyUI sigmas, or JSON.

The grid comes from a result of the command (read with `gdj.from_json`, the one JSON format) or is built
from `--schedule` with `--steps` (or `--times`).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ._problem import make_grid, make_schedule, parse_times, pick_grid, time_range
from ._shared import (
    PROG,
    CLIError,
    add_output_options,
    add_subcommand,
    float_or_inf,
    gdj,
    load_spectrum,
    one_line,
    output_file,
    say,
)

# The library's messages name its Python arguments; here the user typed flags.
_FLAGS = {
    "append_zero=True": "--append-zero",
    "kind='sigmas'": "--kind sigmas",
    "kind='timesteps'": "--kind timesteps",
    "kind='flow_sigmas'": "--kind flow_sigmas",
    "to_k_diffusion": "--format k-diffusion",
}


def _as_flags(text: str) -> str:
    for name, flag in _FLAGS.items():
        text = text.replace(name, flag)
    return text


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "export",
        help="grid -> diffusers / k-diffusion / JSON",
        description="Export a time grid as diffusers timesteps or sigmas, k-diffusion / ComfyUI sigmas, or JSON. "
        "Take it from a result of optimize, eval or compare (--from), or build it from --schedule and --steps. "
        "Example: gaussdiff export --from quickstart/result.json --format k-diffusion",
        epilog=epilog,
    )
    p.add_argument(
        "--from",
        dest="input",
        default=None,
        metavar="RESULT.json",
        help="result.json of 'gaussdiff optimize', eval.json of 'eval', compare.json of 'compare', or a gdj.to_json file",
    )
    p.add_argument("--candidate", default=None, help="which candidate of a result with several (default: optimized)")
    p.add_argument(
        "--format",
        choices=("diffusers", "k-diffusion", "json"),
        default="json",
        help="output format (default %(default)s)",
    )
    p.add_argument(
        "--kind",
        choices=("timesteps", "sigmas", "flow_sigmas"),
        default="sigmas",
        help="diffusers: timesteps (Discrete schedules only), sigmas, or flow_sigmas (default %(default)s)",
    )
    p.add_argument("--append-zero", action="store_true", help="k-diffusion: append the final sigma = 0")
    p.add_argument("--schedule", default=None, help="build the grid from this schedule instead of --from")
    p.add_argument("--grid", default=None, help="grid name with --schedule (default uniform)")
    p.add_argument("--steps", type=int, default=None, help="number of steps with --schedule")
    p.add_argument("--times", default=None, help="custom forward times with --schedule (instead of --grid/--steps)")
    p.add_argument("--spectrum", default="cifar10", help="spectrum for the tangent / euler-lagrange schedules")
    p.add_argument("--sigma-min", type=float_or_inf, default=0.002, help="final noise level (default %(default)s)")
    p.add_argument("--sigma-max", type=float_or_inf, default=80.0, help="initial noise level (default %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of stdout")
    add_output_options(p, progress=False, quiet="print nothing but errors and the payload")
    p.set_defaults(func=run)


def _from_file(args):
    path = Path(args.input)
    if not path.is_file():
        raise CLIError(f"--from file {args.input!r} not found")
    try:
        doc = gdj().from_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CLIError(f"--from {args.input}: {one_line(error)}") from None
    if args.candidate is not None and not doc.get("candidates"):
        raise CLIError(f"--candidate: {args.input} holds one grid, not candidates; drop --candidate")
    ts, schedule = pick_grid(doc, args.candidate, args.input, flag="--candidate NAME")
    if schedule is None:
        raise CLIError(f"{args.input} stores no schedule for its grid, which the sigmas need")
    return np.asarray(ts, dtype=np.float64), schedule


def _from_schedule(args):
    if args.schedule is None or (args.steps is None and args.times is None):
        raise CLIError("give --from RESULT.json, or --schedule NAME with --steps N (or --times)")
    if args.times is not None and (args.steps is not None or args.grid is not None):
        raise CLIError(
            "--times gives the grid itself: drop "
            + " and ".join(f for f, v in (("--steps", args.steps), ("--grid", args.grid)) if v is not None)
        )
    lam = load_spectrum(args.spectrum)[1] if args.schedule in ("tangent", "euler-lagrange", "el") else np.ones(1)
    schedule = make_schedule(args.schedule, lam=lam, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
    if args.times is not None:
        ts, stored = parse_times(args.times)
        if stored is not None:
            raise CLIError(f"--times {args.times} carries its own schedule: use --from {args.times} instead")
        return ts, schedule
    t_max, t_min = time_range(schedule, args.schedule, args.sigma_min, args.sigma_max)
    return make_grid(args.grid or "uniform", schedule, int(args.steps), t_max, t_min), schedule


def run(args) -> int:
    path = output_file(args.out, "grid.json") if args.out is not None else None
    if args.input is not None and (args.schedule is not None or args.times is not None):
        raise CLIError("give --from or --schedule/--times, not both")
    ts, schedule = _from_file(args) if args.input is not None else _from_schedule(args)
    payload = gdj().to_json(ts, schedule) if args.format == "json" else json.dumps(_values(args, ts, schedule))
    if path is not None:
        path.write_text(payload + "\n")
        say(args, f"wrote {path}")
    else:
        print(payload)
    return 0


def _values(args, ts, schedule) -> list:
    if not np.isfinite(float(schedule.sigma(ts[0]))):
        raise CLIError(
            "the grid starts at sigma = inf (alpha_bar = 0), which diffusers / k-diffusion cannot take: "
            "re-run with a finite --sigma-max (e.g. 80)"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if args.format == "k-diffusion":
                values = gdj().to_k_diffusion(ts, schedule, append_zero=args.append_zero)
            else:
                values = gdj().to_diffusers(ts, schedule, kind=args.kind)
        except ValueError as error:
            raise CLIError(_as_flags(one_line(error))) from None
    for warning in caught:
        print(f"{PROG} export: warning: {_as_flags(one_line(warning.message))}", file=sys.stderr)
    return values
