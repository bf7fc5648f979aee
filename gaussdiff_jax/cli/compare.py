"""`gaussdiff compare`: a table of samplers x NFE budgets x schedules (CSV + PNG)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ._problem import (
    problem_for,
)
from ._shared import (
    CLIError,
    _gdj,
    _optional,
    add_problem_options,
    add_subcommand,
    fmt,
    int_list,
    make_sampler,
    name_list,
    nfe_of,
    print_table,
    say,
)

# ----------------------------------------------------------------------------------------------
# compare


def _prediction(problem, schedule, sampler_name, grid, steps_list, ts_list):
    """Leading-term prediction for deterministic DDIM on uniform grids spanning [0, 1] (else None)."""
    gdj = _gdj()
    fn = _optional("kl_leading_term") if problem.divergence == "kl" else _optional("w2_leading_term")
    if fn is None or sampler_name != "ddim" or float(problem.args.eta) != 0.0 or grid != "uniform":
        return None
    if any(abs(ts[0] - 1.0) > 1e-12 or abs(ts[-1]) > 1e-12 for ts in ts_list):
        return None
    positive = problem.lam[problem.lam > 0]  # zero modes contribute nothing against p_sigma_min > 0
    try:
        # The leading term is exactly C / N^2 (KL) or C / N (W2): one quadrature serves every N.
        one = float(fn(gdj.GaussianSource(positive), schedule, 1))
    except (ValueError, RuntimeError):  # singular schedules (infinite functionals) have no leading term
        return None
    power = 2 if problem.divergence == "kl" else 1
    values = [one / n**power for n in steps_list]
    return values if all(math.isfinite(v) for v in values) else None


def run(args) -> int:
    samplers = name_list(args.samplers)
    schedules = name_list(args.schedules)
    nfes = int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, args.eta if name.lower() == "ddim" else 0.0)
    rows, records, curves, predictions = [], [], {}, {}
    for sampler_name in samplers:
        problem = problem_for(args, args.spectrum, sampler_name)
        # Every (schedule, NFE) case of this sampler is evaluated in one compiled program.
        cases, items = [], []
        for schedule_name in schedules:
            try:
                schedule = problem.schedule(schedule_name)
            except CLIError as error:
                cases += [(schedule_name, None, nfe, None, None, str(error)) for nfe in nfes]
                continue
            for nfe in nfes:
                try:
                    steps = problem.steps(nfe)
                    ts = problem.grid(schedule, args.grid, steps)
                except CLIError as error:
                    cases.append((schedule_name, schedule, nfe, None, None, str(error)))
                    continue
                cases.append((schedule_name, schedule, nfe, steps, ts, None))
                items.append((schedule, ts))
        results = iter(problem.evaluate_many(items))
        series: dict[str, list] = {}
        for schedule_name, schedule, nfe, steps, ts, error in cases:
            record = {
                "sampler": problem.sampler_name,
                "schedule": schedule_name,
                "grid": args.grid,
                "nfe": nfe,
                "steps": steps,
                "nfe_used": None,
                "kl": None,
                "w2": None,
                "error": error or "",
            }
            if error is None:
                res = next(results)
                if isinstance(res, CLIError):
                    record["error"] = str(res)
                else:
                    record.update(nfe_used=nfe_of(problem.sampler, schedule, ts), kl=res["kl"], w2=res["w2"])
                    value = res[args.divergence]
                    if value is not None and value > 0 and math.isfinite(value):
                        series.setdefault(schedule_name, []).append((record["nfe_used"], value, steps, ts, schedule))
            records.append(record)
            rows.append(
                [
                    problem.sampler_name,
                    schedule_name,
                    str(nfe),
                    str(steps or "-"),
                    fmt(record["kl"]),
                    fmt(record["w2"]),
                    record["error"][:70],
                ]
            )
        for schedule_name, points in series.items():
            label = f"{problem.sampler_name} / {schedule_name}"
            xs = [p[0] for p in points]
            curves[label] = (xs, [p[1] for p in points])
            pred = _prediction(
                problem, points[0][4], problem.sampler_name, args.grid, [p[2] for p in points], [p[3] for p in points]
            )
            if pred is not None:
                predictions[label] = (xs, pred)
    print_table(
        f"{args.spectrum}: KL and W2 to {'p_sigma_min' if (args.target or ('truncated' if args.sigma_min > 0 else 'data')) == 'truncated' else 'p_0'}",
        ["sampler", "schedule", "NFE", "steps", "KL", "W2", "error"],
        rows,
        quiet=args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["sampler", "schedule", "grid", "nfe", "steps", "nfe_used", "kl", "w2", "error"]
        )
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    from .._plot import plot_error_vs_nfe

    plot_error_vs_nfe(
        curves,
        predictions=predictions or None,
        quantity=args.divergence.upper(),
        title=f"{args.spectrum}: {args.divergence.upper()} against NFE",
        path=out / "error_vs_nfe.png",
    )
    say(args, f"wrote {out / 'compare.csv'} and {out / 'error_vs_nfe.png'}")
    return 0


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "compare",
        help="table of samplers x NFE x schedules (CSV + PNG)",
        description="Evaluate every combination of samplers, schedules and NFE budgets; print a table and write "
        "OUT/compare.csv and OUT/error_vs_nfe.png (with the DDIM leading-term prediction when it "
        "applies). Example: gaussdiff compare --samplers ddim,heun --schedules edm,tangent "
        "--nfe 10,20,40 --out cmp",
        epilog=epilog,
    )
    add_problem_options(p, sampler=False)
    g = p.add_argument_group("cases")
    g.add_argument("--samplers", default="ddim,heun", help="comma-separated sampler names (default %(default)s)")
    g.add_argument("--schedules", default="edm,tangent", help="comma-separated schedule names (default %(default)s)")
    g.add_argument("--grid", default="uniform", help="time grid name (default %(default)s)")
    g.add_argument("--nfe", default="10,20,40", help="comma-separated NFE budgets (default %(default)s)")
    g.add_argument("--divergence", choices=("kl", "w2"), default="kl", help="plotted quantity (default %(default)s)")
    p.add_argument("--out", default="gaussdiff-compare", metavar="DIR", help="output folder (default %(default)s)")
    p.set_defaults(func=run)
