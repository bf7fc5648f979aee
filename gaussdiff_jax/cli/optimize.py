"""`gaussdiff optimize`: optimize a time grid or a schedule for the exact KL / W2, against baselines."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._problem import (
    Problem,
    SubInterval,
    _kl_defined,
    _law,
    schedule_spec,
    time_range,
)
from ._shared import (
    PROG,
    CLIError,
    _gdj,
    _jax,
    add_problem_options,
    add_subcommand,
    finite,
    fmt,
    nfe_of,
    one_line,
    print_table,
    say,
    sigma_sampler,
    spectrum_info,
    write_json,
)

# ----------------------------------------------------------------------------------------------
# optimize


BASELINES = ("linear", "cosine", "edm", "tangent", "euler-lagrange")


def _optimizer(args):
    import optax

    if args.optimizer == "adam":
        # Grid logits tolerate large steps; time-warp logits act through interpolation and need smaller ones.
        lr = args.lr if args.lr is not None else (0.2 if args.param == "grid" else 0.05)
        return optax.adam(optax.cosine_decay_schedule(lr, max(args.iterations, 1))), {"learning_rate": lr}
    if args.optimizer == "lbfgs":
        return optax.lbfgs(), {}
    raise CLIError(f"unknown optimizer {args.optimizer!r}; choose adam or lbfgs")


def _trainable(module):
    """Only the learnable grid's or the time warp's logits are trained (never the base schedule's parameters)."""
    gdj = _gdj()
    spec = jax_tree_map_false(module)
    if isinstance(module, gdj.LearnableGrid):
        return eqx.tree_at(lambda m: m.logits, spec, True)
    return eqx.tree_at(lambda m: m.warp.logits, spec, True)


def jax_tree_map_false(tree):
    return _jax().tree_util.tree_map(lambda _: False, tree)


def run(args) -> int:
    gdj = _gdj()
    _jax()
    start = time.perf_counter()
    problem = Problem(args)
    if args.steps is not None:
        steps = int(args.steps)
        if steps < 1:
            raise CLIError(f"--steps must be >= 1; got {steps}")
    else:
        steps = problem.steps(args.nfe)
    base_name = args.schedule or ("tangent" if sigma_sampler(problem.sampler) else "linear")
    base = problem.schedule(base_name)
    t_max, t_min = time_range(base, problem.sigma_min, problem.sigma_max)
    source, sampler, init, target, direction = (
        problem.source,
        problem.sampler,
        problem.init,
        problem.target,
        problem.direction,
    )
    if args.divergence == "kl" and not _kl_defined(problem.lam, base, np.array([t_max, t_min]), target):
        raise CLIError(
            "KL against a singular target (zero eigenvalues, sigma_min = 0): use --sigma-min > 0, --floor, "
            "or --divergence w2"
        )

    def divergence(law):
        if args.divergence == "kl":
            return gdj.kl(source, law, target=target, direction=direction)
        return gdj.w2_squared(source, law, target=target)

    if args.param == "grid":
        module = gdj.LearnableGrid(steps, t_max, t_min)

        def loss(grid):
            return divergence(_law(source, base, sampler, grid.times(), init))

    elif args.param == "schedule":
        if args.knots < 1:
            raise CLIError(f"--knots must be >= 1; got {args.knots}")
        # The warp reshapes the base between t(sigma_max) and t(sigma_min), which stay fixed.
        module = gdj.WarpedSchedule(SubInterval(base, t_min, t_max), gdj.TimeWarp(args.knots))
        uniform_ts = jnp.asarray(np.linspace(1.0, 0.0, steps + 1))

        def loss(schedule):
            return divergence(_law(source, schedule, sampler, uniform_ts, init))

    else:
        raise CLIError(f"unknown --param {args.param!r}; choose grid or schedule")

    optimizer, opt_info = _optimizer(args)
    say(
        args,
        f"Optimizing the {'time grid' if args.param == 'grid' else 'schedule (time warp)'} of {problem.sampler_name} "
        f"with {steps} steps on {problem.label} (d={problem.raw.shape[0]}) for {args.divergence.upper()} "
        f"to {'p_sigma_min' if target == 'truncated' else 'p_0'}; sigma {fmt(problem.sigma_max, 4)} -> "
        f"{fmt(problem.sigma_min, 4)}, base schedule {base_name}.",
    )
    opt_start = time.perf_counter()
    try:
        result = gdj.optimize(
            loss,
            module,
            optimizer=optimizer,
            steps=args.iterations,
            progress=not args.quiet and not args.no_progress,
            filter_spec=_trainable(module),
        )
    except FloatingPointError as error:
        raise CLIError(one_line(error)) from None
    opt_seconds = time.perf_counter() - opt_start
    if not result.losses[-1] <= result.losses[0]:
        # Never report a result worse than the starting point (e.g. a too large learning rate).
        sys.stderr.write(
            f"{PROG} optimize: warning: the loss rose from {result.losses[0]:.6g} to {result.losses[-1]:.6g}; "
            "keeping the starting point (try a smaller --lr or more --iterations)\n"
        )
        result = type(result)(module, result.losses)
    if args.param == "grid":
        opt_schedule, opt_ts = base, np.asarray(result.module.times(), dtype=np.float64)
        opt_spec = schedule_spec(base_name, base)
    else:
        opt_schedule, opt_ts = result.module, np.linspace(1.0, 0.0, steps + 1)
        opt_spec = {
            "name": f"warped-{base_name}",
            "class": "WarpedSchedule",
            "base": {"class": "SubInterval", "t_lo": t_min, "t_hi": t_max, "base": schedule_spec(base_name, base)},
            "warp_logits": [float(v) for v in np.asarray(result.module.warp.logits)],
        }

    # Candidates: the optimized grid/schedule and the baselines, all on uniform grids of the same length.
    candidates = []  # (entry, schedule, ts)

    def add(name, schedule, ts, spec, note):
        entry = {
            "name": name,
            "schedule": spec,
            "note": note,
            "times": [float(t) for t in ts],
            "sigmas": None,
            "kl": None,
            "w2": None,
            "error": None,
        }
        candidates.append((entry, schedule, ts))

    add("optimized", opt_schedule, opt_ts, opt_spec, f"{args.param} optimized, {args.optimizer}")
    names = [n for n in (args.baselines.split(",") if args.baselines else BASELINES) if n]
    if args.divergence != "kl" and "euler-lagrange" in names and not args.baselines:
        names.remove("euler-lagrange")  # the Euler-Lagrange optimum is the KL leading term's
    failed = []
    for name in names:
        try:
            schedule = problem.schedule(name)
            ts = problem.grid(schedule, "uniform", steps)
        except CLIError as error:
            if name == "euler-lagrange" and not args.baselines:
                continue  # optional: only when the analytic optimum is available
            failed.append(
                {
                    "name": name,
                    "schedule": None,
                    "note": "",
                    "times": None,
                    "sigmas": None,
                    "kl": None,
                    "w2": None,
                    "error": str(error),
                }
            )
            continue
        note = "uniform t"
        if name == "tangent":
            note = f"uniform t, gamma* = {float(schedule.gamma):.4g}"
        if name == "euler-lagrange":
            note = "uniform t, N -> inf optimum"
        add(name, schedule, ts, schedule_spec(name, schedule), note)
    results = problem.evaluate_many([(schedule, ts) for _, schedule, ts in candidates])
    for (entry, _, _), res in zip(candidates, results):
        if isinstance(res, CLIError):
            entry["error"] = str(res)
        else:
            entry["kl"] = finite(res["kl"]) if res["kl"] is not None else None
            entry["w2"] = finite(res["w2"])
            entry["sigmas"] = res["sigmas"]
    candidates += [(entry, None, None) for entry in failed]

    key = args.divergence
    value_of = (lambda e: e["kl"]) if key == "kl" else (lambda e: e["w2"])
    baseline_values = [value_of(e) for e, _, _ in candidates[1:] if value_of(e) is not None]
    best = min(baseline_values) if baseline_values else None
    opt_value = value_of(candidates[0][0])
    doc = {
        "command": "optimize",
        "gaussdiff_jax_version": gdj.__version__,
        "spectrum": spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": {
            **problem.describe(),
            "nfe": nfe_of(sampler, base, opt_ts),
            "num_steps": steps,
            "divergence": args.divergence,
        },
        "optimization": {
            "parameterization": args.param,
            "base_schedule": schedule_spec(base_name, base),
            "optimizer": args.optimizer,
            **opt_info,
            "iterations": int(args.iterations),
            "seconds": opt_seconds,
            "losses": [finite(float(v)) for v in result.losses],
        },
        "candidates": [entry for entry, _, _ in candidates],
        "best_baseline": None,
        "ratio_to_best_baseline": None,
        "seconds": None,
    }
    if best is not None and opt_value is not None:
        doc["best_baseline"] = next(e["name"] for e, _, _ in candidates[1:] if value_of(e) == best)
        doc["ratio_to_best_baseline"] = opt_value / best
    rows = []
    for entry, _, _ in candidates:
        sig = entry.get("sigmas") or []
        rows.append(
            [
                entry["name"],
                fmt(entry.get("kl")),
                fmt(entry.get("w2")),
                fmt(value_of(entry) / opt_value, 4) if value_of(entry) is not None and opt_value else "n/a",
                fmt(sig[1] if len(sig) > 1 else None, 4),
                fmt(sig[-2] if len(sig) > 1 else None, 4),
                entry["error"] if entry.get("error") else entry["note"],
            ]
        )
    print_table(
        f"{problem.sampler_name}, {steps} steps, {problem.label}: {args.divergence.upper()} and W2 to "
        f"{'p_sigma_min' if target == 'truncated' else 'p_0'} (init {init})",
        ["candidate", "KL", "W2", f"{args.divergence.upper()} / optimized", "sigma_1", "sigma_N-1", "note"],
        rows,
        quiet=args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from .._plot import plot_schedules

    curves = {}
    for entry, schedule, ts in candidates:
        if schedule is not None and entry.get("error") is None:
            label = entry["name"] if entry.get(key) is None else f"{entry['name']} ({key.upper()} {entry[key]:.4g})"
            curves[label] = (schedule, ts)
    plot_schedules(
        curves,
        highlight=next(iter(curves), None),
        title=f"{problem.sampler_name}, {steps} steps on {problem.label}: noise levels visited",
        path=out / "schedule.png",
    )
    doc["seconds"] = time.perf_counter() - start
    write_json(out / "result.json", doc)
    say(args, f"wrote {out / 'result.json'} and {out / 'schedule.png'} ({doc['seconds']:.1f} s)")
    return 0


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "optimize",
        help="optimize a time grid or schedule; table, JSON and plot",
        description="Optimize the time grid (default) or the schedule of a sampler for the exact KL (or W2) by "
        "gradient descent (optax), then compare with baselines on the same problem: linear-beta, cosine, EDM "
        "(Karras rho=7), the tangent law with its best gamma*, and the Euler-Lagrange optimum when available, all "
        "on uniform grids. Writes OUT/result.json and OUT/schedule.png.\n\n"
        "Example: gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart",
        epilog=epilog,
    )
    add_problem_options(p)
    g = p.add_argument_group("optimization")
    g.add_argument("--nfe", type=int, default=10, help="network-evaluation budget (default %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    g.add_argument("--divergence", choices=("kl", "w2"), default="kl", help="loss (default %(default)s)")
    g.add_argument(
        "--param",
        choices=("grid", "schedule"),
        default="grid",
        help="grid: learn the N+1 time points on the base schedule; schedule: learn a monotone time "
        "warp of the base schedule, used on a uniform grid (default %(default)s)",
    )
    g.add_argument(
        "--schedule",
        default=None,
        help="base schedule (default: tangent for ddim / edm-heun, linear for samplers in t)",
    )
    g.add_argument("--knots", type=int, default=32, help="time-warp knots for --param schedule (default %(default)s)")
    g.add_argument(
        "--optimizer",
        choices=("adam", "lbfgs"),
        default="adam",
        help="adam with cosine-decayed learning rate, or L-BFGS (default %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="adam's initial learning rate (default 0.2 for --param grid, 0.05 for schedule)",
    )
    g.add_argument("--iterations", type=int, default=200, help="optimizer steps (default %(default)s)")
    g.add_argument(
        "--baselines", default=None, help=f"comma-separated baseline schedules (default: {','.join(BASELINES)})"
    )
    p.add_argument(
        "--out",
        default="gaussdiff-out",
        metavar="DIR",
        help="output folder for result.json and schedule.png (default %(default)s)",
    )
    p.set_defaults(func=run)
