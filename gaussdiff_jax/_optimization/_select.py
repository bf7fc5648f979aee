r"""Time steps for a trained model: `select_timesteps`, closed-form or model-aware (issue-driven design).

**Without a network** the recommendation is the closed-form one: the grid on training steps that minimizes the
Wasserstein-2 distance between the sampler's exact output law on the Gaussian model of the data and the data (the
best `gdj.grids` spacing, improved by an integer search over training steps, the first step included: it may start
below the last training step). $W_2$, not the KL, is the default
because it is what predicted measured quality on trained networks (`benchmarks/real_models/`): the KL is
dominated by near-null modes (blank pixels below the dequantization floor), ranks grids against what networks
show, and moves with the arbitrary floor.

**With a network** (`denoiser` and held-out `data`), its error is measured per noise level and eigen-direction
(`measure_error_profile`) and propagated exactly through the sampler (`sample_law(..., model_error=...)`). A grid
is scored by the triangle inequality for the coupling of the network's run with the exact-denoiser run from the same
noise,
$$J = W_2\big(\text{law with the exact denoiser},\ p_{\rm data}\big) + \Big(\sum_i \mathbb E\,\big[\text{propagated error}_i^2\big]\Big)^{1/2},$$
the second term being the output variance the network's errors add ($\sum_k (w_kP_{k,i})^2 s_i^2(t_k)$ for one-step
samplers, with every step's weight $w_k$ on the denoiser and the later steps' gains $P$; the engine carries the
multistep correlations). Counting the error as a cost, not as variance, matters: a sampler like DDIM under-disperses,
and extra variance would otherwise look like an improvement. Large jumps from the highest noise levels, where an
$\varepsilon$-network's $x_0$ estimate is poor, are penalized by the weight $\sqrt{\bar\alpha'}$ they give that error, so
the search may start below the last training step. All candidate grids (every `gdj.grids` spacing, the closed-form
recommendation) are scored in batched calls; the best is improved by an integer search over training steps
(`integer_search`, first point free).

Grids are padded to a few fixed lengths (`sample_law(..., num_steps=N)`), so one compiled scorer serves every
budget up to that length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._divergence import w2_squared
from .._core._law import sample_law
from .._core._model_error import ErrorProfile
from .._core._source import GaussianSource
from .._interop import _grid
from .._sampler import AbstractSampler
from .._scale._compress import agrees, compression_for_loss
from .._schedule import Discrete
from ._grid_scores import chunk_size
from ._network_error import GaussianFit, Parameterization, fit_gaussian, measure_error_profile
from ._timesteps import integer_search


class Candidate(NamedTuple):
    """One scored grid."""

    name: str
    timesteps: np.ndarray
    """Descending training steps, one per model evaluation."""
    predicted: float
    """The objective (lower is better)."""
    w2: float
    """$W_2$ of the exact-denoiser law to the data."""
    error: float
    """Root of the propagated network error (0 without a network)."""


class TimestepSelection(NamedTuple):
    """What `select_timesteps` returns; `str()` prints the comparison table."""

    timesteps: np.ndarray
    """The recommended descending integer training steps (one per model evaluation), e.g. for diffusers'
    `scheduler.set_timesteps(timesteps=list(...))`."""
    ts: Array
    """The continuous grid for `sample_law`: the evaluation times then the clean end 0, shape `(N + 1,)`."""
    predicted: float
    """The objective of the recommendation (see `objective`)."""
    objective: str
    """`"w2"` (closed form) or `"w2+network error"` (model-aware)."""
    candidates: list[Candidate]
    """Every scored grid, best first (the baselines by their `gdj.grids` names, `"closed-form"`, `"selected"`)."""
    profile: ErrorProfile | None
    """The measured error profile (model-aware only)."""

    def table(self, digits: int = 4) -> str:
        """A Markdown table of the candidates."""
        lines = ["| grid | predicted | W2 (exact denoiser) | network error | first steps |", "|---|---:|---:|---:|---|"]
        for c in self.candidates:
            head = ", ".join(str(int(i)) for i in c.timesteps[:4]) + (", ..." if len(c.timesteps) > 4 else "")
            lines.append(f"| {c.name} | {c.predicted:.{digits}g} | {c.w2:.{digits}g} | {c.error:.{digits}g} | {head} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"timesteps: {self.timesteps.tolist()}\nobjective: {self.objective} = {self.predicted:.6g}\n\n{self.table()}"


@eqx.filter_jit
def _stack_objective(source, schedule, sampler, grids, num_steps, profile):
    """W2^2 of the exact law and the propagated error energy, per padded grid of `grids` `(G, L)` with `num_steps`."""

    def one(ts, n):
        law = sample_law(source, schedule, sampler, ts, num_steps=n)
        w2sq = w2_squared(source, law, target="data")
        if profile is None:
            return w2sq, jnp.zeros_like(w2sq)
        noisy = sample_law(source, schedule, sampler, ts, num_steps=n, model_error=profile)
        return w2sq, source.total(noisy.variance - law.variance)

    return jax.vmap(one)(grids, num_steps)


def _padded(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grids `(G, N+1)` padded to the next length in 8, 16, 32, ... (repeating a decreasing tail), and their N."""
    n_points = grids.shape[1]
    length = 8
    while length < n_points:
        length *= 2
    pad = length - n_points
    tail = grids[:, -1:] * (1 - np.arange(1, pad + 1) / (pad + 1))[None] if pad else grids[:, :0]
    return np.concatenate([grids, tail], axis=1), np.full(grids.shape[0], n_points - 1, dtype=np.int32)


def _scorer(source, schedule, sampler, profile):
    """`value(grids) -> (objective, w2, error)` in batched calls of one fixed size and padded length."""
    size = chunk_size(source.eigenvalues.shape[-1])
    dtype = source.eigenvalues.dtype

    def parts(grids):
        grids, steps = _padded(np.asarray(grids, dtype=np.float64))
        out_w, out_e = [], []
        for start in range(0, grids.shape[0], size):
            chunk, n = grids[start : start + size], steps[start : start + size]
            count = chunk.shape[0]
            if count < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], size - count, axis=0)])
                n = np.concatenate([n, np.repeat(n[:1], size - count)])
            w, e = _stack_objective(source, schedule, sampler, jnp.asarray(chunk, dtype=dtype), jnp.asarray(n), profile)
            out_w.append(np.asarray(w, dtype=np.float64)[:count])
            out_e.append(np.asarray(e, dtype=np.float64)[:count])
        w2 = np.sqrt(np.maximum(np.concatenate(out_w), 0.0))
        err = np.sqrt(np.maximum(np.concatenate(out_e), 0.0))
        value = np.where(np.isfinite(w2 + err), w2 + err, np.inf)
        return value, w2, err

    return parts


def _search_scorer(source, schedule, sampler, grids: np.ndarray, exact: np.ndarray):
    """The closed-form scorer the grid search ranks with: on the spectrum's quadrature compression
    (`gdj.compress`, ~200 weighted modes for CIFAR-10's 3072) when that reproduces the exact values of the
    starting candidates `grids` to 1e-9 relative, else on the full spectrum.

    Ranking thousands of candidate grids is the search's whole cost (3.3 ns per mode-step). The check guards
    against grids where the per-mode error is not smooth in the eigenvalue (an unstable explicit step), where
    a quadrature would mis-rank; the reported values are always computed on the full spectrum."""
    compressed = compression_for_loss(source)
    if compressed is not None:
        scorer = _scorer(compressed, schedule, sampler, None)
        if agrees(scorer(grids)[0], exact):
            return scorer
    return _scorer(source, schedule, sampler, None)


def _closed_form_grid(source, schedule: Discrete, sampler, grids: dict, max_rounds: int) -> np.ndarray:
    """The integer grid of least W2 (exact denoiser), searched from the best of the candidate `grids`.

    The first step is free (it may start below T - 1, as diffusers' "leading" spacing does): on the trained
    networks of benchmarks/real_models the closed-form W2 grid with a free start was within 5 % of the best
    fixed spacing's FD where the one pinned at T - 1 was up to 1.2x (x0 / v heads) and 3.9x (eps heads) worse."""
    stacked = np.stack(list(grids.values()))
    exact = _scorer(source, schedule, sampler, None)(stacked)[0]
    search = _search_scorer(source, schedule, sampler, stacked, exact)
    start = stacked[int(np.argmin(exact))]
    found, _, _ = integer_search(start, schedule.num_train_timesteps, lambda g: search(g)[0], free_start=True,
                                 max_rounds=max_rounds)  # fmt: skip
    return found


def _candidate_grids(schedule: Discrete, sampler, nfe: int) -> dict[str, np.ndarray]:
    """Every `gdj.grids` spacing for the budget, on training steps with the clean end (name -> grid)."""
    out = {}
    for name in _grid.available(schedule):
        try:
            ts = _grid.make(name, schedule, nfe, sampler=sampler)
            ts = np.asarray(_grid.round_to_indices(ts, schedule, duplicates="spread"), dtype=np.float64)
        except ValueError:
            continue  # e.g. more steps than the spacing can place on the table
        if ts[-1] == 0.0 and not any(np.array_equal(ts, g) for g in out.values()):
            out[name] = ts
    return out


def _timesteps_of(ts: np.ndarray, T: int) -> np.ndarray:
    return np.round(np.asarray(ts[:-1]) * T - 1).astype(np.int64)


def _aligned_profile(profile: ErrorProfile, fit: GaussianFit, source: GaussianSource) -> ErrorProfile:
    """The profile measured in `fit`'s modes (descending eigenvalues) on `source`'s modes, matched by eigenvalue rank."""
    lam = np.asarray(source.eigenvalues)
    if lam.ndim != 1 or lam.shape[0] != fit.eigenvalues.shape[0]:
        raise ValueError(
            f"source has {lam.shape[-1]} modes (shape {lam.shape}) but the data have dimension "
            f"{fit.eigenvalues.shape[0]}: pass a 1-D source of the data's dimension, or omit it."
        )
    rank_of_mode = np.empty(lam.shape[0], dtype=np.int64)
    rank_of_mode[np.argsort(-lam, kind="stable")] = np.arange(lam.shape[0])
    return ErrorProfile(profile.log_snr, profile.second_moment[:, rank_of_mode])


def select_timesteps(
    schedule: Discrete,
    sampler: AbstractSampler,
    nfe: int,
    *,
    source: GaussianSource | None = None,
    denoiser: Callable | None = None,
    data: Float[np.ndarray, "n d"] | None = None,
    parameterization: Parameterization = "eps",
    key: jax.Array | None = None,
    num_levels: int = 48,
    max_rounds: int = 200,
    progress: bool = False,
) -> TimestepSelection:
    r"""Recommended time steps for a model trained on the `Discrete` table `schedule`, sampled with `sampler` in `nfe`
    network evaluations (module docstring).

    **Arguments:**

    - `schedule`: the model's table, e.g. `gdj.Discrete.from_diffusers("linear")`.
    - `sampler`: e.g. `gdj.DDIM()`, `gdj.DPMSolverMultistep()`.
    - `nfe`: network evaluations.
    - `source`: the Gaussian model of the data (eigenvalues and mean in its eigenbasis); required without `data`,
      default `GaussianSource` of the fit to `data` otherwise.
    - `denoiser`: the network, a JAX callable `denoiser(x, t)` (`x`: `(n, d)` noised data in VP scale, `t`: `(n,)`
      int32 training steps) returning `(n, d)` in `parameterization` (`"eps"`, `"x0"` or `"v"`). Optional.
    - `data`: held-out samples `(n, d)` (needed with `denoiser`; $n \gtrsim d$ for a good covariance estimate).
    - `key`: PRNG key for the error measurement's noise.
    - `num_levels`: training steps at which the network's error is measured.
    - `max_rounds`: cap of the integer search.
    - `progress`: print what each stage found on stderr.

    **Returns:** a `TimestepSelection` (`.timesteps`, `.ts`, `.predicted`, `.candidates`, `print(...)` shows the table).
    **Raises:** `ValueError` for a non-`Discrete` schedule, a missing source, or a denoiser whose output has the wrong
    shape or is not finite.
    """
    if not isinstance(schedule, Discrete):
        raise ValueError(
            "select_timesteps needs the model's gdj.Discrete table (its training steps); for a continuous "
            "schedule use gdj.optimize_grid."
        )
    if denoiser is not None and data is None:
        raise ValueError("select_timesteps: a denoiser needs held-out data=(n, d) to measure its error on.")
    T = schedule.num_train_timesteps
    source, profile = _source_and_profile(schedule, source, denoiser, data, parameterization, num_levels, key)
    say = _printer(progress)

    grids = _candidate_grids(schedule, sampler, nfe)
    if not grids:
        raise ValueError(f"select_timesteps: no grid of {nfe} evaluations fits the {T}-step table for this sampler.")
    grids["closed-form"] = _closed_form_grid(source, schedule, sampler, grids, max_rounds)
    names = list(grids)
    score = _scorer(source, schedule, sampler, profile)
    value, w2, err = score(np.stack([grids[n] for n in names]))
    candidates = {
        n: Candidate(n, _timesteps_of(grids[n], T), float(v), float(a), float(b))
        for n, v, a, b in zip(names, value, w2, err)
    }
    best = min(candidates.values(), key=lambda c: c.predicted)
    say(f"select_timesteps: best of {len(names)} candidates: {best.name} ({best.predicted:.6g})")
    if profile is not None:
        refined = _network_search(score, best, grids[best.name], T, max_rounds, say)
        if refined is not None:
            candidates["selected"] = refined
    ordered = sorted(candidates.values(), key=lambda c: c.predicted)
    chosen = ordered[0]
    ts = jnp.asarray(np.concatenate([(chosen.timesteps + 1.0) / T, [0.0]]), dtype=source.eigenvalues.dtype)
    return TimestepSelection(
        chosen.timesteps, ts, chosen.predicted, "w2" if profile is None else "w2+network error", ordered, profile
    )


def _source_and_profile(schedule, source, denoiser, data, parameterization, num_levels, key):
    """The Gaussian model of the data (`source`, else the fit to `data`) and the network's error profile in its
    modes (`None` without a denoiser)."""
    if denoiser is None:
        if source is None and data is None:
            raise ValueError("select_timesteps needs source= (the data's spectrum) or data=(n, d) samples.")
        return (fit_gaussian(data).source() if source is None else source), None
    profile, fit = measure_error_profile(
        denoiser, data, schedule, parameterization=parameterization, num_levels=num_levels, key=key
    )
    return (fit.source(), profile) if source is None else (source, _aligned_profile(profile, fit, source))


def _network_search(score, best: Candidate, start: np.ndarray, T: int, max_rounds: int, say) -> Candidate | None:
    """The integer search on the model-aware objective from the best candidate; the result if it improves."""
    found, rounds, converged = integer_search(start, T, lambda g: score(g)[0], free_start=True, max_rounds=max_rounds)
    v, a, b = (float(x[0]) for x in score(found[None]))
    say(f"select_timesteps: integer search from {best.name}: {v:.6g} after {rounds} rounds"
        + ("" if converged else " (round cap reached)"))  # fmt: skip
    return Candidate("selected", _timesteps_of(found, T), v, a, b) if v < best.predicted else None


def _printer(enabled: bool):
    import sys

    def say(text):
        if enabled:
            print(text, file=sys.stderr)

    return say
