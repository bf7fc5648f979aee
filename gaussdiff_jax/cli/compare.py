"""`gaussdiff compare`: a table of samplers x NFE budgets x schedules (CSV, JSON and PNG)."""

from __future__ import annotations

import csv
import itertools
import math

from .._interop._export import grid_fields
from ._diagnose import kl_breakdown
from ._evaluate import evaluate
from ._problem import problem_for
from ._shared import (
    CLIError,
    add_problem_options,
    add_subcommand,
    fmt,
    gdj,
    int_list,
    make_sampler,
    name_list,
    output_dir,
    print_table,
    progress,
    sampler_eta,
    say,
    write_json,
)

COLUMNS = ["sampler", "schedule", "grid", "nfe", "steps", "nfe_used", "kl", "w2", "error"]


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "compare",
        help="table of samplers x NFE x schedules (CSV, JSON, PNG)",
        description="Evaluate every combination of samplers, schedules and NFE budgets; print a table and write "
        "OUT/compare.csv, OUT/compare.json (every grid, read it with gdj.from_json) and OUT/error_vs_nfe.png "
        "(with the DDIM leading-term prediction when it applies). A KL that grows with the NFE is explained "
        "(which modes, which step). Example: gaussdiff compare --samplers ddim,heun --schedules edm,tangent "
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


def run(args) -> int:
    out = output_dir(args.out, "compare.csv, compare.json and error_vs_nfe.png")
    samplers, schedules, nfes = name_list(args.samplers), name_list(args.schedules), int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, sampler_eta(name, args.eta))
    cases, notes = [], []
    with progress(args, "compare", total=len(samplers)) as bar:
        for sampler_name in samplers:
            bar.update(text=sampler_name)
            problem = problem_for(args, args.spectrum, sampler_name)
            mine = _cases(args, problem, schedules, nfes)
            cases += mine
            notes += problem.notes + _growth_notes(args, problem, mine)
            bar.update(advance=1)
    _print(args, cases)
    for note in dict.fromkeys(notes):
        say(args, f"note: {note}")
    _write(args, out, cases)
    say(args, f"wrote {out / 'compare.csv'}, {out / 'compare.json'} and {out / 'error_vs_nfe.png'}")
    return 0


def _cases(args, problem, schedule_names: list[str], nfes: list[int]) -> list[dict]:
    """Every (schedule, NFE) case of one sampler, scored in one sweep path call."""
    cases, schedules, grids = [], [], {}
    for name in schedule_names:
        try:
            schedule = problem.schedule(name)
        except CLIError as error:
            cases += [_case(problem, args, name, nfe, error=str(error)) for nfe in nfes]
            continue
        schedules.append(schedule)
        for nfe in nfes:
            try:
                steps = problem.steps(nfe)
                ts = problem.grid(schedule, name, args.grid, steps)
            except CLIError as error:
                cases.append(_case(problem, args, name, nfe, error=str(error)))
                continue
            grids[(len(schedules) - 1, steps)] = ts
            cases.append(_case(problem, args, name, nfe, steps=steps, p=len(schedules) - 1, ts=ts))
    results = evaluate(problem, schedules, grids)
    for case in cases:
        if case["ts"] is None:
            continue
        result = results[(case["p"], case["steps"])]
        case["schedule_obj"] = schedules[case["p"]]
        case["nfe_used"] = int(problem.sampler.num_evaluations(case["schedule_obj"], case["ts"]))
        if isinstance(result, CLIError):
            case["error"] = str(result)
        else:
            case.update(kl=result["kl"], w2=result["w2"])
    return cases


def _case(problem, args, name, nfe, *, steps=None, p=None, ts=None, error="") -> dict:
    return {
        "sampler": problem.sampler_name,
        "schedule": name,
        "grid": args.grid,
        "nfe": nfe,
        "steps": steps,
        "nfe_used": None,
        "kl": None,
        "w2": None,
        "error": error,
        "p": p,
        "ts": ts,
        "schedule_obj": None,
        "problem": problem,
    }


def _growth_notes(args, problem, cases: list[dict]) -> list[str]:
    """One note per (sampler, schedule) whose KL grows with the NFE: where the larger KL comes from."""
    notes = []
    for name in dict.fromkeys(c["schedule"] for c in cases):
        series = sorted((c for c in cases if c["schedule"] == name and c["kl"] is not None), key=lambda c: c["nfe"])
        for a, b in itertools.pairwise(series):
            if b["kl"] > 1.01 * a["kl"]:
                why = kl_breakdown(problem, b["schedule_obj"], b["ts"])
                notes.append(
                    f"the KL of {problem.sampler_name} on {name} grows from NFE {a['nfe']} to {b['nfe']} "
                    f"({a['kl']:.4g} -> {b['kl']:.4g}; W2 {fmt(a['w2'], 4)} -> {fmt(b['w2'], 4)}). At NFE {b['nfe']}, {why}."
                )
                break
    return notes


def _print(args, cases):
    rows = [
        [
            c["sampler"],
            c["schedule"],
            str(c["nfe"]),
            str(c["steps"] or "-"),
            fmt(c["kl"]),
            fmt(c["w2"]),
            c["error"][:70],
        ]
        for c in cases
    ]
    target = args.target or ("truncated" if args.sigma_min > 0 else "data")
    print_table(
        f"{args.spectrum}: KL and W2 to {'p_sigma_min' if target == 'truncated' else 'p_0'}",
        ["sampler", "schedule", "NFE", "steps", "KL", "W2", "error"],
        rows,
        quiet=args.quiet,
    )


def _write(args, out, cases):
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for c in cases:
            writer.writerow({k: ("" if c[k] is None else c[k]) for k in COLUMNS})
    entries = []
    for c in cases:
        grid = grid_fields(c["ts"], c["schedule_obj"]) if c["ts"] is not None else {"times": None, "schedule": None}
        name = f"{c['sampler']}/{c['schedule']}/nfe{c['nfe']}"
        entries.append({"name": name, **{k: c[k] for k in COLUMNS if k != "schedule"}, **grid})
        entries[-1]["error"] = c["error"] or None
    doc = {"format": "gaussdiff_jax.grid", "version": 1, "command": "compare", "spectrum": args.spectrum}
    write_json(out / "compare.json", {**doc, "candidates": entries})
    _plot(args, out, cases)


def _plot(args, out, cases):
    from .._plot import plot_error_vs_nfe

    curves, predictions = {}, {}
    for key in dict.fromkeys((c["sampler"], c["schedule"]) for c in cases):
        points = [c for c in cases if (c["sampler"], c["schedule"]) == key and _positive(c[args.divergence])]
        if not points:
            continue
        label = f"{key[0]} / {key[1]}"
        xs = [c["nfe_used"] for c in points]
        curves[label] = (xs, [c[args.divergence] for c in points])
        prediction = _prediction(args, points)
        if prediction is not None:
            predictions[label] = (xs, prediction)
    plot_error_vs_nfe(
        curves,
        predictions=predictions or None,
        quantity=args.divergence.upper(),
        title=f"{args.spectrum}: {args.divergence.upper()} against NFE",
        path=out / "error_vs_nfe.png",
    )


def _positive(value) -> bool:
    return value is not None and value > 0 and math.isfinite(value)


def _prediction(args, points: list[dict]) -> list[float] | None:
    """Leading-term prediction for deterministic DDIM on uniform grids spanning [0, 1] (else None)."""
    problem, schedule = points[0]["problem"], points[0]["schedule_obj"]
    sampler = problem.sampler
    if not (isinstance(sampler, gdj().DDIM) and float(sampler.eta) == 0.0 and args.grid == "uniform"):
        return None
    if any(abs(c["ts"][0] - 1.0) > 1e-12 or abs(c["ts"][-1]) > 1e-12 for c in points):
        return None
    fn = gdj().kl_leading_term if args.divergence == "kl" else gdj().w2_leading_term
    positive = problem.lam[problem.lam > 0]  # zero modes contribute nothing against p_sigma_min > 0
    try:
        # The leading term is exactly C / N^2 (KL) or C / N (W2): one quadrature serves every N.
        one = float(fn(gdj().GaussianSource(positive), schedule, 1))
    except (ValueError, RuntimeError):  # singular schedules (infinite functionals) have no leading term
        return None
    power = 2 if args.divergence == "kl" else 1
    values = [one / c["steps"] ** power for c in points]
    return values if all(math.isfinite(v) for v in values) else None
