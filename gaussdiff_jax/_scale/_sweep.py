r"""Sweeps: errors of many (spectrum, sampler, step count, schedule) combinations in one compiled call.

A sweep evaluates the full grid

    spectra × samplers × step counts × schedules

and returns each divergence as an array of shape `(num_spectra, num_samplers, num_step_counts,
num_schedules)`. One jitted function does all of it:

- **spectra** of different sizes are stacked by padding with weight-0 modes (a weight-0 mode adds
  exactly 0 to every divergence), then vmapped;
- **schedules** of one structure (same type, same array shapes, same static fields) are stacked leaf
  by leaf and vmapped (e.g. `LinearBeta` with 20 values of `beta_max`). A list mixing structures
  (`[EDM(), Tangent(0.3), LinearBeta()]`) is split into such groups, one compiled call each (a call
  with the same group shapes reuses its compilation), and the results are put back in list order;
- **step counts** share one padded grid length $N_{\max}$: each count's grid is padded and run with
  `sample_law(..., num_steps=N)`, whose steps past $N$ are masked identities. So the compiled function
  depends on $N_{\max}$ and the number of counts, not on the counts themselves;
- **samplers** are different pytree types, so they are unrolled (one scan each) inside the same jit.

Forward memory is $O(d)$ per combination (the scan keeps three per-mode states), never $O(Nd)$.
Padded steps cost as much as real ones: a sweep over counts (10, 1000) runs 2 × 1000 steps.
Large sweeps spread over devices with `sharding=` (see `gaussdiff_jax._scale._sharding`).

**Which spectra.** One `GaussianSource` with eigenvalues `(d,)` is one spectrum, `(S, d)` is `S` spectra;
a list holds one spectrum per entry (each `(d_i,)`, sizes may differ). Other shapes are rejected rather
than flattened, so that row `i` of the results is always entry `i` of what was passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._core._divergence import kl, w2_squared
from .._core._dtype import cast
from .._core._law import Init, sample_law
from .._core._source import GaussianSource
from .._interop import _grid
from .._sampler import AbstractSampler
from .._schedule import AbstractSchedule
from ._padding import pad_modes
from ._sharding import gather, place

Metric = Literal["kl", "kl_reverse", "w2"]
METRICS: tuple[str, ...] = ("kl", "kl_reverse", "w2")
GridSpec = str | Callable[[AbstractSchedule, int], Float[ArrayLike, " n"]]
GridSpecs = GridSpec | Sequence[GridSpec]


class SweepInputs(eqx.Module):
    """A sweep's inputs, stacked and padded (what the compiled function and the sharding act on).

    **Fields:**

    - `sources`: one `GaussianSource` with eigenvalues, mean and weights of shape `(S, d)`.
    - `schedules`: the schedules stacked leaf by leaf, every array leaf with leading axis `P`.
    - `grids`: padded time grids, shape `(P, C, N_max + 1)`.
    - `num_steps`: the step counts, shape `(C,)`, int32.
    - `samplers`: the samplers (static structure, unrolled).
    """

    sources: GaussianSource
    schedules: AbstractSchedule
    grids: Float[Array, "P C n"]
    num_steps: Int[Array, " C"]
    samplers: tuple[AbstractSampler, ...]


class Sweep(eqx.Module):
    r"""Results of `sweep`. Each divergence has shape `(num_spectra, num_samplers, num_step_counts, num_schedules)`.

    **Fields:**

    - `kl`: KL(target ‖ sample) in nats, or `None` if not requested.
    - `kl_reverse`: KL(sample ‖ target), or `None`.
    - `w2`: Wasserstein-2 distance, or `None`.
    - `num_steps`: the step counts, in order (static).
    - `samplers`: the samplers' class names, in order (static).
    - `target`: `"data"` or `"truncated"` (static).
    """

    kl: Float[Array, "S M C P"] | None
    kl_reverse: Float[Array, "S M C P"] | None
    w2: Float[Array, "S M C P"] | None
    num_steps: tuple[int, ...] = eqx.field(static=True)
    samplers: tuple[str, ...] = eqx.field(static=True)
    target: str = eqx.field(static=True)

    def rows(self) -> list[dict]:
        """One record per combination (`spectrum`, `sampler`, `num_steps`, `schedule` indices/names plus
        each computed divergence as a float), e.g. for `pandas.DataFrame(result.rows())`."""
        present = {m: np.asarray(getattr(self, m)) for m in METRICS if getattr(self, m) is not None}
        shape = next(iter(present.values())).shape
        out = []
        for i, j, c, p in np.ndindex(*shape):
            row = {"spectrum": i, "sampler": self.samplers[j], "num_steps": self.num_steps[c], "schedule": p}
            row.update({m: float(v[i, j, c, p]) for m, v in present.items()})
            out.append(row)
        return out


def _as_tuple(x, kind) -> tuple:
    if isinstance(x, kind):
        return (x,)
    x = tuple(x)
    if not x:
        raise ValueError(f"sweep: got an empty list of {kind.__name__}s.")
    for item in x:
        if not isinstance(item, kind):
            raise ValueError(f"sweep: expected {kind.__name__} instances; got {type(item).__name__}.")
    return x


def _rows(sources) -> list[GaussianSource]:
    """The sweep's spectra as a list of sources `(d_i,)` or one source `(S, d)` (the module's shape rule)."""
    listed = _as_tuple(sources, GaussianSource)
    if len(listed) == 1:
        if listed[0].eigenvalues.ndim > 2:
            raise ValueError(
                f"sweep: a source of batch shape {listed[0].batch_shape} is ambiguous; pass eigenvalues of shape "
                "(d,) for one spectrum or (S, d) for S spectra (reshape the batch to one axis)."
            )
        return list(listed)
    for k, s in enumerate(listed):
        if s.eigenvalues.ndim != 1:
            raise ValueError(
                f"sweep: entry {k} of the list of sources has eigenvalues of shape {s.eigenvalues.shape}; a list "
                "holds one spectrum (d,) per entry. Pass a batched source (S, d) alone, or list its spectra."
            )
    return list(listed)


def stack_sources(sources: GaussianSource | Sequence[GaussianSource]) -> GaussianSource:
    r"""One `(S, d)` source from the sweep's spectra, padding smaller ones with weight-0 modes (`pad_modes`).

    `sources`: one source `(d,)` or `(S, d)`, or a list of sources `(d_i,)` (see the module docstring).
    Dtype: the widest floating dtype among the inputs.
    """
    rows = _rows(sources)
    dtype = jnp.result_type(*[s.eigenvalues.dtype for s in rows])
    d = max(s.dim for s in rows)
    need_weights = any(s.weights is not None or s.dim < d for s in rows)
    need_mean = any(s.mean is not None for s in rows)
    lam, mean, weights = [], [], []
    for s in rows:
        padded = pad_modes(cast(s, dtype), to=d)
        lam.append(jnp.reshape(padded.eigenvalues, (-1, d)))
        mean.append(jnp.reshape(padded.mean_or_zero, (-1, d)))
        w = padded.weights
        weights.append(jnp.ones_like(lam[-1]) if w is None else jnp.reshape(w, (-1, d)))
    return GaussianSource(
        jnp.concatenate(lam),
        jnp.concatenate(mean) if need_mean else None,
        jnp.concatenate(weights) if need_weights else None,
    )


def _stack_key(schedule: AbstractSchedule):
    arrays, static = eqx.partition(schedule, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    return type(schedule), treedef, tuple((x.shape, x.dtype) for x in leaves), static


def group_schedules(schedules: Sequence[AbstractSchedule]) -> list[list[int]]:
    """Indices of `schedules` grouped by stackable structure (same type, array shapes and static fields),
    groups in order of first appearance."""
    groups: list[tuple[tuple, list[int]]] = []
    for i, schedule in enumerate(schedules):
        key = _stack_key(schedule)
        for other, members in groups:
            if other[:3] == key[:3] and eqx.tree_equal(other[3], key[3]) is True:
                members.append(i)
                break
        else:
            groups.append((key, [i]))
    return [members for _, members in groups]


def stack_schedules(schedules: AbstractSchedule | Sequence[AbstractSchedule]) -> AbstractSchedule:
    """One schedule whose array leaves carry a leading axis `P` (one entry per input schedule).

    All schedules must share one structure (`group_schedules` puts them in one group); `sweep` groups a
    mixed list itself.
    """
    schedules = _as_tuple(schedules, AbstractSchedule)
    if len(group_schedules(schedules)) > 1:
        raise ValueError(
            f"stack_schedules: schedules must share one type and structure to be stacked; got "
            f"{', '.join(sorted({type(s).__name__ for s in schedules}))}. Use group_schedules to split them."
        )
    parts = [eqx.partition(s, eqx.is_array)[0] for s in schedules]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    return eqx.combine(stacked, eqx.partition(schedules[0], eqx.is_array)[1])


def _grid_builder(grid: GridSpec, t_max: float, t_min: float):
    if callable(grid):
        return grid
    if isinstance(grid, str):
        if grid not in _grid.available():
            raise ValueError(f"sweep: unknown grid {grid!r}; available: {', '.join(_grid.available())}.")
        options = {"t_max": t_max, "t_min": t_min}
        options = {k: v for k, v in options.items() if k in _grid.range_options(grid)}
        return lambda schedule, n: _grid.make(grid, schedule, num_steps=n, **options)
    raise ValueError(f"sweep: grid must be a grid name or a callable (schedule, num_steps) -> ts; got {grid!r}.")


def _grid_builders(grid, num_schedules: int, t_max: float, t_min: float) -> list:
    """One grid builder per schedule: `grid` is one spec for all, or a list with one spec per schedule."""
    if isinstance(grid, str) or callable(grid):
        return [_grid_builder(grid, t_max, t_min)] * num_schedules
    specs = list(grid)
    if len(specs) != num_schedules:
        raise ValueError(f"sweep: got {len(specs)} grid specs for {num_schedules} schedules; give one, or one each.")
    return [_grid_builder(g, t_max, t_min) for g in specs]


def _padded_grids(schedules, counts, builders, dtype) -> Array:
    """Grids for every (schedule, count), padded to `max(counts) + 1` points by repeating the last time."""
    n_max = max(counts)
    out = np.empty((len(schedules), len(counts), n_max + 1))
    for p, (schedule, builder) in enumerate(zip(schedules, builders)):
        for c, n in enumerate(counts):
            ts = np.asarray(builder(schedule, n), dtype=np.float64)
            if ts.shape != (n + 1,):
                raise ValueError(f"sweep: the grid for num_steps={n} has shape {ts.shape}; expected ({n + 1},).")
            out[p, c, : n + 1] = ts
            out[p, c, n + 1 :] = ts[-1]
    return jnp.asarray(out, dtype=dtype)


def _step_counts(num_steps) -> tuple[int, ...]:
    counts = tuple(np.atleast_1d(np.asarray(num_steps)).tolist())
    if not counts or any(not isinstance(n, int) or n < 1 for n in counts):
        raise ValueError(f"sweep: num_steps must be positive integers; got {num_steps!r}.")
    return counts


def _prepare(source, samplers, counts, schedules, builders) -> SweepInputs:
    """Stack one group of schedules with their padded grids (built on the host, once per (schedule, count))."""
    dtype = source.eigenvalues.dtype
    return SweepInputs(
        sources=source,
        schedules=stack_schedules(schedules),
        grids=_padded_grids(schedules, counts, builders, dtype),
        num_steps=jnp.asarray(counts, dtype=jnp.int32),
        samplers=samplers,
    )


def _divergences(source, law, target, metrics) -> dict[str, Array]:
    out = {}
    if "kl" in metrics:
        out["kl"] = kl(source, law, target=target)
    if "kl_reverse" in metrics:
        out["kl_reverse"] = kl(source, law, target=target, direction="sample_to_target")
    if "w2" in metrics:
        # sqrt of W2^2, not w2(): the same numbers, but a NaN stays NaN (w2 maps it to 0 through its
        # zero-gradient guard, which a sweep, never differentiated, does not need).
        out["w2"] = jnp.sqrt(w2_squared(source, law, target=target))
    return out


def _over(fn, size: int, in_axes: tuple):
    """`jax.vmap(fn, in_axes)` over an axis of `size`, or for `size == 1` `fn` on its only entry, with the
    axis put back. Same program, but tracing vmaps of the engine's scan costs ~0.2 s per level on CPU,
    which dominates small sweeps (a command-line evaluation is 1 x 1 x 1)."""
    if size > 1:
        return jax.vmap(fn, in_axes=in_axes)

    def only(*args):
        def first(x):
            return x[0] if eqx.is_array(x) else x

        picked = [a if axis is None else jax.tree.map(first, a) for a, axis in zip(args, in_axes)]
        return jax.tree.map(lambda y: y[None], fn(*picked))

    return only


def _evaluate(inputs: SweepInputs, *, init: Init, target: str, metrics: tuple[str, ...]):
    """The sweep of one group of schedules: a dict metric -> array `(S, M, C, P)` (traced inside `evaluate_groups`)."""
    num_schedules, num_counts, _ = inputs.grids.shape
    num_spectra = inputs.sources.eigenvalues.shape[0]
    padded = num_counts > 1  # one count: its grid is unpadded, the scan needs no mask

    def cell(source, schedule, ts, n, sampler):
        law = sample_law(source, schedule, sampler, ts, init=init, num_steps=n if padded else None)
        return _divergences(source, law, target, metrics)

    def per_sampler(sampler):
        over_counts = _over(cell, num_counts, (None, None, 0, 0, None))
        over_schedules = _over(over_counts, num_schedules, (None, 0, 0, None, None))
        over_sources = _over(over_schedules, num_spectra, (0, None, None, None, None))
        # -> (S, P, C); reorder to (S, C, P)
        res = over_sources(inputs.sources, inputs.schedules, inputs.grids, inputs.num_steps, sampler)
        return {m: jnp.swapaxes(v, 1, 2) for m, v in res.items()}

    per = [per_sampler(s) for s in inputs.samplers]
    return {m: jnp.stack([r[m] for r in per], axis=1) for m in metrics}


@eqx.filter_jit
def evaluate_groups(groups: tuple[SweepInputs, ...], *, init: Init, target: str, metrics: tuple[str, ...]):
    """`_evaluate` of each group of schedules, in one compiled program (one compilation per mix of groups
    rather than one per group: XLA's fixed cost per program, ~0.4 s of CPU, dominated small mixed sweeps)."""
    return [_evaluate(g, init=init, target=target, metrics=metrics) for g in groups]


def _check_metrics(metrics, target, source: GaussianSource) -> tuple[str, ...]:
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"sweep: metrics must be a non-empty subset of {METRICS}; got {metrics!r}.")
    if target not in ("data", "truncated"):
        raise ValueError(f"sweep: target must be 'data' or 'truncated'; got {target!r}.")
    wants_kl = any(m.startswith("kl") for m in metrics)
    if wants_kl and target == "data":
        w = source.weights
        singular = (source.eigenvalues == 0) & (True if w is None else w > 0)
        if bool(jnp.any(singular)):
            raise ValueError(
                "sweep: a spectrum has a zero eigenvalue, so KL to the data is infinite. Use "
                "metrics=('w2',), or target='truncated' (KL to p_{t_min})."
            )
    return metrics


def sweep(
    sources: GaussianSource | Sequence[GaussianSource],
    samplers: AbstractSampler | Sequence[AbstractSampler],
    num_steps: int | Sequence[int],
    schedules: AbstractSchedule | Sequence[AbstractSchedule],
    *,
    grid: GridSpecs = "uniform",
    t_max: float = 1.0,
    t_min: float = 1e-3,
    init: Init = "standard",
    target: Literal["data", "truncated"] = "data",
    metrics: Sequence[Metric] = ("kl", "w2"),
    sharding=None,
) -> Sweep:
    r"""Divergences of every (spectrum, sampler, step count, schedule) combination, in one jitted call.

    **Arguments:**

    - `sources`: one `GaussianSource` `(d,)` or `(S, d)` (`S` spectra), or a list of sources `(d_i,)`,
      possibly of different dimensions (compressed spectra included). Row `i` of the results is spectrum `i`.
    - `samplers`: one sampler or a list, e.g. `[gdj.EulerMaruyama(), gdj.DDPM(), gdj.Heun()]`.
    - `num_steps`: one step count or a list, e.g. `[10, 20, 50, 100]`.
    - `schedules`: one schedule or a list, of one type (e.g. `LinearBeta` with several `beta_max`) or mixed
      (grouped by structure, one compiled call per group).
    - `grid`: a name from `gaussdiff_jax.grids.available()` built with `t_max`, `t_min` where the grid takes
      them (`grids.range_options`; default `"uniform"`), or a callable `(schedule, num_steps) -> ts`, or a
      list of those with one entry per schedule. Grids are built on the host once per (schedule, step count).
    - `init`, `target`: as in `sample_law` and `kl`.
    - `metrics`: any of `"kl"` (KL(target ‖ sample)), `"kl_reverse"` (KL(sample ‖ target)), `"w2"`.
    - `sharding`: `None` (default devices), `"spectra"` or `"modes"` (split that axis over all devices of
      all processes), or a `gaussdiff_jax.DeviceSharding`. Results are the same up to summation order
      (`"modes"` sums partial totals per device).

    **Returns:** a `Sweep` with arrays of shape `(num_spectra, num_samplers, num_step_counts, num_schedules)`.
    A sweep evaluates (grids are built on the host); to differentiate, vmap `sample_law` directly
    (with `checkpoint=` for long grids).

    Calling again with the same shapes (same number of spectra, modes, samplers, counts, schedules per
    group and the same largest count) reuses the compiled functions.
    """
    source = stack_sources(sources)
    metrics = _check_metrics(metrics, target, source)
    dtype = source.eigenvalues.dtype
    sampler_tuple = tuple(cast(s, dtype) for s in _as_tuple(samplers, AbstractSampler))
    schedule_list = [cast(s, dtype) for s in _as_tuple(schedules, AbstractSchedule)]
    builders = _grid_builders(grid, len(schedule_list), t_max, t_min)
    counts = _step_counts(num_steps)
    groups = group_schedules(schedule_list)
    inputs = tuple(
        _prepare(source, sampler_tuple, counts, [schedule_list[i] for i in members], [builders[i] for i in members])
        for members in groups
    )
    parts = _evaluate_placed(inputs, sharding, init=init, target=target, metrics=metrics)
    order = np.argsort(np.concatenate([np.asarray(m) for m in groups]))
    results = {m: jnp.take(jnp.concatenate([p[m] for p in parts], axis=-1), order, axis=-1) for m in metrics}
    return Sweep(
        kl=results.get("kl"),
        kl_reverse=results.get("kl_reverse"),
        w2=results.get("w2"),
        num_steps=counts,
        samplers=tuple(type(s).__name__ for s in sampler_tuple),
        target=target,
    )


def _evaluate_placed(inputs: tuple[SweepInputs, ...], sharding, *, init, target, metrics) -> list[dict]:
    if sharding is None:
        return evaluate_groups(inputs, init=init, target=target, metrics=metrics)
    placed = [place(group, sharding) for group in inputs]
    results = evaluate_groups(tuple(p for p, _ in placed), init=init, target=target, metrics=metrics)
    return [{m: gather(v)[:n] for m, v in r.items()} for r, (_, n) in zip(results, placed)]
