r"""Time steps for pretrained models: score standard discretizations, optimize one ([SPZ]; MATH.md section 4).

A model fixes the schedule (a diffusers table, EDM's $\sigma$ range, a flow-matching shift); a user fixes a
sampler and an NFE budget. What is left to choose is the grid. `score_grids` evaluates the standard grids
(`gdj.grids.available()`) by the closed-form KL and W2 of the sampler's output on a Gaussian model of the
data; `optimize_grid` optimizes the grid itself in continuous time by gradient descent (optax), starting from
the best baseline so that it is never worse, and for a `Discrete` table rounds it to training indices,
re-scores it and repairs the rounding by an integer local search. `interpolation_cost` measures what carrying
an optimized grid to another step count log-linearly in $\sigma$ costs against re-optimizing.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

from .._interop import _grid
from .._core._divergence import kl, w2_squared
from .._core._law import sample_law
from ._learnable import LearnableGrid
from ._optimize import optimize
from .._sampler import AbstractSampler
from .._schedule import AbstractSchedule, Discrete
from .._core._source import GaussianSource

Metric = Literal["kl", "w2"]


class GridScore(NamedTuple):
    """One grid and its errors."""

    name: str
    """The grid's name (`gdj.grids.available()`, or `"optimized"`)."""
    times: Float[Array, " N+1"]
    """Forward times, decreasing."""
    nfe: int
    """Network evaluations the sampler spends on it (`gdj.grids.num_evaluations`)."""
    kl: float
    """KL(target ‖ sample) by default (see `score_grids`' `direction`), nats."""
    w2: float
    """Wasserstein-2 distance to the target."""
    integer: bool
    """Whether the grid's points with t > 0 are training indices of a `Discrete` table."""


class GridOptimization(NamedTuple):
    """What `optimize_grid` returns."""

    optimized: GridScore
    """The optimized continuous-time grid (never worse, in `metric`, than `baselines`' best)."""
    rounded: GridScore | None
    """For a `Discrete` table: the optimized grid on training indices, re-scored (never worse than the best integer
    baseline); `None` otherwise."""
    baselines: list[GridScore]
    """The continuous-time baselines (and, for `Discrete`, their rounded versions, named `"<name>/int"`)."""
    start: str
    """The baseline the optimization started from."""
    losses: np.ndarray
    """The loss along the optimization (see `gdj.optimize`)."""


def _metric_value(score: GridScore, metric: Metric) -> float:
    if metric == "kl":
        return score.kl
    if metric == "w2":
        return score.w2
    raise ValueError(f"metric must be 'kl' or 'w2'; got {metric!r}.")


@eqx.filter_jit
def _grid_errors(source, schedule, sampler, ts, init, target, direction):
    law = sample_law(source, schedule, sampler, ts, init=init)
    return kl(source, law, target=target, direction=direction), w2_squared(source, law, target=target)


def _errors(source, schedule, sampler, grids, *, init, target, direction):
    """KL and W2 of each grid of a stack `(G, N+1)`. One compiled function per grid length (not per G: the
    integer search scores a varying number of candidates)."""
    dtype = source.eigenvalues.dtype
    out = [_grid_errors(source, schedule, sampler, jnp.asarray(g, dtype=dtype), init, target, direction) for g in grids]
    k = np.array([float(a) for a, _ in out])
    w = np.array([float(b) for _, b in out])
    return k, np.sqrt(w)


def score_grid(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    ts: Float[ArrayLike, " N+1"],
    *,
    name: str = "grid",
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
) -> GridScore:
    """The `GridScore` of one grid (arguments as in `score_grids`)."""
    ts = jnp.asarray(ts, dtype=source.eigenvalues.dtype)
    k, w = _errors(source, schedule, sampler, ts[None], init=init, target=target, direction=direction)
    nfe = _grid.num_evaluations(sampler, ts, schedule)
    return GridScore(name, ts, nfe, float(k[0]), float(w[0]), _is_integer(ts, schedule))


def _is_integer(ts, schedule) -> bool:
    if not isinstance(schedule, Discrete):
        return False
    try:
        _grid.training_indices(ts, schedule)
    except ValueError:
        return False
    return True


def score_grids(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    nfe: int,
    *,
    names: list[str] | None = None,
    integer: bool | None = None,
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
    **grid_options,
) -> list[GridScore]:
    r"""Score standard grids for a model schedule, a sampler and an NFE budget by closed-form KL and W2.

    **Arguments:**

    - `source`: the Gaussian model of the data (e.g. `GaussianSource(gdj.spectra.load("cifar10"))`).
    - `schedule`: the model's schedule (`Discrete.from_diffusers("linear")`, `EDM(0.002, 80, 7)`, `RectifiedFlow(3.0)`).
    - `sampler`: e.g. `DDIM()`; the budget buys `gdj.grids.steps_for_nfe(sampler, nfe)` steps.
    - `names`: grids to score (default: every `gdj.grids.available(schedule)`).
    - `integer`: round every grid to training indices first (`round_to_indices(..., duplicates="spread")`), as
      timestep-based diffusers schedulers need. Default: `False` (continuous times; sigma-based schedulers run them).
    - `init`, `target`, `direction`: as in `sample_law` and `kl`. KL against a target with zero eigenvalues is
      infinite (an error): floor the spectrum, e.g. `jnp.maximum(eigenvalues, 1e-6)`.
    - `grid_options`: passed to every builder that accepts them (e.g. `t_floor`, `t_max`).

    **Returns:** one `GridScore` per grid, in `names` order. All grids of one budget share one compiled
    evaluation (compiled per grid length).
    """
    names = _grid.available(schedule) if names is None else list(names)
    if integer and not isinstance(schedule, Discrete):
        raise ValueError("integer=True needs a Discrete (training-table) schedule.")
    grids = []
    for name in names:
        ts = _grid.make(name, schedule, nfe, sampler=sampler, **_options_for(name, grid_options))
        if integer:
            ts = _grid.round_to_indices(ts, schedule, duplicates="spread")
        grids.append(np.asarray(ts))
    stack = np.stack(grids)
    k, w = _errors(source, schedule, sampler, stack, init=init, target=target, direction=direction)
    return [
        GridScore(
            n, jnp.asarray(g), _grid.num_evaluations(sampler, g, schedule), float(a), float(b), _is_integer(g, schedule)
        )
        for n, g, a, b in zip(names, grids, k, w, strict=True)
    ]


_ACCEPTS = {
    "uniform": ("t_max", "t_min"),
    "quadratic": ("t_max", "t_min", "t_floor", "power"),
    "log_snr": ("t_max", "t_min", "t_floor"),
    "karras": ("t_max", "t_min", "t_floor", "rho"),
    "leading": ("steps_offset",),
    "trailing": (),
    "linspace": (),
    "ays_sd15": ("transfer", "t_min"),
    "ays_sdxl": ("transfer", "t_min"),
}


def _options_for(name: str, options: dict) -> dict:
    allowed = _ACCEPTS.get(name, tuple(options))
    return {k: v for k, v in options.items() if k in allowed}


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
    """A `LearnableGrid` whose times give the grid `ts`, and the map from it back to a grid.

    Without a floor the grid's interior is free between its fixed ends. With a floor (clean end), the
    evaluation points live in `[floor, t_0]`: the learnable grid runs from `t_0` to `floor`, its last point is
    dropped (a slack segment lets the last evaluation point reach the floor) and the clean point appended.
    """
    ts = np.asarray(ts, dtype=np.float64)
    if floor is None:
        return LearnableGrid(ts.shape[0] - 1, float(ts[0]), float(ts[-1]), logits=np.log(-np.diff(ts)).astype(dtype)), (
            lambda g: g.times()
        )
    evals = ts[:-1]
    if evals[-1] < floor * (1 - 1e-9):
        raise ValueError(f"the starting grid evaluates below the floor t = {floor}.")
    slack = max(evals[-1] - floor, 1e-6 * (evals[0] - floor))
    steps = np.concatenate([-np.diff(evals), [slack]])
    grid = LearnableGrid(steps.shape[0], float(evals[0]), float(floor), logits=np.log(steps).astype(dtype))
    t_end = jnp.asarray(ts[-1:], dtype=dtype)
    return grid, lambda g: jnp.concatenate([g.times()[:-1], t_end])


def _loss(metric: Metric, source, schedule, sampler, init, target, direction):
    def loss(ts):
        law = sample_law(source, schedule, sampler, ts, init=init)
        if metric == "kl":
            return kl(source, law, target=target, direction=direction)
        return w2_squared(source, law, target=target)

    return loss


def _integer_polish(source, schedule, sampler, ts, metric, *, init, target, direction, max_rounds=200):
    """Best-improvement local search over training indices (moves of +-1, +-2 per point, ends fixed)."""
    T = schedule.num_train_timesteps
    ts = np.asarray(ts, dtype=np.float64)
    clean = ts[-1] == 0.0
    idx = np.round(ts[: -1 if clean else None] * T - 1).astype(np.int64)

    def to_grid(i):
        g = (i + 1.0) / T
        return np.concatenate([g, [0.0]]) if clean else g

    def value(grids):
        k, w = _errors(source, schedule, sampler, np.stack(grids), init=init, target=target, direction=direction)
        return k if metric == "kl" else w

    current = float(value([to_grid(idx)])[0])
    last = idx.shape[0] - (0 if clean else 1)  # movable: 1 .. last-1 (t_0 fixed; a non-clean end fixed)
    for _ in range(max_rounds):
        candidates = []
        for k in range(1, last):
            for move in (-2, -1, 1, 2):
                j = idx.copy()
                j[k] += move
                hi = j[k - 1]
                lo = j[k + 1] if k + 1 < j.shape[0] else -1
                if lo < j[k] < hi:
                    candidates.append(j)
        if not candidates:
            break
        vals = value([to_grid(c) for c in candidates])
        best = int(np.argmin(vals))
        if not vals[best] < current:
            break
        idx, current = candidates[best], float(vals[best])
    return jnp.asarray(to_grid(idx))


def optimize_grid(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    nfe: int,
    *,
    metric: Metric = "kl",
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
       with `optimizer`, default Adam with a cosine-decayed step 0.05 on the step-length logits); keep the
       result only if it improves on the start.
    3. For a `Discrete` table: round to training indices (collisions spread, `round_to_indices`), re-score,
       and improve by a best-improvement integer local search started from the better of the rounded optimum
       and the best rounded baseline, so the integer result is never worse than any integer baseline.

    Arguments as in `score_grids`; `metric` is `"kl"` (the `direction` given) or `"w2"` (optimized as $W_2^2$);
    `integer=False` skips step 3 (default: done for `Discrete` tables).
    """
    if metric not in ("kl", "w2"):
        raise ValueError(f"metric must be 'kl' or 'w2'; got {metric!r}.")
    base = score_grids(
        source, schedule, sampler, nfe, names=names, init=init, target=target, direction=direction, **grid_options
    )
    start = min(base, key=lambda s: _metric_value(s, metric))
    losses = np.zeros(0)
    best_times = start.times
    floor = _evaluation_floor(schedule, start.times, grid_options)
    if start.times.shape[0] > 2:  # one step: t_0 and t_1 are both fixed
        grid, extract = _learnable_from(start.times, floor, source.eigenvalues.dtype)
        opt = optax.adam(optax.cosine_decay_schedule(0.05, max(int(steps), 1))) if optimizer is None else optimizer
        inner = _loss(metric, source, schedule, sampler, init, target, direction)
        result = optimize(lambda g: inner(extract(g)), grid, optimizer=opt, steps=steps, progress=progress)
        losses = result.losses
        start_loss = start.kl if metric == "kl" else start.w2**2
        if losses.shape[0] and losses[-1] < start_loss:
            best_times = extract(result.module)
    optimized = score_grid(
        source, schedule, sampler, best_times, name="optimized", init=init, target=target, direction=direction
    )
    rounded = None
    baselines = list(base)
    if isinstance(schedule, Discrete) and integer is not False:
        T = schedule.num_train_timesteps
        if best_times.shape[0] - 1 > T:
            raise ValueError(
                f"{best_times.shape[0] - 1} steps exceed the table length T = {T}: no integer grid exists."
            )
        int_base = score_grids(
            source,
            schedule,
            sampler,
            nfe,
            names=[b.name for b in base],
            integer=True,
            init=init,
            target=target,
            direction=direction,
            **grid_options,
        )
        baselines += [b._replace(name=b.name + "/int") for b in int_base]
        first = score_grid(
            source,
            schedule,
            sampler,
            _grid.round_to_indices(best_times, schedule, duplicates="spread"),
            name="optimized/int",
            init=init,
            target=target,
            direction=direction,
        )
        best_int = min(int_base + [first], key=lambda s: _metric_value(s, metric))
        polished = _integer_polish(
            source, schedule, sampler, best_int.times, metric, init=init, target=target, direction=direction
        )
        rounded = score_grid(
            source, schedule, sampler, polished, name="optimized/int", init=init, target=target, direction=direction
        )
    return GridOptimization(optimized, rounded, baselines, start.name, losses)


def interpolation_cost(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    ts: Float[ArrayLike, " N+1"],
    nfe: int,
    *,
    metric: Metric = "kl",
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
        "ratio": _metric_value(inter, metric) / _metric_value(again, metric),
    }


def format_table(rows: dict[int, list[GridScore]], *, digits: int = 4) -> str:
    """A Markdown table of KL / W2 per grid (rows) and NFE (columns) from `{nfe: [GridScore, ...]}`."""
    nfes = sorted(rows)
    names = [s.name for s in rows[nfes[0]]]
    head = "| grid | " + " | ".join(f"KL @ {n} | W2 @ {n}" for n in nfes) + " |"
    sep = "|---|" + "---|---|" * len(nfes)
    lines = [head, sep]
    for i, name in enumerate(names):
        cells = []
        for n in nfes:
            s = rows[n][i]
            cells.append(f"{s.kl:.{digits}g} | {s.w2:.{digits}g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_grids(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    nfes: list[int],
    *,
    metrics: tuple[str, ...] = ("kl",),
    steps: int = 300,
    **options,
) -> dict[int, list[GridScore]]:
    """`optimize_grid` at each budget in `nfes` and for each metric, as `{nfe: rows}` ready for `format_table`.

    Rows: the continuous baselines; for a `Discrete` table the best integer baseline per metric
    (`"best/int[kl]"`); then `"optimized[kl]"` (and `"optimized[kl]/int"`), and the same for each metric.
    Options as in `optimize_grid`.
    """
    out = {}
    for nfe in nfes:
        rows: list[GridScore] = []
        extra: list[GridScore] = []
        for metric in metrics:
            res = optimize_grid(source, schedule, sampler, nfe, metric=metric, steps=steps, **options)
            if not rows:
                rows = [b for b in res.baselines if not b.name.endswith("/int")]
            ints = [b for b in res.baselines if b.name.endswith("/int")]
            if ints:
                extra.append(min(ints, key=lambda b: _metric_value(b, metric))._replace(name=f"best/int[{metric}]"))
            extra.append(res.optimized._replace(name=f"optimized[{metric}]"))
            if res.rounded is not None:
                extra.append(res.rounded._replace(name=f"optimized[{metric}]/int"))
        out[int(nfe)] = rows + extra
    return out
