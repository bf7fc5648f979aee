"""`gaussdiff optimize`: optimize a time grid or a schedule for the exact KL / W2, against baselines.

The baselines are evaluated first (one `gdj.sweep` path with every other evaluation), and the optimizer
starts from the best of them: by default its schedule becomes the base and its grid the starting grid,
so the result can never be worse than a baseline in the same table. When the optimizer does not improve
on that start, the command says so and returns the start.
"""

from __future__ import annotations

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._interop._export import grid_fields
from .._optimization._optimize import optimize_on_compression
from .._scale._sweep import group_schedules as _group_schedules
from ._evaluate import evaluate
from ._problem import Problem
from ._shared import (
    CLIError,
    add_problem_options,
    add_subcommand,
    fmt,
    gdj,
    one_line,
    output_dir,
    phase,
    print_table,
    progress,
    say,
    spectrum_info,
    write_json,
)

BASELINES = ("linear", "cosine", "edm", "tangent", "euler-lagrange")


@dataclasses.dataclass
class Candidate:
    """One row of the table: a schedule with its grid, or the error that prevented building / scoring it."""

    name: str
    note: str = ""
    schedule: object = None
    ts: np.ndarray | None = None
    kl: float | None = None
    w2: float | None = None
    error: str | None = None

    def value(self, divergence: str) -> float | None:
        return self.kl if divergence == "kl" else self.w2

    def entry(self) -> dict:
        grid = grid_fields(self.ts, self.schedule) if self.ts is not None else {"times": None, "schedule": None}
        return {"name": self.name, "note": self.note, **grid, "kl": self.kl, "w2": self.w2, "error": self.error}


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "optimize",
        help="optimize a time grid or schedule; table, JSON and plot",
        description="Optimize the time grid (default) or the schedule of a sampler for the exact KL (or W2) by "
        "gradient descent (optax), starting from the best baseline on the same problem: linear-beta, cosine, EDM "
        "(Karras rho=7), the tangent law with its best gamma*, and the Euler-Lagrange optimum, all on uniform "
        "grids. The result is never worse than a baseline: when the optimizer cannot improve, it says so. "
        "Writes OUT/result.json (read it with gdj.from_json) and OUT/schedule.png.\n\n"
        "Example: gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart",
        epilog=epilog,
    )
    add_problem_options(p)
    g = p.add_argument_group("optimization")
    g.add_argument("--nfe", type=int, default=10, help="network-evaluation budget (default %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    g.add_argument(
        "--divergence",
        choices=("kl", "w2"),
        default="w2",
        help="loss (default %(default)s: W2 predicts trained networks' sample quality; the KL is dominated by the "
        "smallest eigenvalues, see README 'Which objective')",
    )
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
        help="base schedule (default: the best baseline's, whose grid is then the starting point)",
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


def run(args) -> int:
    start = time.perf_counter()
    with phase("setup"):
        out = output_dir(args.out, "result.json and schedule.png")
        problem = Problem(args)
        steps = _steps(args, problem)
        singular = not (np.all(problem.lam > 0) or problem.target == "truncated" and problem.sigma_min > 0)
        if args.divergence == "kl" and singular:
            raise CLIError(
                "KL against a singular target (zero eigenvalues, sigma_min = 0): use --sigma-min > 0, --floor, "
                "or --divergence w2"
            )
    with phase("baselines"), progress(args, "baselines"):
        baselines = _baselines(args, problem, steps)
    with phase("optimizer"):
        base_name, base, start_ts = _starting_point(args, problem, steps, baselines)
        start_value = next((b.value(args.divergence) for b in baselines if b.name == base_name), None)
        optimized, info = _optimize(args, problem, base_name, base, start_ts, start_value)
        _score_in_place_of_a_baseline(optimized, baselines, problem)
    best = _best(baselines, args.divergence)
    if best is not None and not _better(optimized, best, args.divergence):
        value = fmt(best.value(args.divergence))
        say(args, f"no improvement on the best baseline ({best.name}, {args.divergence.upper()} {value}): "
            "the result is that baseline's grid.")  # fmt: skip
        optimized = dataclasses.replace(best, name="optimized", note=f"= {best.name} (optimizer did not improve)")
        info["improved"] = False
    candidates = [optimized, *baselines]
    with phase("table and JSON"):
        doc = _document(args, problem, steps, info, candidates)
        _print(args, problem, steps, doc["candidates"])
    with phase("plot"):
        _plot(problem, steps, candidates, args.divergence, out)
    doc["seconds"] = time.perf_counter() - start
    write_json(out / "result.json", doc)
    say(args, f"wrote {out / 'result.json'} and {out / 'schedule.png'} ({doc['seconds']:.1f} s)")
    return 0


def _steps(args, problem) -> int:
    if args.steps is None:
        return problem.steps(args.nfe)
    if args.steps < 1:
        raise CLIError(f"--steps must be >= 1; got {args.steps}")
    return int(args.steps)


def _baselines(args, problem, steps) -> list[Candidate]:
    """The baselines on uniform grids over the noise range, scored in one sweep (errors kept as rows)."""
    names = [n for n in (args.baselines.split(",") if args.baselines else BASELINES) if n]
    if args.divergence != "kl" and not args.baselines:
        names.remove("euler-lagrange")  # the Euler-Lagrange optimum is the KL leading term's
    rows, schedules, grids = [], [], {}
    for name in names:
        try:
            schedule = problem.schedule(name)
            ts = problem.grid(schedule, name, "uniform", steps)
        except CLIError as error:
            rows.append(Candidate(name, error=str(error)))
            continue
        note = {
            "tangent": f"uniform t, gamma* = {float(getattr(schedule, 'gamma', math.nan)):.4g}",
            "euler-lagrange": "uniform t, N -> inf optimum",
        }.get(name, "uniform t")
        rows.append(Candidate(name, note, schedule, ts))
        grids[(len(schedules), steps)] = ts
        schedules.append(schedule)
    _score([r for r in rows if r.ts is not None], problem, schedules, grids)
    return rows


def _score(rows: list[Candidate], problem, schedules, grids):
    """Fill in KL / W2 (or the error) of `rows`, row `i` being the case `(i, steps)` of `grids`."""
    results = evaluate(problem, schedules, grids)
    for i, row in enumerate(rows):
        result = results[(i, row.ts.size - 1)]
        if isinstance(result, CLIError):
            row.error = str(result)
        else:
            row.kl, row.w2 = result["kl"], result["w2"]


def _score_in_place_of_a_baseline(optimized: Candidate, baselines: list[Candidate], problem):
    """Score the optimized grid in the program that scored the baselines: it takes the place of the baseline
    with the same schedule structure and grid length (its base, usually), so nothing is compiled again."""
    rows = [b for b in baselines if b.ts is not None]
    same = [
        i
        for i, b in enumerate(rows)
        if b.ts.size == optimized.ts.size and len(_group_schedules([b.schedule, optimized.schedule])) == 1
    ]
    if not same:
        _score([optimized], problem, [optimized.schedule], {(0, optimized.ts.size - 1): optimized.ts})
        return
    schedules = [b.schedule for b in rows]
    grids = {(i, b.ts.size - 1): b.ts for i, b in enumerate(rows)}
    schedules[same[0]], grids[(same[0], optimized.ts.size - 1)] = optimized.schedule, optimized.ts
    result = evaluate(problem, schedules, grids)[(same[0], optimized.ts.size - 1)]
    if isinstance(result, CLIError):
        optimized.error = str(result)
    else:
        optimized.kl, optimized.w2 = result["kl"], result["w2"]


def _best(rows: list[Candidate], divergence: str) -> Candidate | None:
    scored = [r for r in rows if r.value(divergence) is not None]
    return min(scored, key=lambda r: r.value(divergence)) if scored else None


def _better(a: Candidate, b: Candidate, divergence: str) -> bool:
    return a.value(divergence) is not None and a.value(divergence) < b.value(divergence)


def _starting_point(args, problem, steps, baselines):
    """`(base name, base schedule, starting grid)`: the best baseline's, unless --schedule names the base."""
    best = _best(baselines, args.divergence)
    if args.schedule is None and best is not None:
        return best.name, best.schedule, best.ts
    name = args.schedule or ("linear" if problem.sampler.needs_beta else "tangent")
    base = problem.schedule(name)
    return name, base, problem.grid(base, name, "uniform", steps)


def _law(problem, source, schedule, ts):
    # DDIM (eta = 0) has a closed form that is cheaper to differentiate than the recursion.
    if isinstance(problem.sampler, gdj().DDIM) and float(problem.sampler.eta) == 0.0:
        return gdj().ddim_law(source, schedule, ts, init=problem.init)
    return gdj().sample_law(source, schedule, problem.sampler, ts, init=problem.init)


def _loss_and_module(args, problem, base, start_ts, source):
    """The module to train (its logits only) and the loss of the divergence on `source` as a function of it."""
    g = gdj()

    def divergence(law):
        if args.divergence == "kl":
            return g.kl(source, law, target=problem.target, direction=problem.direction)
        return g.w2_squared(source, law, target=problem.target)

    if args.param == "grid":
        module = g.LearnableGrid.from_times(start_ts)
        return (
            module,
            eqx.tree_at(lambda m: m.logits, _nothing(module), True),
            lambda m: divergence(_law(problem, source, base, m.times())),
        )
    if args.knots < 1:
        raise CLIError(f"--knots must be >= 1; got {args.knots}")
    # The warp reshapes the base between t(sigma_max) and t(sigma_min), which stay fixed.
    t_max, t_min = float(start_ts[0]), float(start_ts[-1])
    module = g.WarpedSchedule(g.SubInterval(base, t_min, t_max), g.TimeWarp(args.knots))
    uniform = jnp.asarray(np.linspace(1.0, 0.0, start_ts.size))
    return (
        module,
        eqx.tree_at(lambda m: m.warp.logits, _nothing(module), True),
        lambda m: divergence(_law(problem, source, m, uniform)),
    )


def _nothing(tree):
    return jax.tree_util.tree_map(lambda _: False, tree)


def _optimizer(args):
    import optax

    if args.optimizer == "lbfgs":
        return optax.lbfgs(), {}
    # Grid logits tolerate large steps; time-warp logits act through interpolation and need smaller ones.
    lr = args.lr if args.lr is not None else (0.2 if args.param == "grid" else 0.05)
    return optax.adam(optax.cosine_decay_schedule(lr, max(args.iterations, 1))), {"learning_rate": lr}


def _optimize(args, problem, base_name, base, start_ts, start_value) -> tuple[Candidate, dict]:
    """Run the optimizer from the starting point; the optimized candidate (scored by the sweep) and the log.

    The loss is evaluated on the spectrum's quadrature compression (`gdj.compress`: 204 of CIFAR-10's 3072 modes)
    when its value at the start reproduces the start's exact score `start_value` to 1e-9; else (or with no score:
    `--schedule`) on every mode. The table scores the result on every mode either way."""
    optimizer, info = _optimizer(args)
    what = "time grid" if args.param == "grid" else "schedule (time warp)"
    say(
        args,
        f"Optimizing the {what} of {problem.sampler_name} with {start_ts.size - 1} steps on {problem.label} "
        f"(d={problem.raw.shape[0]}) for {args.divergence.upper()} to "
        f"{'p_sigma_min' if problem.target == 'truncated' else 'p_0'}; sigma {fmt(problem.sigma_max, 4)} -> "
        f"{fmt(problem.sigma_min, 4)}, starting from {base_name} (uniform t).",
    )
    opt_start = time.perf_counter()

    def run(source):
        module, trainable, loss = _loss_and_module(args, problem, base, start_ts, source)
        try:
            return gdj().optimize(
                loss,
                module,
                optimizer=optimizer,
                steps=args.iterations,
                progress=not args.quiet and not args.no_progress,
                filter_spec=trainable,
            )
        except FloatingPointError as error:
            raise CLIError(one_line(error)) from None

    if start_value is None:  # --schedule: no exact score of the start to check a compression against
        result, source = run(problem.source), problem.source
    else:
        exact = start_value ** (2 if args.divergence == "w2" else 1)
        result, source = optimize_on_compression(run, problem.source, exact)
    losses = np.asarray(result.losses, dtype=np.float64)
    best_step = int(np.argmin(losses))
    say(
        args,
        f"optimizer: best loss {losses[best_step]:.6g} at step {best_step} of {args.iterations} "
        f"(start {losses[0]:.6g}, last {losses[-1]:.6g})"
        + (
            f"; evaluated on {source.eigenvalues.shape[0]} weighted modes, the quadrature compression of the "
            f"{problem.source.eigenvalues.shape[0]} (equal to the exact loss at the start to 1e-9)."
            if source is not problem.source
            else "."
        ),
    )
    if args.param == "grid":
        schedule, ts = base, np.asarray(result.module.times(), dtype=np.float64)
    else:
        schedule, ts = result.module, np.linspace(1.0, 0.0, start_ts.size)
    optimized = Candidate("optimized", f"{args.param} optimized, {args.optimizer}", schedule, ts)
    info.update(
        parameterization=args.param,
        base_schedule=base_name,
        optimizer=args.optimizer,
        iterations=int(args.iterations),
        loss_modes=int(source.eigenvalues.shape[0]),
        seconds=time.perf_counter() - opt_start,
        best_step=best_step,
        improved=True,
        losses=[float(v) if math.isfinite(v) else None for v in losses],
    )
    return optimized, info


def _print(args, problem, steps, entries: list[dict]):
    key = args.divergence
    opt_value = entries[0][key]
    rows = []
    for e in entries:
        sig = e.get("sigmas") or []
        ratio = fmt(e[key] / opt_value, 4) if e[key] is not None and opt_value else "n/a"
        rows.append([e["name"], fmt(e["kl"]), fmt(e["w2"]), ratio, fmt(sig[1] if len(sig) > 1 else None, 4),
                     fmt(sig[-2] if len(sig) > 1 else None, 4), e["error"] or e["note"]])  # fmt: skip
    print_table(
        f"{problem.sampler_name}, {steps} steps, {problem.label}: {key.upper()} and W2 to "
        f"{'p_sigma_min' if problem.target == 'truncated' else 'p_0'} (init {problem.init})",
        ["candidate", "KL", "W2", f"{key.upper()} / optimized", "sigma_1", "sigma_N-1", "note"],
        rows,
        quiet=args.quiet,
    )
    for note in problem.notes:
        say(args, f"note: {note}")


def _document(args, problem, steps, info, candidates: list[Candidate]) -> dict:
    key = args.divergence
    best = _best(candidates[1:], key)
    opt_value = candidates[0].value(key)
    return {
        "format": "gaussdiff_jax.grid",
        "version": 1,
        "command": "optimize",
        "gaussdiff_jax_version": gdj().__version__,
        "spectrum": spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": {
            **problem.describe(),
            "nfe": int(problem.sampler.num_evaluations(candidates[0].schedule, candidates[0].ts)),
            "num_steps": steps,
            "divergence": key,
        },
        "optimization": info,
        "candidates": [c.entry() for c in candidates],
        "best_baseline": None if best is None else best.name,
        "ratio_to_best_baseline": None if best is None or opt_value is None else opt_value / best.value(key),
        "seconds": None,
    }


def _plot(problem, steps, candidates: list[Candidate], key: str, out):
    from .._plot import plot_schedules

    curves = {}
    for c in candidates:
        if c.ts is not None and c.error is None:
            value = c.value(key)
            curves[c.name if value is None else f"{c.name} ({key.upper()} {value:.4g})"] = (c.schedule, c.ts)
    plot_schedules(
        curves,
        highlight=next(iter(curves), None),
        title=f"{problem.sampler_name}, {steps} steps on {problem.label}: noise levels visited",
        path=out / "schedule.png",
    )
