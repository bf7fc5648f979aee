"""`gaussdiff sweep`: a large product of cases to a resumable JSON-lines file.

Cases of one (spectrum, sampler) pair go through one `gdj.sweep` path call (schedules x grids x step
counts); their records are appended and flushed after each call, so an interrupted sweep loses at most
one call. Rerunning the same command skips the cases whose records are in the file; failed cases are
removed from it and run again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ._evaluate import evaluate
from ._problem import problem_for
from ._shared import (
    CLIError,
    add_problem_options,
    add_subcommand,
    int_list,
    load_spectrum,
    make_sampler,
    name_list,
    output_file,
    progress,
    sampler_eta,
    say,
)

_KEYS = ("spectrum", "sampler", "schedule", "grid", "nfe", "init", "target", "direction", "sigma_min", "sigma_max",
         "floor", "eta")  # fmt: skip


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "sweep",
        help="large product of cases to a resumable JSON-lines file",
        description="Run every combination of spectra x samplers x schedules x grids x NFE and append one JSON "
        "record per case to OUT (JSON lines). Rerunning the same command skips the cases already in "
        "OUT, so an interrupted sweep resumes; cases that failed are run again. Example: gaussdiff sweep "
        "--spectra cifar10 --samplers ddim,euler --schedules edm,linear --nfe 10,20,50 --out sweep.jsonl",
        epilog=epilog,
    )
    add_problem_options(p, sampler=False, spectrum=False)
    g = p.add_argument_group("cases")
    g.add_argument(
        "--spectra",
        default="cifar10",
        metavar="NAMES|FILES",
        help="comma-separated spectra: bundled names or .npy files (default %(default)s)",
    )
    g.add_argument("--samplers", default="ddim", help="comma-separated sampler names (default %(default)s)")
    g.add_argument("--schedules", default="edm", help="comma-separated schedule names (default %(default)s)")
    g.add_argument("--grids", default="uniform", help="comma-separated grid names (default %(default)s)")
    g.add_argument("--nfe", default="10,20,50", help="comma-separated NFE budgets (default %(default)s)")
    g.add_argument("--limit", type=int, default=None, help="run at most this many new cases, then stop")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="results file (created or resumed)")
    p.set_defaults(func=run, divergence="kl")


def _key(record: dict) -> str:
    return json.dumps([record.get(k) for k in _KEYS])


def _resume(path: Path) -> tuple[set[str], int]:
    """Keys of the successful records in `path`, and how many failed ones were removed from it (with a
    torn last line, e.g. from an interrupted write), so that those cases run again."""
    if not path.exists():
        return set(), 0
    kept, done, failed, changed = [], set(), 0, False
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                changed = True
                break
            if not raw.endswith(b"\n"):
                changed = True
                break
            if record.get("error"):
                failed, changed = failed + 1, True
                continue
            kept.append(raw)
            done.add(_key(record))
    if changed:
        path.write_bytes(b"".join(kept))
    return done, failed


def _record(args, spectrum, sampler, schedule, grid, nfe) -> dict:
    return {
        "spectrum": spectrum,
        "sampler": sampler,
        "schedule": schedule,
        "grid": grid,
        "nfe": int(nfe),
        "init": args.init,
        "target": args.target or ("truncated" if args.sigma_min > 0 else "data"),
        "direction": args.direction,
        "sigma_min": float(args.sigma_min),
        "sigma_max": float(args.sigma_max) if args.sigma_max < float("inf") else "inf",
        "floor": args.floor,
        "eta": float(sampler_eta(sampler, args.eta)),
    }


def run(args) -> int:
    out = output_file(args.out, "sweep.jsonl")
    spectra, samplers = name_list(args.spectra), name_list(args.samplers)
    schedules, grids, nfes = name_list(args.schedules), name_list(args.grids), int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, sampler_eta(name, args.eta))
    for name in spectra:
        load_spectrum(name)
    done, failed = _resume(out)
    cases = [(sp, sa, sc, gr, n) for sp in spectra for sa in samplers for sc in schedules for gr in grids for n in nfes]
    todo = [case for case in cases if _key(_record(args, *case)) not in done]
    again = f" ({failed} of them failed before and run again)" if failed else ""
    say(args, f"sweep: {len(cases)} cases, {len(cases) - len(todo)} already in {out}, {len(todo)} to run{again}")
    if args.limit is not None:
        todo = todo[: args.limit]
    groups: dict[tuple[str, str], list[tuple]] = {}
    for case in todo:
        groups.setdefault(case[:2], []).append(case[2:])
    with open(out, "a") as f, progress(args, "sweep", total=len(todo)) as bar:
        for (spectrum, sampler), rest in groups.items():
            bar.update(text=f"{spectrum} {sampler}")
            f.writelines(
                json.dumps(record, allow_nan=False) + "\n" for record in _run_group(args, spectrum, sampler, rest)
            )
            f.flush()
            bar.update(advance=len(rest))
    say(args, f"wrote {len(todo)} records to {out}")
    return 0


def _run_group(args, spectrum: str, sampler: str, cases: list[tuple]) -> list[dict]:
    """The records of one (spectrum, sampler) pair: every (schedule, grid, NFE) case, one sweep call."""
    t0 = time.perf_counter()
    records = [_record(args, spectrum, sampler, *case) for case in cases]
    try:
        problem = problem_for(args, spectrum, sampler)
    except CLIError as error:
        return [{**r, "steps": None, "kl": None, "w2": None, "error": str(error), "seconds": 0.0} for r in records]
    entries, built, grids, where = {}, {}, {}, []
    for (schedule_name, grid, nfe), record in zip(cases, records):
        try:
            if schedule_name not in built:
                built[schedule_name] = problem.schedule(schedule_name)
            schedule = built[schedule_name]
            steps = problem.steps(nfe)
            p = entries.setdefault((schedule_name, grid), len(entries))
            grids[(p, steps)] = problem.grid(schedule, schedule_name, grid, steps)
            record["steps"] = steps
            where.append((record, (p, steps)))
        except CLIError as error:
            record.update(steps=record.get("steps"), kl=None, w2=None, error=str(error))
    schedules = [built[name] for name, _ in entries]
    results = evaluate(problem, schedules, grids)
    for record, key in where:
        result = results[key]
        if isinstance(result, CLIError):
            record.update(kl=None, w2=None, error=str(result))
        else:
            record.update(kl=result["kl"], w2=result["w2"], error=None)
    seconds = (time.perf_counter() - t0) / max(len(records), 1)
    return [{**r, "seconds": seconds} for r in records]
