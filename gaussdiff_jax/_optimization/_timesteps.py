r"""Time steps for pretrained models: optimize a grid for a model schedule, a sampler and an NFE budget ([SPZ];
MATH.md section 4).

A model fixes the schedule (a diffusers table, EDM's $\sigma$ range, a flow-matching shift); a user fixes a
sampler and an NFE budget. What is left to choose is the grid. `score_grids` (in `_grid_scores`) evaluates the
standard grids by the closed-form KL and W2 of the sampler's output on a Gaussian model of the data;
`optimize_grid` optimizes the grid itself in continuous time by gradient descent (optax), starting from the
best baseline and never returning anything worse than it, and for a `Discrete` table rounds it to training
indices and improves it by an integer search, never returning anything worse than the best integer baseline.
`compare_grids` does both for several budgets and prints a table. `interpolation_cost` measures what carrying
an optimized grid to another step count log-linearly in $\sigma$ costs against re-optimizing.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

from .._core._divergence import kl, w2_squared
from .._core._errors import error_message
from .._core._law import sample_law
from .._core._source import GaussianSource
from .._interop import _grid
from .._sampler import AbstractSampler
from .._scale._compress import agrees, compression_for_loss
from .._schedule import AbstractSchedule, Discrete
from ._grid_scores import (
    GridComparison,
    GridScore,
    Metric,
    Stages,
    baseline_grids,
    grid_errors,
    metric_value,
    score_grid,
    scores_of,
)
from ._learnable import LearnableGrid
from ._optimize import optimize, optimize_on_compression

# A result counts as an improvement only when it beats the reference by this relative margin: the two are
# scored by differently-shaped compiled calls, which may differ in the last bits.
_MARGIN = 1e-9


class GridOptimization(NamedTuple):
    """What `optimize_grid` returns."""

    optimized: GridScore
    """The optimized continuous-time grid; when the optimization did not improve on the best baseline (in
    `metric`), that baseline's grid and scores (named `"optimized"`): never worse than `baselines`' best."""
    rounded: GridScore | None
    """For a `Discrete` table: the best grid on training indices found by the integer search; when it did not
    improve on the best integer baseline, that baseline's grid and scores. `None` otherwise."""
    baselines: list[GridScore]
    """The continuous-time baselines (and, for `Discrete`, their rounded versions, named `"<name>/int"`)."""
    start: str
    """The baseline the optimization started from (the best one in `metric`)."""
    losses: np.ndarray
    """The loss along the optimization (see `gdj.optimize`); empty when there was nothing to optimize."""
    improved: bool
    """Whether the continuous optimization improved on the best baseline (else `optimized` is that baseline)."""
    rounded_improved: bool | None
    """Whether the integer result improved on the best integer baseline; `None` without the integer step."""
    message: str
    """What happened, in plain words (printed to stderr when `progress=True`)."""


def _check_metric(metric: str):
    if metric not in ("kl", "w2"):
        raise ValueError(f"metric must be 'kl' or 'w2'; got {metric!r}.")


def _evaluation_floor(schedule, ts, options) -> float | None:
    """Lowest time the model may be evaluated at, when the grid ends on the clean point (else None)."""
    ts = np.asarray(ts)
    if not _grid.is_clean(schedule, float(ts[-1])):
        return None
    if options.get("t_floor") is not None:
        return float(options["t_floor"])
    if isinstance(schedule, Discrete):
        return 1.0 / schedule.num_train_timesteps  # training index 0
    return None


def _learnable_from(ts, floor, dtype):
    """A `LearnableGrid` whose times give the grid `ts`, and the clean end to append (`None`: no floor).

    Without a floor the grid's interior is free between its fixed ends. With a floor (clean end), the
    evaluation points live in `[floor, t_0]`: the learnable grid runs from `t_0` to `floor`, its last point is
    dropped (a slack segment lets the last evaluation point reach the floor) and the clean point appended
    (`_grid_times`). A start that already evaluates below the floor (published AYS levels on a short table)
    lowers the floor to its own last evaluation point: the optimizer goes no lower than the start did.
    """
    ts = np.asarray(ts, dtype=np.float64)
    if floor is None:
        logits = np.log(-np.diff(ts)).astype(dtype)
        return LearnableGrid(ts.shape[0] - 1, float(ts[0]), float(ts[-1]), logits=logits), None
    evals = ts[:-1]
    floor = min(floor, float(evals[-1]))
    slack = max(evals[-1] - floor, 1e-6 * (evals[0] - floor))
    steps = np.concatenate([-np.diff(evals), [slack]])
    grid = LearnableGrid(steps.shape[0], float(evals[0]), float(floor), logits=np.log(steps).astype(dtype))
    return grid, jnp.asarray(ts[-1:], dtype=dtype)


def _grid_times(grid: LearnableGrid, clean_end) -> Float[Array, " N+1"]:
    """The grid a `LearnableGrid` stands for (see `_learnable_from`)."""
    return grid.times() if clean_end is None else jnp.concatenate([grid.times()[:-1], clean_end])


def _grid_loss(grid: LearnableGrid, args) -> Float[Array, ""]:
    """KL or W2^2 of the grid: one module-level function, with the problem in `args`, so that `gdj.optimize`
    sees the same loss for every grid of every budget."""
    source, schedule, sampler, clean_end, (metric, init, target, direction) = args
    law = sample_law(source, schedule, sampler, _grid_times(grid, clean_end), init=init)
    if metric == "kl":
        return kl(source, law, target=target, direction=direction)
    return w2_squared(source, law, target=target)


def _better_of(reference: GridScore, times, name: str, metric: Metric, context, options) -> tuple[GridScore, bool]:
    """`times` scored as `name` if it beats `reference` by more than `_MARGIN` (both scored in one call, so
    alike), else `reference` renamed `name` with its own scores; and whether `times` won."""
    if times is not None and np.shape(times) == tuple(reference.times.shape):
        grids = [np.asarray(reference.times), np.asarray(times)]
        pair = scores_of([reference.name, name], grids, *context, **options)
        mine, theirs = metric_value(pair[1], metric), metric_value(pair[0], metric)
        if mine < theirs * (1 - _MARGIN):
            return pair[1], True
    return reference._replace(name=name), False


def _integer_polish(source, schedule, sampler, ts, metric, *, options, exact: float, max_rounds=200):
    """Coordinate search over training indices for KL or W2 (both ends fixed; see `integer_search`), from `ts`
    whose exact value is `exact`. Grids are ranked on the spectrum's quadrature compression when that
    reproduces `exact` to 1e-9 (as `select_timesteps` does); the caller scores the result on the full spectrum.

    **Returns:** `(grid, rounds, converged)`.
    """

    def value_on(src):
        def value(grids):
            k, w = grid_errors(src, schedule, sampler, grids, **options)
            return k if metric == "kl" else w

        return value

    value = value_on(source)
    compressed = compression_for_loss(source)
    if compressed is not None and agrees(value_on(compressed)(np.asarray(ts)[None]), [exact]):
        value = value_on(compressed)
    return integer_search(ts, schedule.num_train_timesteps, value, free_start=False, max_rounds=max_rounds)


def integer_search(ts, num_train_timesteps: int, value, *, free_start: bool = False, max_rounds: int = 200):
    """Coordinate search over training indices of a grid `ts` (a clean end's evaluation point is free).

    `value(grids)` scores a stack of grids `(G, N+1)` (lower is better). Each round tries moving every free
    point by +-1, +-2, +-4, ... indices (as far as its neighbours allow), then also the combinations of every
    point's best improving move (all of them, and those of every other point), and takes the best of all these
    grids if it improves; it stops when no single move improves. The +-1, +-2 moves are the previous search's
    whole neighbourhood, so its local optima are local optima here too; the longer moves and the combined moves
    cross a 1000-index table in tens of rounds where unit moves one point at a time took hundreds. With
    `free_start` the first evaluation point may move too (down from the last training index), e.g. to skip the
    highest noise levels where a network is poor. All grids of a round are scored in batched calls.

    **Returns:** `(grid, rounds, converged)`.
    """
    T = int(num_train_timesteps)
    ts = np.asarray(ts, dtype=np.float64)
    clean = ts[-1] == 0.0
    idx = np.round(ts[: -1 if clean else None] * T - 1).astype(np.int64)

    def to_grids(indices):  # (G, n) -> (G, N+1)
        g = (indices + 1.0) / T
        return np.concatenate([g, np.zeros((g.shape[0], 1))], axis=1) if clean else g

    first = 0 if free_start else 1
    last = idx.shape[0] - (0 if clean else 1)  # movable: first .. last-1
    moves = 2 ** np.arange(max(int(T).bit_length(), 1))
    moves = np.concatenate([-moves, moves])

    current = float(value(to_grids(idx[None]))[0])
    for rounds in range(max_rounds):
        point = np.repeat(np.arange(first, last), moves.shape[0])
        target = idx[point] + np.tile(moves, max(last - first, 0))
        lower = np.append(idx, -1)[point + 1]
        upper = np.concatenate([[T], idx])[point]  # the point before (or T for the first point)
        valid = (lower < target) & (target < upper)
        point, target = point[valid], target[valid]
        if point.shape[0] == 0:
            return to_grids(idx[None])[0], rounds, True
        candidates = np.repeat(idx[None], point.shape[0], axis=0)
        candidates[np.arange(point.shape[0]), point] = target
        vals = value(to_grids(candidates))
        if not vals.min() < current:
            return to_grids(idx[None])[0], rounds, True
        combined = _combined_moves(idx, point, target, vals, current)
        if combined.shape[0]:
            candidates = np.concatenate([candidates, combined])
            vals = np.concatenate([vals, value(to_grids(combined))])
        best = int(np.argmin(vals))
        idx, current = candidates[best], float(vals[best])
    return to_grids(idx[None])[0], max_rounds, False


def _combined_moves(idx, point, target, vals, current):
    """Grids applying every improving point's best move at once, and those of every other such point
    (`(C, n)`, only those still strictly decreasing)."""
    best = {}
    for p, t, v in zip(point, target, vals, strict=True):
        if v < current and (p not in best or v < best[p][1]):
            best[int(p)] = (int(t), float(v))
    chosen = sorted(best)
    out = []
    for subset in (chosen, chosen[0::2], chosen[1::2]):
        if len(subset) > 1:
            grid = idx.copy()
            grid[subset] = [best[p][0] for p in subset]
            if np.all(np.diff(grid) < 0) and grid[-1] >= 0:
                out.append(grid)
    return np.array(out, dtype=idx.dtype).reshape(len(out), idx.shape[0])


def optimize_grid(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    nfe: int,
    *,
    metric: Metric = "w2",
    steps: int = 300,
    optimizer: optax.GradientTransformation | None = None,
    names: list[str] | None = None,
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
    progress: bool = False,
    integer: bool | None = None,
    **grid_options,
) -> GridOptimization:
    r"""Optimize the time grid for a model schedule, a sampler and an NFE budget; never worse than the baselines.

    1. Score the baselines (`score_grids`, continuous times) and start from the best one in `metric`.
    2. Optimize the interior points in continuous time (`LearnableGrid`, endpoints fixed, `gdj.optimize`
       with `optimizer`, default Adam with a cosine-decayed step 0.05 on the step-length logits). If the
       result does not beat the start (a stiff loss, a too-large step, a loss that became NaN), the start's
       grid is returned, with `improved=False` and a `message` that says so.
    3. For a `Discrete` table: round to training indices (collisions spread, `round_to_indices`), and improve
       by an integer search (moves of one point by +-1, +-2, +-4, ... indices and combinations of the best
       ones, the best improving grid per round, every round scored in batched calls) started from the better
       of the rounded optimum and the best rounded baseline. If the result does not beat the best rounded
       baseline, that baseline is returned (`rounded_improved=False`).

    Both optimizing stages evaluate the loss on the spectrum's quadrature compression (`gdj.compress`: 204 weighted
    modes for CIFAR-10's 3072, ~15x less work) when it reproduces the exact value at the stage's start to 1e-9
    relative, else on every mode; every reported score is computed on every mode.

    Arguments as in `score_grids`; `metric` is `"w2"` (the default, optimized as $W_2^2$) or `"kl"` (the `direction`
    given). $W_2$ is the default because it is the closed-form objective that predicted the measured quality of
    trained networks' samples (`benchmarks/real_models/`: Spearman correlation with the Frechet distance +0.82 on
    average, where the KL's was -0.65; the KL is dominated by near-null modes);
    `integer=False` skips step 3 (default: done for `Discrete` tables); `progress=True` shows the optimizer's
    progress bar and prints what each stage found on stderr.
    """
    _check_metric(metric)
    names = _grid.available(schedule) if names is None else list(names)
    context = (source, schedule, sampler)
    options = {"init": init, "target": target, "direction": direction, "kl": metric == "kl"}
    base, int_base = _scored_baselines(
        context, options, nfe, names, isinstance(schedule, Discrete) and integer is not False, grid_options
    )
    note = (lambda text: print(text, file=sys.stderr)) if progress else (lambda text: None)
    return _optimize_from(
        base,
        int_base,
        context,
        options,
        metric=metric,
        steps=steps,
        optimizer=optimizer,
        grid_options=grid_options,
        show_steps=progress,
        note=note,
    )


def _scored_baselines(context, options, nfe, names, integer: bool, grid_options):
    """The named baseline grids for the budget scored in continuous time, and (`integer`) rounded to the table's
    training indices (named `"<name>/int"`; else `None`)."""
    schedule, sampler = context[1], context[2]
    base = scores_of(names, baseline_grids(schedule, sampler, nfe, names, False, grid_options), *context, **options)
    if not integer:
        return base, None
    grids = baseline_grids(schedule, sampler, nfe, names, True, grid_options)
    return base, scores_of([n + "/int" for n in names], grids, *context, **options)


def _optimize_from(base, int_base, context, options, *, metric, steps, optimizer, grid_options, show_steps, note):
    """Steps 2 and 3 of `optimize_grid`, from scored baselines (shared by `compare_grids` across metrics)."""
    source, schedule, _ = context
    start = min(base, key=lambda s: metric_value(s, metric))
    losses, candidate, failure = np.zeros(0), None, None
    if start.times.shape[0] > 2:  # one step: t_0 and t_1 are both fixed
        floor = _evaluation_floor(schedule, start.times, grid_options)
        grid, clean_end = _learnable_from(start.times, floor, source.eigenvalues.dtype)
        opt = optax.adam(optax.cosine_decay_schedule(0.05, max(int(steps), 1))) if optimizer is None else optimizer
        args = (*context, clean_end, (metric, options["init"], options["target"], options["direction"]))
        start_loss = metric_value(start, metric) ** (2 if metric == "w2" else 1)
        try:
            result = _optimize_grid_loss(grid, opt, steps, args, start_loss, show_steps)
            losses, candidate = result.losses, np.asarray(_grid_times(result.module, clean_end))
        except (FloatingPointError, RuntimeError) as error:
            # The loss became NaN / inf, or a step left the valid grids (a package check failed inside jit):
            # keep the start. Anything else is a bug and propagates.
            failure = str(error) if isinstance(error, FloatingPointError) else error_message(error)
            if failure is None:
                raise
    optimized, improved = _better_of(start, candidate, "optimized", metric, context, options)
    message = _continuous_message(start, optimized, improved, metric, failure, losses)
    note(message)
    rounded = rounded_improved = None
    baselines = list(base)
    if int_base is not None:
        T = schedule.num_train_timesteps
        if optimized.times.shape[0] - 1 > T:
            raise ValueError(
                f"{optimized.times.shape[0] - 1} steps exceed the table length T = {T}: no integer grid exists."
            )
        baselines += int_base
        best_int = min(int_base, key=lambda s: metric_value(s, metric))
        first = _grid.round_to_indices(optimized.times, schedule, duplicates="spread")
        seed, _ = _better_of(best_int, first, "optimized/int", metric, context, options)
        polished, rounds, converged = _integer_polish(
            *context, seed.times, metric, options=options, exact=metric_value(seed, metric)
        )
        rounded, rounded_improved = _better_of(best_int, polished, "optimized/int", metric, context, options)
        line = _integer_message(best_int, rounded, rounded_improved, metric, rounds, converged)
        note(line)
        message = f"{message} {line}"
    return GridOptimization(optimized, rounded, baselines, start.name, losses, improved, rounded_improved, message)


def _optimize_grid_loss(grid, optimizer, steps, args, start_loss, progress):
    """`gdj.optimize` of `_grid_loss` from `grid`, on the spectrum's checked compression (`optimize_on_compression`);
    the optimized grid is scored on the full spectrum afterwards either way (`_better_of`)."""

    def run(source):
        return optimize(_grid_loss, grid, optimizer=optimizer, steps=steps, progress=progress, args=(source, *args[1:]))

    return optimize_on_compression(run, args[0], start_loss)[0]


def _comparison_rows(res: GridOptimization, int_base, metric: str) -> list[GridScore]:
    """`compare_grids`' rows for one metric: the best integer baseline, the optimized grid and its rounding."""
    rows = []
    if int_base is not None:
        rows.append(min(int_base, key=lambda b: metric_value(b, metric))._replace(name=f"best/int[{metric}]"))
    rows.append(res.optimized._replace(name=f"optimized[{metric}]"))
    if res.rounded is not None:
        rows.append(res.rounded._replace(name=f"optimized[{metric}]/int"))
    return rows


def _continuous_message(start, optimized, improved, metric, failure, losses) -> str:
    v0, v1 = metric_value(start, metric), metric_value(optimized, metric)
    if improved:
        return f"Optimized grid: {metric} {v1:.6g}, improving on the best baseline {start.name!r} ({v0:.6g})."
    if start.times.shape[0] <= 2:
        return f"One step: nothing to optimize (both ends are fixed); returning the baseline {start.name!r}."
    if failure is not None:
        why = f"the optimization failed ({failure.splitlines()[0]})"
    else:
        reached = losses.min() if losses.shape[0] else float("nan")
        reached = np.sqrt(reached) if metric == "w2" else reached
        why = f"the optimization did not improve on it (best {metric} reached {reached:.6g})"
    return f"Best baseline {start.name!r} ({metric} {v0:.6g}) kept: {why}; returning the baseline's grid."


def _integer_message(best_int, rounded, improved, metric, rounds, converged) -> str:
    v0, v1 = metric_value(best_int, metric), metric_value(rounded, metric)
    search = f"integer search: {rounds} rounds" + ("" if converged else " (stopped at the round limit)")
    if improved:
        return (
            f"Integer grid: {metric} {v1:.6g}, improving on the best integer baseline {best_int.name!r} "
            f"({v0:.6g}; {search})."
        )
    return f"Best integer baseline {best_int.name!r} ({metric} {v0:.6g}) kept: the {search} did not improve on it."


def interpolation_cost(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    ts: Float[ArrayLike, " N+1"],
    nfe: int,
    *,
    metric: Metric = "w2",
    steps: int = 300,
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
    **grid_options,
) -> dict:
    r"""What carrying the optimized grid `ts` to another budget `nfe` costs, against re-optimizing there.

    The grid is resampled log-linearly in $\sigma$ (`gdj.grids.interpolate`, the AYS practice) to
    `steps_for_nfe(sampler, nfe)` steps, and compared with `optimize_grid` at that budget (continuous times).

    **Returns:** a dict with `"interpolated"` and `"reoptimized"` (`GridScore`s), and `"ratio"`: the
    interpolated grid's `metric` over the re-optimized one's (>= 1 means interpolation costs that factor).
    """
    clean = _grid.is_clean(schedule, float(np.asarray(ts)[-1]))
    n = _grid.steps_for_nfe(sampler, nfe, ends_clean=clean)
    moved = _grid.interpolate(ts, schedule, n)
    inter = score_grid(
        source, schedule, sampler, moved, name="interpolated", init=init, target=target, direction=direction
    )
    again = optimize_grid(
        source,
        schedule,
        sampler,
        nfe,
        metric=metric,
        steps=steps,
        init=init,
        target=target,
        direction=direction,
        integer=False,
        **grid_options,
    ).optimized
    return {
        "interpolated": inter,
        "reoptimized": again,
        "ratio": metric_value(inter, metric) / metric_value(again, metric),
    }


def compare_grids(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    nfes: list[int],
    *,
    metrics: tuple[str, ...] = ("w2",),
    steps: int = 300,
    names: list[str] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    integer: bool | None = None,
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
    progress: bool = False,
    **grid_options,
) -> GridComparison:
    r"""`optimize_grid` at each budget in `nfes` and for each metric, as a table.

    Rows: the continuous baselines; for a `Discrete` table the best integer baseline per metric
    (`"best/int[kl]"`); then `"optimized[kl]"` (and `"optimized[kl]/int"`), and the same for each metric.
    The baselines of a budget are scored once (in one batched call per grid length) for all metrics.
    Options as in `optimize_grid`; `progress=True` shows one progress line (rich, on stderr) over the
    budgets and metrics.

    **Returns:** a `GridComparison`: the dict `{nfe: rows}` (for `format_table`), which prints as a Markdown
    table (`str(result)`, `result.table()`); `result.notes` says where an optimization kept a baseline.

    The README's pretrained-model table (CIFAR-10 spectrum, diffusers' `linear` table, DDIM):

    ```python
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import gaussdiff_jax as gdj

    # Floor the eigenvalues at the dequantization noise of 8-bit pixels in [-1, 1] (uniform, step 2/255): the 9
    # zero eigenvalues of the bundled spectrum would make the KL to the data infinite.
    floor = (2 / 255) ** 2 / 12
    src = gdj.GaussianSource(np.maximum(gdj.spectra.load("cifar10"), floor))
    table = gdj.compare_grids(
        src, gdj.Discrete.from_diffusers("linear"), gdj.DDIM(), [5, 10, 20, 50],
        metrics=("kl", "w2"), steps=500, progress=True,
    )
    print(table)  # Markdown: one row per grid, one column per NFE, cells "KL / W2"
    ```
    """
    for metric in metrics:
        _check_metric(metric)
    context = (source, schedule, sampler)
    options = {"init": init, "target": target, "direction": direction, "kl": "kl" in metrics}
    names = _grid.available(schedule) if names is None else list(names)
    discrete = isinstance(schedule, Discrete) and integer is not False
    settings = {"steps": steps, "optimizer": optimizer, "grid_options": grid_options, "show_steps": False}
    settings["note"] = lambda text: None
    out, notes = {}, []
    with Stages(progress, len(nfes) * (1 + len(metrics)), "compare_grids") as bar:
        for nfe in nfes:
            bar.stage(f"NFE {nfe}: scoring {len(names) * (1 + discrete)} baselines")
            base, int_base = _scored_baselines(context, options, nfe, names, discrete, grid_options)
            bar.advance()
            extra = []
            for metric in metrics:
                bar.stage(f"NFE {nfe}: optimizing {metric} ({steps} steps), integer search")
                res = _optimize_from(base, int_base, context, options, metric=metric, **settings)
                if not res.improved or res.rounded_improved is False:
                    notes.append(f"NFE {nfe}, {metric}: {res.message}")
                    bar.note(notes[-1])
                extra += _comparison_rows(res, int_base, metric)
                bar.advance()
            out[int(nfe)] = list(base) + extra
    return GridComparison(out, notes)
