"""`gaussdiff sweep`: a large product of cases to a resumable JSON-lines file."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ._problem import (
    Problem,
    problem_for,
)
from ._shared import (
    CLIError,
    add_problem_options,
    add_subcommand,
    finite,
    int_list,
    load_spectrum,
    make_sampler,
    name_list,
    say,
)

# ----------------------------------------------------------------------------------------------
# sweep


_SWEEP_KEYS = (
    "spectrum",
    "sampler",
    "schedule",
    "grid",
    "nfe",
    "init",
    "target",
    "direction",
    "sigma_min",
    "sigma_max",
    "floor",
    "eta",
)


def _sweep_key(record: dict) -> str:
    return json.dumps([record.get(k) for k in _SWEEP_KEYS])


def _read_done(path: Path) -> tuple[set[str], int]:
    """Keys of the records already in `path`; a torn last line (interrupted write) is cut off."""
    done: set[str] = set()
    if not path.exists():
        return done, 0
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done.add(_sweep_key(record))
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done, good_bytes


def run(args) -> int:
    spectra = name_list(args.spectra)
    samplers = name_list(args.samplers)
    schedules = name_list(args.schedules)
    grids = name_list(args.grids)
    nfes = int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, args.eta if name.lower() == "ddim" else 0.0)
    for name in spectra:
        load_spectrum(name)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, _ = _read_done(out)
    cases = [(sp, sa, sc, gr, n) for sp in spectra for sa in samplers for sc in schedules for gr in grids for n in nfes]
    todo = []
    for case in cases:
        sp, sa, sc, gr, n = case
        key_record = _case_record(args, *case)
        if _sweep_key(key_record) not in done:
            todo.append(case)
    say(args, f"sweep: {len(cases)} cases, {len(cases) - len(todo)} already in {out}, {len(todo)} to run")
    if args.limit is not None:
        todo = todo[: args.limit]
    # Cases sharing spectrum, sampler, schedule and grid are evaluated together (one compilation per group).
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for case in todo:
        groups.setdefault(case[:4], []).append(case[4])
    progress = None
    if not args.quiet and not args.no_progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[case]}"),
            TimeRemainingColumn(),
        )
        task = progress.add_task("sweep", total=len(todo), case="")
        progress.start()
    problems: dict[tuple[str, str], Problem] = {}
    try:
        with open(out, "a") as f:
            for (sp, sa, sc, gr), group_nfes in groups.items():
                t0 = time.perf_counter()
                records = [_case_record(args, sp, sa, sc, gr, n) for n in group_nfes]
                items, where = [], []
                try:
                    if (sp, sa) not in problems:
                        problems[(sp, sa)] = problem_for(args, sp, sa)
                    problem = problems[(sp, sa)]
                    schedule = problem.schedule(sc)
                    for i, n in enumerate(group_nfes):
                        try:
                            steps = problem.steps(n)
                            items.append((schedule, problem.grid(schedule, gr, steps)))
                            records[i]["steps"] = steps
                            where.append(i)
                        except CLIError as error:
                            records[i].update(steps=None, kl=None, w2=None, error=str(error))
                    for i, res in zip(where, problem.evaluate_many(items)):
                        if isinstance(res, CLIError):
                            records[i].update(kl=None, w2=None, error=str(res))
                        else:
                            kl = finite(res["kl"]) if res["kl"] is not None else None
                            records[i].update(kl=kl, w2=finite(res["w2"]), error=None)
                except CLIError as error:
                    for record in records:
                        record.update(steps=record.get("steps"), kl=None, w2=None, error=str(error))
                seconds = (time.perf_counter() - t0) / len(records)
                for record in records:
                    record["seconds"] = seconds
                    f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
                if progress is not None:
                    progress.update(task, advance=len(records), case=f"{sp} {sa} {sc} {gr}")
    finally:
        if progress is not None:
            progress.stop()
    say(args, f"wrote {len(todo)} records to {out}")
    return 0


def _case_record(args, spectrum, sampler, schedule, grid, nfe) -> dict:
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
        "sigma_max": finite(float(args.sigma_max)),
        "floor": args.floor,
        "eta": float(args.eta) if sampler.lower() == "ddim" else 0.0,
    }


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "sweep",
        help="large product of cases to a resumable JSON-lines file",
        description="Run every combination of spectra x samplers x schedules x grids x NFE and append one JSON "
        "record per case to OUT (JSON lines). Rerunning the same command skips the cases already in "
        "OUT, so an interrupted sweep resumes. Example: gaussdiff sweep --spectra cifar10 "
        "--samplers ddim,euler --schedules edm,linear --nfe 10,20,50 --out sweep.jsonl",
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
