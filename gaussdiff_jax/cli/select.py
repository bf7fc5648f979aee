"""`gaussdiff select`: recommended integer time steps for a model trained on a diffusers table.

Without `--model` the recommendation is closed-form: the steps whose exact output law on the Gaussian model of
the data is closest to the data in W2 (`gdj.select_timesteps`), against every diffusers spacing and the
published grids. With `--model module:function` and `--data held_out.npy` the network's own error is measured
and propagated, and the steps may start below the last training step. Prints the table and where the error
comes from (which modes, how much below a floor), and writes OUT/result.json, OUT/timesteps.png and
OUT/contributions.png.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._interop._export import grid_fields
from .._interop._grid import _from_indices
from ._shared import (
    CLIError,
    add_output_options,
    add_subcommand,
    fmt,
    gdj,
    load_spectrum,
    make_sampler,
    one_line,
    output_dir,
    phase,
    print_table,
    progress,
    say,
    spectrum_help,
    spectrum_info,
    write_json,
)

TABLES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# 8-bit images in [-1, 1]: the dequantization noise (2/255)^2 / 12 is the smallest variance the data resolve.
DEFAULT_FLOOR = (2 / 255) ** 2 / 12


def add_parser(sub, epilog: str):
    p = add_subcommand(
        sub,
        "select",
        help="recommended time steps for a model trained on a diffusers table (closed form or model-aware)",
        description="Recommend the integer time steps (one per network evaluation) of a sampler for a model "
        "trained on a diffusers beta table: closed-form (the exact W2 between the sampler's output law on a "
        "Gaussian model of the data and the data, which is what predicts trained networks' sample quality; "
        "KL does not), or model-aware with --model and --data (the network's measured error propagated "
        "through the sampler). Compares with every diffusers spacing and the published AYS grids; prints "
        "which modes carry the error. Writes OUT/result.json, OUT/timesteps.png, OUT/contributions.png.\n\n"
        "Examples:\n  gaussdiff select --spectrum cifar10 --nfe 10 --out quickstart\n"
        "  gaussdiff select --model my_pkg.nets:denoiser --data held_out.npy --parameterization eps --nfe 10",
        epilog=epilog,
    )
    g = p.add_argument_group("model")
    g.add_argument("--table", choices=TABLES, default="linear", help="the model's diffusers beta_schedule "
                   "(1000 training steps; default %(default)s)")
    g.add_argument("--sampler", default="ddim", metavar="NAME", help="sampler (default %(default)s)")
    g.add_argument("--nfe", type=int, default=10, help="network evaluations (default %(default)s)")
    g.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                   help="the network: a JAX callable f(x, t) -> prediction, x (n, d) noised data, t (n,) int32 steps")
    g.add_argument("--data", default=None, metavar="FILE.npy", help="held-out data (n, d) for --model")
    g.add_argument("--parameterization", choices=("eps", "x0", "v"), default="eps",
                   help="what --model predicts (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="noise seed of the error measurement (default %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--spectrum", default="cifar10", metavar="NAME|FILE",
                   help=f"without --model: {spectrum_help()} (default: %(default)s)")
    g.add_argument("--floor", type=float, default=DEFAULT_FLOOR, metavar="LAMBDA",
                   help="modes below LAMBDA are reported apart (8-bit dequantization noise by default: %(default).3g)")
    add_output_options(p)
    p.add_argument("--out", default="gaussdiff-select", metavar="DIR",
                   help="output folder (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.perf_counter()
    with phase("setup"):
        out = output_dir(args.out, "result.json, timesteps.png and contributions.png")
        if args.nfe < 1:
            raise CLIError(f"--nfe must be a positive integer; got {args.nfe}")
        schedule = gdj().Discrete.from_diffusers(args.table)
        sampler_name, sampler = make_sampler(args.sampler)
        denoiser, data = _model_and_data(args)
        source, label = (None, "the fit to --data") if denoiser is not None else _source(args)
    with phase("select"), progress(args, "select"):
        try:
            result = gdj().select_timesteps(
                schedule, sampler, args.nfe, source=source, denoiser=denoiser, data=data,
                parameterization=args.parameterization, key=jax.random.key(args.seed),
            )  # fmt: skip
        except ValueError as error:
            raise CLIError(one_line(error)) from None
    source = source if source is not None else gdj().fit_gaussian(data).source()
    with phase("contributions"):
        contributions = _contributions(source, schedule, sampler, result.ts, args.floor)
    _print(args, result, sampler_name, label, contributions)
    with phase("plots"):
        _plot(schedule, result, source, contributions, out)
    doc = _document(args, schedule, sampler_name, result, contributions, source)
    doc["seconds"] = time.perf_counter() - start
    write_json(out / "result.json", doc)
    say(args, f"wrote {out / 'result.json'}, {out / 'timesteps.png'} and {out / 'contributions.png'} "
        f"({doc['seconds']:.1f} s)")  # fmt: skip
    return 0


def _source(args):
    label, lam = load_spectrum(args.spectrum)
    return gdj().GaussianSource(jnp.asarray(lam)), label


def _model_and_data(args):
    if args.model is None:
        if args.data is not None:
            raise CLIError("--data is the held-out data of --model; give --model too (or leave both out)")
        return None, None
    module_name, _, attr = args.model.partition(":")
    if not module_name or not attr:
        raise CLIError(f"--model must be MODULE:FUNCTION (e.g. my_pkg.nets:denoiser); got {args.model!r}")
    if args.data is None:
        raise CLIError("--model needs --data FILE.npy: held-out samples (n, d) to measure its error on")
    sys.path.insert(0, str(Path.cwd()))
    try:
        denoiser = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise CLIError(f"--model {args.model}: {one_line(error)}") from None
    try:
        data = np.load(args.data)
    except (OSError, ValueError) as error:
        raise CLIError(f"--data {args.data}: {one_line(error)}") from None
    if data.ndim != 2:
        raise CLIError(f"--data must hold an (n, d) array of samples; {args.data} has shape {data.shape}")
    return denoiser, data


@eqx.filter_jit
def _per_mode_errors(source, schedule, sampler, ts, floor):
    """Per-mode W2^2 to the data and KL(data || sample) on the spectrum floored at `floor` (one compiled call)."""
    g = gdj()
    w2sq = g.w2_squared(source, g.sample_law(source, schedule, sampler, ts), reduce=False)
    floored = g.GaussianSource(jnp.maximum(source.eigenvalues, floor), mean=source.mean)
    return w2sq, g.kl(floored, g.sample_law(floored, schedule, sampler, ts), reduce=False)


def _contributions(source, schedule, sampler, ts, floor: float) -> dict:
    """Per-mode W2^2 and KL(data || sample) of the recommendation, and how much comes from modes below `floor`."""
    lam = np.asarray(source.eigenvalues)
    w2sq, kl = (np.asarray(x) for x in _per_mode_errors(source, schedule, sampler, ts, floor))
    below = lam < floor
    order = np.argsort(-w2sq)
    n90 = int(np.searchsorted(np.cumsum(w2sq[order]) / max(w2sq.sum(), 1e-300), 0.9)) + 1
    return {
        "eigenvalues": lam, "w2_squared": w2sq, "kl": kl, "floor": floor,
        "modes_below_floor": int(below.sum()),
        "w2_share_below_floor": float(w2sq[below].sum() / w2sq.sum()) if w2sq.sum() > 0 else 0.0,
        "kl_share_below_floor": float(kl[below].sum() / kl.sum()) if kl.sum() > 0 else 0.0,
        "w2_modes_for_90": n90, "w2_smallest_eigenvalue_in_90": float(lam[order[:n90]].min()),
    }  # fmt: skip


def _print(args, result, sampler_name, label, c):
    model_aware = result.profile is not None
    rows = []
    for cand in result.candidates:
        head = ", ".join(str(int(i)) for i in cand.timesteps[:5]) + (", ..." if len(cand.timesteps) > 5 else "")
        numbers = [fmt(cand.predicted, 5), fmt(cand.w2, 5), fmt(cand.error, 4)] if model_aware else [fmt(cand.w2, 5)]
        rows.append([cand.name, *numbers, head])
    columns = ["predicted", "W2 (exact denoiser)", "network error"] if model_aware else ["W2 to the data"]
    print_table(
        f"{sampler_name}, {args.nfe} evaluations, diffusers '{args.table}' table, data: {label} "
        f"(objective: {result.objective}, lower is better)",
        ["grid", *columns, "first steps"], rows, quiet=args.quiet,
    )
    steps = ", ".join(str(int(i)) for i in result.timesteps)
    say(args, f"recommended timesteps: [{steps}]")
    say(args, f"  diffusers: scheduler.set_timesteps(timesteps=[{steps}])")
    say(args, f"where the error is: 90% of W2^2 comes from the {c['w2_modes_for_90']} largest modes (eigenvalues >= "
        f"{c['w2_smallest_eigenvalue_in_90']:.3g}); the {c['modes_below_floor']} modes below the floor "
        f"{c['floor']:.3g} carry {100 * c['w2_share_below_floor']:.2g}% of W2^2 but "
        f"{100 * c['kl_share_below_floor']:.3g}% of the KL (which is why the KL is not the objective)")  # fmt: skip


def _grid_of(cand, schedule):
    """The continuous grid (evaluation times, then the clean end) of a candidate's training steps."""
    return np.asarray(_from_indices(cand.timesteps, schedule.num_train_timesteps, "select"))


def _plot(schedule, result, source, c, out: Path):
    g = gdj()
    shown = {cand.name: (schedule, _grid_of(cand, schedule)) for cand in result.candidates}
    g.plot_schedules(shown, highlight=result.candidates[0].name, path=out / "timesteps.png",
                     title=f"noise levels of the recommended steps ({result.objective}) and the alternatives")
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing left open

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    g.plot_error_spectrum(c["eigenvalues"], {"W2^2": c["w2_squared"], f"KL, floored at {c['floor']:.2g}": c["kl"]},
                          quantity="per-mode error", cumulative=True, ax=ax,
                          title="where the recommendation's error comes from (running share from the largest mode)")
    ax.axvline(c["floor"], color="0.4", linestyle=":", linewidth=1)
    ax.annotate("floor", (c["floor"], 0.02), xytext=(4, 0), textcoords="offset points", fontsize=8, color="0.3")
    fig.savefig(out / "contributions.png", dpi=120)  # fmt: skip


def _document(args, schedule, sampler_name, result, c, source) -> dict:
    def entry(cand):
        ts = _grid_of(cand, schedule)
        return {"name": cand.name, **grid_fields(ts, schedule), "timesteps": cand.timesteps.tolist(),
                "predicted": cand.predicted, "w2": cand.w2, "network_error": cand.error}  # fmt: skip

    return {
        "command": "select", "sampler": sampler_name, "table": args.table, "nfe": args.nfe,
        "objective": result.objective, "timesteps": result.timesteps.tolist(),
        **grid_fields(np.asarray(result.ts), schedule),
        "spectrum": None if args.model else spectrum_info(args.spectrum, np.asarray(source.eigenvalues), None),
        "model": args.model, "parameterization": args.parameterization if args.model else None,
        "contributions": {k: v for k, v in c.items() if not isinstance(v, np.ndarray)},
        "candidates": [entry(cand) for cand in result.candidates],
    }  # fmt: skip
