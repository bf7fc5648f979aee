"""`gaussdiff export`: a grid to diffusers / k-diffusion / JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ._problem import (
    SubInterval,
    _sigmas_of,
    make_grid,
    make_schedule,
    parse_times,
    time_range,
)
from ._shared import (
    PROG,
    CLIError,
    _gdj,
    _optional,
    add_subcommand,
    float_or_inf,
    load_spectrum,
    one_line,
    say,
)

# ----------------------------------------------------------------------------------------------
# export


def _rebuild_schedule(spec: dict):
    gdj = _gdj()
    if spec is None:
        raise CLIError("the input file has no schedule for this grid")
    cls = spec.get("class")
    params = spec.get("params", {})

    def num(v):
        return math.inf if v is None else v

    if cls == "LinearBeta":
        return gdj.LinearBeta(params["beta_min"], params["beta_max"])
    if cls == "Cosine":
        return gdj.Cosine(params["s"])
    if cls == "EDM":
        return gdj.EDM(params["sigma_min"], num(params["sigma_max"]), params["rho"])
    if cls == "Tangent":
        return gdj.Tangent(params["gamma"], sigma_min=params["sigma_min"], sigma_max=num(params["sigma_max"]))
    if cls == "LogSNRLinear":
        return gdj.LogSNRLinear(params["log_snr_max"], params["log_snr_min"])
    if cls == "SubInterval":
        return SubInterval(_rebuild_schedule(spec["base"]), float(spec["t_lo"]), float(spec["t_hi"]))
    if cls == "WarpedSchedule":
        base = _rebuild_schedule(spec["base"])
        return gdj.WarpedSchedule(base, gdj.TimeWarp(logits=np.asarray(spec["warp_logits"])))
    raise CLIError(f"cannot rebuild a {cls} schedule from the input file; export from --schedule NAME instead")


def run(args) -> int:
    gdj = _gdj()
    if args.input is not None:
        try:
            doc = json.loads(Path(args.input).read_text())
        except FileNotFoundError:
            raise CLIError(f"--from file {args.input!r} not found") from None
        except json.JSONDecodeError as error:
            raise CLIError(f"--from file {args.input!r} is not JSON ({error.msg})") from None
        if doc.get("command") == "optimize":
            entries = {c["name"]: c for c in doc["candidates"]}
            if args.candidate not in entries:
                raise CLIError(f"no candidate {args.candidate!r} in {args.input}; have: {', '.join(entries)}")
            entry = entries[args.candidate]
            ts = np.asarray(entry["times"], dtype=np.float64)
            schedule = _rebuild_schedule(entry["schedule"])
        elif doc.get("command") == "eval":
            ts = np.asarray(doc["times"], dtype=np.float64)
            schedule = _rebuild_schedule(doc["schedule"])
        else:
            raise CLIError(f"{args.input} is not a result of 'gaussdiff optimize' or 'gaussdiff eval'")
    else:
        if args.schedule is None or (args.steps is None and args.times is None):
            raise CLIError("give --from RESULT.json, or --schedule NAME with --steps N (or --times)")
        lam = load_spectrum(args.spectrum)[1] if args.schedule in ("tangent", "euler-lagrange", "el") else np.ones(1)
        schedule = make_schedule(args.schedule, lam=lam, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
        if args.times is not None:
            ts = parse_times(args.times)
        else:
            t_max, t_min = time_range(schedule, args.sigma_min, args.sigma_max)
            ts = make_grid(args.grid, schedule, int(args.steps), t_max, t_min)
    try:
        gdj.validate_grid(ts)
    except ValueError as error:
        raise CLIError(one_line(error)) from None
    sigmas = _sigmas_of(schedule, ts)
    fmt = args.format
    if fmt == "json":
        to_json = _optional("to_json")
        if to_json is not None and all(s is not None for s in sigmas):
            text = to_json(ts, schedule)
        else:
            text = json.dumps(
                {"format": "gaussdiff_jax.grid", "times": [float(t) for t in ts], "sigmas": sigmas},
                indent=2,
                allow_nan=False,
            )
        payload = text
    else:
        if sigmas[0] is None:
            raise CLIError(
                "the grid starts at sigma = inf (alpha_bar = 0), which diffusers / k-diffusion cannot take: "
                "re-run optimize with a finite --sigma-max (e.g. 80)"
            )
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if fmt == "k-diffusion":
                fn = _optional("to_k_diffusion")
                if fn is None:
                    raise CLIError("k-diffusion export needs gaussdiff_jax.to_k_diffusion (not available)")
                values = fn(ts, schedule, append_zero=args.append_zero)
            elif fmt == "diffusers":
                fn = _optional("to_diffusers")
                if fn is None:
                    raise CLIError("diffusers export needs gaussdiff_jax.to_diffusers (not available)")
                try:
                    values = fn(ts, schedule, kind=args.kind)
                except ValueError as error:
                    raise CLIError(one_line(error)) from None
            else:
                raise CLIError(f"unknown format {fmt!r}; choose diffusers, k-diffusion or json")
        for warning in caught:
            print(f"{PROG} export: warning: {one_line(warning.message)}", file=sys.stderr)
        payload = json.dumps(values)
    if args.out is not None:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload + "\n")
        say(args, f"wrote {path}")
    else:
        print(payload)
    return 0


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "export",
        help="grid -> diffusers / k-diffusion / JSON",
        description="Export a time grid as diffusers timesteps or sigmas, k-diffusion / ComfyUI sigmas, or JSON. "
        "Take it from an optimize or eval result (--from), or build it from --schedule and --steps. "
        "Example: gaussdiff export --from quickstart/result.json --format k-diffusion",
        epilog=epilog,
    )
    p.add_argument(
        "--from",
        dest="input",
        default=None,
        metavar="RESULT.json",
        help="result.json of 'gaussdiff optimize' or eval.json of 'gaussdiff eval'",
    )
    p.add_argument(
        "--candidate", default="optimized", help="which candidate of an optimize result (default %(default)s)"
    )
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
    p.add_argument("--grid", default="uniform", help="grid name with --schedule (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="number of steps with --schedule")
    p.add_argument("--times", default=None, help="custom forward times with --schedule")
    p.add_argument("--spectrum", default="cifar10", help="spectrum for the tangent / euler-lagrange schedules")
    p.add_argument("--sigma-min", type=float_or_inf, default=0.002, help="final noise level (default %(default)s)")
    p.add_argument("--sigma-max", type=float_or_inf, default=80.0, help="initial noise level (default %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the payload")
    p.set_defaults(func=run)
