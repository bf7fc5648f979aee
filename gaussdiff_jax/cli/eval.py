"""`gaussdiff eval`: the exact KL / W2 of one sampler with one schedule and time grid."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .._interop._export import grid_fields
from ._diagnose import kl_breakdown
from ._evaluate import evaluate
from ._problem import Problem, parse_times
from ._shared import (
    CLIError,
    add_problem_options,
    add_subcommand,
    fmt,
    gdj,
    output_dir,
    print_table,
    progress,
    say,
    spectrum_info,
    write_json,
)

DEFAULT_SCHEDULE, DEFAULT_GRID, DEFAULT_NFE = "edm", "uniform", 10


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "eval",
        help="exact error of one sampler / schedule / grid",
        description="Print the exact KL and W2 between the sampler's output law and the target, for one "
        "schedule and time grid, and where the KL comes from (which modes, which step). "
        "Example: gaussdiff eval --sampler heun --schedule edm --nfe 20",
        epilog=epilog,
    )
    add_problem_options(p)
    g = p.add_argument_group("schedule and grid")
    g.add_argument("--schedule", default=None, help=f"noise schedule name (default {DEFAULT_SCHEDULE}; list below)")
    g.add_argument("--grid", default=None, help=f"time grid name (default {DEFAULT_GRID}; list below)")
    g.add_argument("--nfe", type=int, default=None, help=f"network-evaluation budget (default {DEFAULT_NFE})")
    g.add_argument("--steps", type=int, default=None, help="number of steps (instead of --nfe)")
    g.add_argument(
        "--times",
        default=None,
        metavar="T0,T1,...|FILE",
        help="custom decreasing forward times in [0, 1]: a comma list, a .npy file, or a JSON grid or result "
        "(FILE.json, FILE.json:CANDIDATE; its schedule comes with it). Replaces --grid, --nfe and --steps",
    )
    g.add_argument("--float32", action="store_true", help="compute in float32 (as on GPUs/TPUs)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/eval.json and DIR/error_spectrum.png")
    p.set_defaults(func=run)


def _grid_of(args, problem):
    """`(schedule name, schedule, grid name, ts)` from --times, or from --schedule / --grid / --nfe / --steps."""
    if args.times is not None:
        given = [flag for flag, value in (("--grid", args.grid), ("--nfe", args.nfe), ("--steps", args.steps)) if value]
        if given:
            raise CLIError(f"--times gives the grid itself: drop {', '.join(given)}")
        ts, stored = parse_times(args.times)
        if stored is not None and args.schedule is not None:
            raise CLIError(f"--times {args.times} carries its schedule ({type(stored).__name__}): drop --schedule")
        name = args.schedule or (type(stored).__name__ if stored is not None else DEFAULT_SCHEDULE)
        return name, stored if stored is not None else problem.schedule(name), "custom", ts
    if args.nfe is not None and args.steps is not None:
        raise CLIError("give --nfe or --steps, not both")
    name, grid = args.schedule or DEFAULT_SCHEDULE, args.grid or DEFAULT_GRID
    schedule = problem.schedule(name)
    steps = args.steps if args.steps is not None else problem.steps(args.nfe or DEFAULT_NFE)
    if steps < 1:
        raise CLIError(f"--steps must be >= 1; got {steps}")
    return name, schedule, grid, problem.grid(schedule, name, grid, steps)


def run(args) -> int:
    out = output_dir(args.out, "eval.json and error_spectrum.png") if args.out is not None else None
    problem = Problem(args)
    name, schedule, grid, ts = _grid_of(args, problem)
    with progress(args, f"eval {problem.sampler_name}, {name}, {ts.size - 1} steps"):
        result = evaluate(problem, [schedule], {(0, ts.size - 1): ts}, float32=args.float32)[(0, ts.size - 1)]
    if isinstance(result, CLIError):
        raise result
    doc = {
        "format": "gaussdiff_jax.grid",
        "version": 1,
        "command": "eval",
        "spectrum": spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": problem.describe(),
        "grid": grid,
        **grid_fields(ts, schedule),
        "nfe": int(problem.sampler.num_evaluations(schedule, ts)),
        "dtype": "float32" if args.float32 else "float64",
        "kl": result["kl"],
        "w2": result["w2"],
    }
    _report(args, problem, name, schedule, ts, doc)
    if out is not None:
        _write_outputs(args, out, problem, name, schedule, ts, doc)
    return 0


def _report(args, problem, name, schedule, ts, doc):
    print_table(
        f"{problem.sampler_name} on {problem.label} (d={problem.raw.shape[0]}), target {problem.target}, "
        f"init {problem.init}",
        ["schedule", "grid", "steps", "NFE", "KL", "W2"],
        [[name, doc["grid"], str(doc["num_steps"]), str(doc["nfe"]), fmt(doc["kl"]), fmt(doc["w2"])]],
        quiet=args.quiet,
    )
    for note in problem.notes:
        say(args, f"note: {note}")
    if doc["kl"] is None:
        say(args, "KL is infinite here (a zero eigenvalue against a singular target): use --sigma-min > 0 or --floor.")
    elif not args.quiet and not args.float32:
        line = kl_breakdown(problem, schedule, ts)
        if line:
            say(args, f"where the KL comes from: {line}.")


def _write_outputs(args, out, problem, name, schedule, ts, doc):
    write_json(out / "eval.json", doc)
    with_kl = doc["kl"] is not None
    g = gdj()
    law = g.sample_law(problem.source, schedule, problem.sampler, jnp.asarray(ts), init=problem.init)
    if with_kl:
        per_mode = g.kl(problem.source, law, target=problem.target, direction=problem.direction, reduce=False)
    else:
        per_mode = g.w2_squared(problem.source, law, target=problem.target, reduce=False)
    from .._plot import plot_error_spectrum

    plot_error_spectrum(
        problem.lam,
        {f"{problem.sampler_name}, {name}, {doc['num_steps']} steps": np.asarray(per_mode)},
        quantity="KL" if with_kl else "W2^2",
        title=f"Per-eigenvalue error, {problem.label}",
        path=out / "error_spectrum.png",
    )
    say(args, f"wrote {out / 'eval.json'} and {out / 'error_spectrum.png'}")
