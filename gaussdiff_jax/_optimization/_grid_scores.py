r"""Scoring time grids by the closed-form KL and W2 of a sampler's output: many grids per compiled call.

`score_grids` evaluates standard grids (`gdj.grids.available()`) for a model schedule, a sampler and an NFE
budget. Grids of one length are scored by one compiled, `jax.vmap`-ed function in chunks of a fixed number
of grids (the last chunk padded), so that repeated scorings of varying batches — the integer search of
`optimize_grid`, `compare_grids` — reuse one compiled function per grid length instead of compiling or
dispatching once per grid. `format_table` and `GridComparison`
print the results as a Markdown table.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._divergence import kl, w2_squared
from .._core._law import sample_law
from .._core._source import GaussianSource
from .._interop import _grid
from .._sampler import AbstractSampler
from .._schedule import AbstractSchedule, Discrete

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


def metric_value(score: GridScore, metric: Metric) -> float:
    """`score.kl` or `score.w2`."""
    if metric == "kl":
        return score.kl
    if metric == "w2":
        return score.w2
    raise ValueError(f"metric must be 'kl' or 'w2'; got {metric!r}.")


# --- batched evaluation ----------------------------------------------------------------------------

# Grids per call: every stack is cut into chunks of this many grids (the last one padded), so that any number of
# grids of one length reuses one compiled function: compiling costs seconds, while a call on 64 grids of a
# small spectrum costs well under a millisecond (measured in `benchmarks/bench_timesteps.py`). Grids x modes per
# call are bounded so that huge spectra are scored in smaller chunks.
_GRIDS_PER_CALL = 64
_ELEMENTS_PER_CALL = 2**22


@eqx.filter_jit
def _stack_errors(source, schedule, sampler, grids, init, target, direction, with_kl=True):
    """KL and W2^2 of each grid of `grids` `(G, N+1)`: one compiled function per (G, N+1). Without `with_kl`
    (a target with a zero variance: the KL is infinite) the KL is returned as +inf."""

    def one(ts):
        law = sample_law(source, schedule, sampler, ts, init=init)
        w2sq = w2_squared(source, law, target=target)
        if not with_kl:
            return jnp.full_like(w2sq, jnp.inf), w2sq
        return kl(source, law, target=target, direction=direction), w2sq

    return jax.vmap(one)(grids)


def _kl_finite(source: GaussianSource, grids: np.ndarray, target: str) -> bool:
    """Whether every grid's target has positive variances (else the KL is +inf: a zero eigenvalue compared
    with the data, or with p_t at t = 0)."""
    lam = np.asarray(source.eigenvalues)
    if source.weights is not None:
        lam = np.where(np.asarray(source.weights) > 0, lam, 1.0)
    if not np.any(lam <= 0):
        return True
    return target == "truncated" and bool(np.all(grids[:, -1] > 0))


def chunk_size(dim: int) -> int:
    """Grids per call for a spectrum of `dim` modes: `_GRIDS_PER_CALL`, fewer (a power of two) for huge spectra."""
    cap = max(1, _ELEMENTS_PER_CALL // max(dim, 1))
    return min(_GRIDS_PER_CALL, 1 << (cap.bit_length() - 1))


def grid_errors(
    source: GaussianSource,
    schedule: AbstractSchedule,
    sampler: AbstractSampler,
    grids: Float[ArrayLike, "G N+1"],
    *,
    init: str = "standard",
    target: str = "data",
    direction: str = "target_to_sample",
    kl: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """KL and W2 (numpy, shape `(G,)` each) of a stack of grids of one length, in batched calls.

    Against a target with a zero variance the KL is infinite: a clear `ValueError` when the KL is wanted
    (`kl=True`), else reported as +inf next to the finite W2.

    The stack is cut into chunks of `chunk_size(d)` grids, the last one padded with copies of its first grid,
    so that any number of grids of one length reuses one compiled function.
    """
    dtype = source.eigenvalues.dtype
    grids = np.asarray(grids, dtype=np.float64)
    if grids.ndim != 2:
        raise ValueError(f"grid_errors: grids must have shape (G, N+1); got {grids.shape}.")
    if grids.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    size = chunk_size(source.eigenvalues.shape[-1])
    with_kl = _kl_finite(source, grids, target)
    if kl and not with_kl:
        raise ValueError(
            "KL against a singular target: a mode has target variance 0 (a zero eigenvalue, with target='data' or "
            "a grid ending at t = 0), so the KL is +inf. Floor the eigenvalues (jnp.maximum(eigenvalues, 1e-6)), "
            "use target='truncated' with t_min > 0, or score by W2 (metric='w2'), which is finite."
        )
    k_out, w_out = [], []
    for start in range(0, grids.shape[0], size):
        chunk = grids[start : start + size]
        count = chunk.shape[0]
        if count < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - count, axis=0)])
        k, w = _stack_errors(source, schedule, sampler, jnp.asarray(chunk, dtype=dtype), init, target, direction, with_kl)
        k_out.append(np.asarray(k, dtype=np.float64)[:count])
        w_out.append(np.asarray(w, dtype=np.float64)[:count])
    return np.concatenate(k_out), np.sqrt(np.concatenate(w_out))


def _is_integer(ts, schedule) -> bool:
    if not isinstance(schedule, Discrete):
        return False
    try:
        _grid.training_indices(ts, schedule)
    except ValueError:
        return False
    return True


def scores_of(names, grids, source, schedule, sampler, **options) -> list[GridScore]:
    """`GridScore`s of named grids (any lengths): one batched evaluation per distinct length."""
    grids = [np.asarray(g, dtype=np.float64) for g in grids]
    k, w = np.zeros(len(grids)), np.zeros(len(grids))
    for length in sorted({g.shape[0] for g in grids}):
        idx = [i for i, g in enumerate(grids) if g.shape[0] == length]
        k[idx], w[idx] = grid_errors(source, schedule, sampler, np.stack([grids[i] for i in idx]), **options)
    dtype = source.eigenvalues.dtype
    return [
        GridScore(
            n,
            jnp.asarray(g, dtype=dtype),
            _grid.num_evaluations(sampler, g, schedule),
            float(a),
            float(b),
            _is_integer(g, schedule),
        )
        for n, g, a, b in zip(names, grids, k, w, strict=True)
    ]


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
    options = {"init": init, "target": target, "direction": direction}
    return scores_of([name], [np.asarray(ts)], source, schedule, sampler, **options)[0]


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


def baseline_grids(schedule, sampler, nfe, names, integer, grid_options) -> list[np.ndarray]:
    """The named standard grids for a budget, rounded to training indices if `integer`."""
    grids = []
    for name in names:
        ts = _grid.make(name, schedule, nfe, sampler=sampler, **_options_for(name, grid_options))
        if integer:
            ts = _grid.round_to_indices(ts, schedule, duplicates="spread")
        grids.append(np.asarray(ts))
    return grids


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
    progress: bool = False,
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
    - `progress`: print what is being scored on stderr (rich).
    - `grid_options`: passed to every builder that accepts them (e.g. `t_floor`, `t_max`).

    **Returns:** one `GridScore` per grid, in `names` order. All grids of one length are scored in one
    batched call (see the module docstring).
    """
    names = _grid.available(schedule) if names is None else list(names)
    if integer and not isinstance(schedule, Discrete):
        raise ValueError("integer=True needs a Discrete (training-table) schedule.")
    grids = baseline_grids(schedule, sampler, nfe, names, integer, grid_options)
    with Stages(progress, 1, "score") as bar:
        bar.stage(f"NFE {nfe}: scoring {len(grids)} grids")
        scores = scores_of(names, grids, source, schedule, sampler, init=init, target=target, direction=direction)
        bar.advance()
    return scores


# --- progress and tables ---------------------------------------------------------------------------


class Stages:
    """A rich progress line on stderr that advances through named stages; does nothing when disabled.

    Use as a context manager: `with Stages(progress, total, "compare") as bar: bar.stage("..."); bar.advance()`.
    `bar.note(text)` prints a line above the bar.
    """

    def __init__(self, enabled: bool, total: int, label: str):
        self._progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self._task = self._progress.add_task("", total=total)

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False

    def stage(self, description: str):
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def advance(self):
        if self._progress is not None:
            self._progress.advance(self._task)

    def note(self, text: str):
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)


def _number(x: float, digits: int) -> str:
    """`digits` significant digits; exponents without '+' or zero padding (1.129e4, as in the README)."""
    text = f"{x:.{digits}g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def format_table(rows: dict[int, list[GridScore]], *, digits: int = 4, bold_best: bool = True) -> str:
    """A Markdown table from `{nfe: [GridScore, ...]}` (same grids, same order, at each NFE), as in the README:
    one row per grid, one column per NFE, cells `KL / W2`; the best KL and the best W2 of each column in bold."""
    nfes = sorted(rows)
    names = [s.name for s in rows[nfes[0]]]
    lines = ["| grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    best = {n: (min(s.kl for s in rows[n]), min(s.w2 for s in rows[n])) for n in nfes}
    for i, name in enumerate(names):
        cells = []
        for n in nfes:
            s = rows[n][i]
            k, w = _number(s.kl, digits), _number(s.w2, digits)
            if bold_best and s.kl == best[n][0]:
                k = f"**{k}**"
            if bold_best and s.w2 == best[n][1]:
                w = f"**{w}**"
            cells.append(f"{k} / {w}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


class GridComparison(dict):
    """What `compare_grids` returns: `{nfe: [GridScore, ...]}` (a dict) that prints as a Markdown table.

    `str(result)` and `result.table(digits=4)` give `format_table(result)`; `result.notes` lists what the
    optimizations reported (e.g. a budget where the optimizer did not improve on the best baseline).
    """

    def __init__(self, rows: dict[int, list[GridScore]], notes: list[str] | None = None):
        super().__init__(rows)
        self.notes = list(notes or [])

    def table(self, *, digits: int = 4, bold_best: bool = True) -> str:
        """The Markdown table (see `format_table`)."""
        return format_table(self, digits=digits, bold_best=bold_best)

    def __str__(self) -> str:
        return self.table()
