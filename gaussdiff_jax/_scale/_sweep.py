r"""Sweeps: errors of many (spectrum, sampler, step count, schedule) combinations in one compiled call.

A sweep evaluates the full grid

    spectra × samplers × step counts × schedules

and returns each divergence as an array of shape `(num_spectra, num_samplers, num_step_counts,
num_schedules)`. One jitted function does all of it:

- **spectra** of different sizes are stacked by padding with weight-0 modes (a weight-0 mode adds
  exactly 0 to every divergence), then vmapped;
- **schedules** of one type are stacked leaf by leaf and vmapped (e.g. `LinearBeta` with 20 values of
  `beta_max`);
- **step counts** share one padded grid length $N_{\max}$: each count's grid is padded and run with
  `sample_law(..., num_steps=N)`, whose steps past $N$ are masked identities. So the compiled function
  depends on $N_{\max}$ and the number of counts, not on the counts themselves;
- **samplers** are different pytree types, so they are unrolled (one scan each) inside the same jit.

Forward memory is $O(d)$ per combination (the scan keeps three per-mode states), never $O(Nd)$.
Padded steps cost as much as real ones: a sweep over counts (10, 1000) runs 2 × 1000 steps.
Large sweeps spread over devices with `sharding=` (see `gaussdiff_jax._sharding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .._interop import _grid
from .._core._divergence import kl, w2
from .._core._dtype import cast
from .._core._law import Init, sample_law
from .._sampler import AbstractSampler
from .._schedule import AbstractSchedule
from .._core._source import GaussianSource

Metric = Literal["kl", "kl_reverse", "w2"]
METRICS: tuple[str, ...] = ("kl", "kl_reverse", "w2")
GridSpec = str | Callable[[AbstractSchedule, int], Float[ArrayLike, " n"]]


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


def stack_sources(sources: GaussianSource | Sequence[GaussianSource]) -> GaussianSource:
    r"""One `(S, d)` source from several spectra, padding shorter ones with weight-0 modes.

    Each input may itself be a batch `(*batch, d_i)`; batches are flattened into `S`. Padding modes
    have eigenvalue 1, mean 0 and weight 0, so they add exactly 0 to every divergence (and cannot
    make a KL singular). Dtype: the widest floating dtype among the inputs.
    """
    sources = _as_tuple(sources, GaussianSource)
    dtype = jnp.result_type(*[s.eigenvalues.dtype for s in sources])
    d = max(s.dim for s in sources)
    need_weights = any(s.weights is not None or s.dim < d for s in sources)
    need_mean = any(s.mean is not None for s in sources)
    lam, mean, weights = [], [], []
    for s in sources:

        def flat(x, dim=s.dim):
            return jnp.reshape(x, (-1, dim)).astype(dtype)

        pad = d - s.dim
        lam.append(jnp.pad(flat(s.eigenvalues), ((0, 0), (0, pad)), constant_values=1.0))
        mean.append(jnp.pad(flat(s.mean_or_zero), ((0, 0), (0, pad))))
        w = jnp.ones_like(s.eigenvalues) if s.weights is None else s.weights
        weights.append(jnp.pad(flat(w), ((0, 0), (0, pad))))
    return GaussianSource(
        jnp.concatenate(lam),
        jnp.concatenate(mean) if need_mean else None,
        jnp.concatenate(weights) if need_weights else None,
    )


def stack_schedules(schedules: AbstractSchedule | Sequence[AbstractSchedule]) -> AbstractSchedule:
    """One schedule whose array leaves carry a leading axis `P` (one entry per input schedule).

    All schedules must have the same type and structure (e.g. several `LinearBeta`, or `Discrete`
    tables of one length); sweep different schedule types with separate calls.
    """
    schedules = _as_tuple(schedules, AbstractSchedule)
    first_arrays, first_static = eqx.partition(schedules[0], eqx.is_array)
    parts = []
    for s in schedules:
        arrays, static = eqx.partition(s, eqx.is_array)
        same = type(s) is type(schedules[0]) and jax.tree.structure(arrays) == jax.tree.structure(first_arrays)
        if not same or not eqx.tree_equal(static, first_static):
            raise ValueError(
                f"sweep: schedules must share one type and structure to be stacked; got "
                f"{type(schedules[0]).__name__} and {type(s).__name__}. Sweep each type separately."
            )
        parts.append(arrays)
    try:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    except ValueError as err:
        raise ValueError(f"sweep: schedule parameters of different shapes cannot be stacked ({err}).") from None
    return eqx.combine(stacked, first_static)


def _grid_builder(grid: GridSpec, t_max: float, t_min: float):
    if callable(grid):
        return grid
    if isinstance(grid, str):
        if grid not in _grid.available():
            raise ValueError(f"sweep: unknown grid {grid!r}; available: {', '.join(_grid.available())}.")
        builder = _grid._BUILDERS[grid]
        return lambda schedule, n: builder(schedule, n, t_max=t_max, t_min=t_min)
    raise ValueError(f"sweep: grid must be a grid name or a callable (schedule, num_steps) -> ts; got {grid!r}.")


def _padded_grids(schedules, counts, builder, dtype) -> np.ndarray:
    """Grids for every (schedule, count), padded to `max(counts) + 1` points by repeating the last time."""
    n_max = max(counts)
    out = np.empty((len(schedules), len(counts), n_max + 1))
    for p, schedule in enumerate(schedules):
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


def prepare(
    sources: GaussianSource | Sequence[GaussianSource],
    samplers: AbstractSampler | Sequence[AbstractSampler],
    num_steps: int | Sequence[int],
    schedules: AbstractSchedule | Sequence[AbstractSchedule],
    *,
    grid: GridSpec = "uniform",
    t_max: float = 1.0,
    t_min: float = 1e-3,
) -> SweepInputs:
    """Stack and pad a sweep's inputs (arguments as in `sweep`). Grids are built on the host, once per
    (schedule, step count); everything is cast to the spectra's floating dtype."""
    source = stack_sources(sources)
    dtype = source.eigenvalues.dtype
    schedule_list = _as_tuple(schedules, AbstractSchedule)
    counts = _step_counts(num_steps)
    grids = _padded_grids(schedule_list, counts, _grid_builder(grid, t_max, t_min), dtype)
    return SweepInputs(
        sources=source,
        schedules=cast(stack_schedules(schedule_list), dtype),
        grids=grids,
        num_steps=jnp.asarray(counts, dtype=jnp.int32),
        samplers=tuple(cast(s, dtype) for s in _as_tuple(samplers, AbstractSampler)),
    )


def _divergences(source, law, target, metrics) -> dict[str, Array]:
    out = {}
    if "kl" in metrics:
        out["kl"] = kl(source, law, target=target)
    if "kl_reverse" in metrics:
        out["kl_reverse"] = kl(source, law, target=target, direction="sample_to_target")
    if "w2" in metrics:
        out["w2"] = w2(source, law, target=target)
    return out


@eqx.filter_jit
def evaluate(inputs: SweepInputs, *, init: Init, target: str, metrics: tuple[str, ...]):
    """The compiled sweep: a dict metric -> array `(S, M, C, P)`. Jit-compiled once per input shapes."""

    def cell(source, schedule, ts, n, sampler):
        law = sample_law(source, schedule, sampler, ts, init=init, num_steps=n)
        return _divergences(source, law, target, metrics)

    def per_sampler(sampler):
        over_counts = jax.vmap(cell, in_axes=(None, None, 0, 0, None))
        over_schedules = jax.vmap(over_counts, in_axes=(None, 0, 0, None, None))
        over_sources = jax.vmap(over_schedules, in_axes=(0, None, None, None, None))
        # -> (S, P, C); reorder to (S, C, P)
        res = over_sources(inputs.sources, inputs.schedules, inputs.grids, inputs.num_steps, sampler)
        return {m: jnp.swapaxes(v, 1, 2) for m, v in res.items()}

    per = [per_sampler(s) for s in inputs.samplers]
    return {m: jnp.stack([r[m] for r in per], axis=1) for m in metrics}


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
    grid: GridSpec = "uniform",
    t_max: float = 1.0,
    t_min: float = 1e-3,
    init: Init = "standard",
    target: Literal["data", "truncated"] = "data",
    metrics: Sequence[Metric] = ("kl", "w2"),
    sharding=None,
) -> Sweep:
    r"""Divergences of every (spectrum, sampler, step count, schedule) combination, in one jitted call.

    **Arguments:**

    - `sources`: one `GaussianSource` (a batch `(*batch, d)` counts as `prod(batch)` spectra) or a list
      of them, possibly of different dimensions (compressed spectra included).
    - `samplers`: one sampler or a list, e.g. `[gdj.EulerMaruyama(), gdj.DDPM(), gdj.Heun()]`.
    - `num_steps`: one step count or a list, e.g. `[10, 20, 50, 100]`.
    - `schedules`: one schedule or a list of schedules of one type (e.g. `LinearBeta` with several `beta_max`).
    - `grid`: a name from `gaussdiff_jax.grids.available()` built with `t_max`, `t_min` (default
      `"uniform"`), or a callable `(schedule, num_steps) -> ts`. Grids are built on the host once per
      (schedule, step count).
    - `init`, `target`: as in `sample_law` and `kl`.
    - `metrics`: any of `"kl"` (KL(target ‖ sample)), `"kl_reverse"` (KL(sample ‖ target)), `"w2"`.
    - `sharding`: `None` (default devices), `"spectra"` or `"modes"` (split that axis over all devices of
      all processes), or a `gaussdiff_jax.DeviceSharding`. Results are the same up to summation order
      (`"modes"` sums partial totals per device).

    **Returns:** a `Sweep` with arrays of shape `(num_spectra, num_samplers, num_step_counts, num_schedules)`.
    A sweep evaluates (grids are built on the host); to differentiate, vmap `sample_law` directly
    (with `checkpoint=` for long grids).

    Calling again with the same shapes (same number of spectra, modes, samplers, counts, schedules and
    the same largest count) reuses the compiled function.
    """
    inputs = prepare(sources, samplers, num_steps, schedules, grid=grid, t_max=t_max, t_min=t_min)
    metrics = _check_metrics(metrics, target, inputs.sources)
    counts = tuple(int(n) for n in np.asarray(inputs.num_steps))
    names = tuple(type(s).__name__ for s in inputs.samplers)
    if sharding is None:
        results = evaluate(inputs, init=init, target=target, metrics=metrics)
    else:
        from ._sharding import sharded_evaluate

        results = sharded_evaluate(inputs, sharding, init=init, target=target, metrics=metrics)
    return Sweep(
        kl=results.get("kl"),
        kl_reverse=results.get("kl_reverse"),
        w2=results.get("w2"),
        num_steps=counts,
        samplers=names,
        target=target,
    )
