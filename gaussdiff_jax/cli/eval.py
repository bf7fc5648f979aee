"""`gaussdiff eval`: the exact KL / W2 of one sampler with one schedule and time grid."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ._problem import Problem, _sigmas_of, evaluate, parse_times, per_mode_errors, schedule_spec
from ._shared import (
    _gdj,
    add_problem_options,
    add_subcommand,
    finite,
    fmt,
    nfe_of,
    print_table,
    say,
    spectrum_info,
    write_json,
)


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "eval",
        help="exact error of one sampler / schedule / grid",
        description="Print the exact KL and W2 between the sampler's output law and the target, for one "
        "schedule and time grid. Example: gaussdiff eval --sampler heun --schedule edm --nfe 20",
        epilog=epilog,
    )
    add_problem_options(p)
    g = p.add_argument_group("schedule and grid")
    g.add_argument("--schedule", default="edm", help="noise schedule name (default %(default)s; list below)")
    g.add_argument("--grid", default="uniform", help="time grid name (default %(default)s; list below)")
    g.add_argument("--nfe", type=int, default=10, help="network-evaluation budget (default %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    g.add_argument(
        "--times",
        default=None,
        metavar="T0,T1,...|FILE",
        help="custom decreasing forward times in [0, 1] (comma list, .npy or .json); overrides the grid",
    )
    g.add_argument("--float32", action="store_true", help="compute in float32 (as on GPUs/TPUs)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/eval.json and DIR/error_spectrum.png")
    p.set_defaults(func=run)


def run(args) -> int:
    problem = Problem(args)
    schedule = problem.schedule(args.schedule)
    if args.times is not None:
        ts = parse_times(args.times)
        steps = ts.shape[0] - 1
    else:
        steps = args.steps if args.steps is not None else problem.steps(args.nfe)
        ts = problem.grid(schedule, args.grid, steps)
    errors = _evaluate(args, problem, schedule, ts)
    doc = {
        "command": "eval",
        "spectrum": spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": problem.describe(),
        "schedule": schedule_spec(args.schedule, schedule),
        "grid": args.grid if args.times is None else "custom",
        "num_steps": int(steps),
        "nfe": nfe_of(problem.sampler, schedule, ts),
        "times": [float(t) for t in ts],
        "sigmas": _sigmas_of(schedule, ts),
        "dtype": "float32" if args.float32 else "float64",
        "kl": finite(errors["kl"]) if errors["kl"] is not None else None,
        "w2": finite(errors["w2"]),
    }
    print_table(
        f"{problem.sampler_name} on {problem.label} (d={problem.raw.shape[0]}), target {problem.target}, init {problem.init}",
        ["schedule", "grid", "steps", "NFE", "KL", "W2"],
        [[args.schedule, doc["grid"], str(steps), str(doc["nfe"]), fmt(doc["kl"]), fmt(doc["w2"])]],
        quiet=args.quiet,
    )
    if errors["kl"] is None:
        say(args, "KL is infinite here (a zero eigenvalue against a singular target): use --sigma-min > 0 or --floor.")
    if args.out is not None:
        _write_outputs(args, problem, schedule, ts, steps, doc)
    return 0


def _evaluate(args, problem, schedule, ts):
    source, schedule_eval, ts_eval = problem.source, schedule, ts
    if args.float32:
        gdj = _gdj()
        source, schedule_eval = gdj.cast(source, jnp.float32), gdj.cast(schedule, jnp.float32)
        ts_eval = np.asarray(ts, dtype=np.float32)
    return evaluate(
        source,
        schedule_eval,
        problem.sampler,
        ts_eval,
        init=problem.init,
        target=problem.target,
        direction=problem.direction,
    )


def _write_outputs(args, problem, schedule, ts, steps, doc):
    out = Path(args.out)
    write_json(out / "eval.json", doc)
    with_kl = doc["kl"] is not None
    per_mode = per_mode_errors(
        problem.source,
        schedule,
        problem.sampler,
        ts,
        init=problem.init,
        target=problem.target,
        direction=problem.direction,
        with_kl=with_kl,
    )
    from .._plot import plot_error_spectrum

    key = "kl" if with_kl else "w2_squared"
    plot_error_spectrum(
        problem.lam,
        {f"{problem.sampler_name}, {args.schedule}, {steps} steps": per_mode[key]},
        quantity="KL" if with_kl else "W2^2",
        title=f"Per-eigenvalue error, {problem.label}",
        path=out / "error_spectrum.png",
    )
    say(args, f"wrote {out / 'eval.json'} and {out / 'error_spectrum.png'}")
