"""Exact errors of a problem's cases through `gdj.sweep` (the one batching path), a failing case isolated.

A case is a schedule (by index) and a step count with its grid. Cases that form a product (schedules x
step counts) run as one `gdj.sweep` call, which groups the schedules by structure and pads the step
counts, so baselines, candidates and NFE budgets share compilations. When a call fails (an engine check
inside jit, e.g. an infinite beta on one schedule), it is split until the failing case is alone, and that
case gets a one-line error saying why (`_diagnose.explain_failure`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._diagnose import explain_failure
from ._shared import CLIError, gdj, runtime_checks

Key = tuple[int, int]  # (schedule index, number of steps)


def evaluate(problem, schedules: list, grids: dict[Key, np.ndarray], *, float32: bool = False) -> dict:
    """KL and W2 of `problem.sampler` for each case `(p, n)` of `grids` (the grid of `n` steps on `schedules[p]`).

    **Returns:** `{(p, n): {"kl": float | None, "w2": float | None}}` (KL `None` where it is infinite: a zero
    eigenvalue against a singular target) or `{(p, n): CLIError}` for a case that failed.
    """
    source = gdj().cast(problem.source, jnp.float32) if float32 else problem.source
    batches: dict[tuple, list[int]] = {}
    for p in sorted({p for p, _ in grids}):
        counts = tuple(sorted(n for q, n in grids if q == p))
        with_kl = all(problem.kl_defined(schedules[p], grids[(p, n)]) for n in counts)
        batches.setdefault((with_kl, counts), []).append(p)
    out: dict = {}
    for (with_kl, counts), ps in batches.items():
        out.update(_run(problem, source, schedules, grids, ps, list(counts), with_kl))
    return out


def _fixed(grids: dict[Key, np.ndarray], p: int):
    return lambda schedule, n: grids[(p, n)]


def _run(problem, source, schedules, grids, ps: list[int], counts: list[int], with_kl: bool) -> dict:
    metric = "kl" if problem.direction == "target_to_sample" else "kl_reverse"
    try:
        result = gdj().sweep(
            source,
            problem.sampler,
            counts,
            [schedules[p] for p in ps],
            grid=[_fixed(grids, p) for p in ps],
            init=problem.init,
            target=problem.target,
            metrics=(metric, "w2") if with_kl else ("w2",),
        )
    except (ValueError, FloatingPointError, RuntimeError, eqx.EquinoxRuntimeError) as error:
        if len(ps) > 1:
            return {k: v for p in ps for k, v in _run(problem, source, schedules, grids, [p], counts, with_kl).items()}
        if len(counts) > 1:
            return {k: v for n in counts for k, v in _run(problem, source, schedules, grids, ps, [n], with_kl).items()}
        (p,), (n,) = ps, counts
        return {(p, n): CLIError(explain_failure(problem, schedules[p], grids[(p, n)], error))}
    kl = np.asarray(getattr(result, metric)) if with_kl else None
    w2 = np.asarray(result.w2)
    out = {}
    for i, p in enumerate(ps):
        for c, n in enumerate(counts):
            values = [w2[0, 0, c, i]] + ([] if kl is None else [kl[0, 0, c, i]])
            if all(np.isfinite(values)):
                out[(p, n)] = {"kl": None if kl is None else float(kl[0, 0, c, i]), "w2": float(w2[0, 0, c, i])}
            else:  # traced without checks (see runtime_checks): ask the engine, with them, what went wrong
                error = _checked_error(problem, source, schedules[p], grids[(p, n)], with_kl)
                out[(p, n)] = CLIError(explain_failure(problem, schedules[p], grids[(p, n)], error))
    return out


def _checked_error(problem, source, schedule, ts, with_kl: bool) -> BaseException:
    """The engine's own error for one case, from a fresh trace with the in-jit checks on."""
    g = gdj()

    def errors(source, schedule, ts):
        law = g.sample_law(source, schedule, problem.sampler, ts, init=problem.init)
        kl = g.kl(source, law, target=problem.target, direction=problem.direction) if with_kl else 0.0
        return g.w2(source, law, target=problem.target), kl

    with runtime_checks(True):
        try:
            w2, kl = eqx.filter_jit(errors)(source, schedule, jnp.asarray(ts, dtype=source.eigenvalues.dtype))
        except (ValueError, FloatingPointError, RuntimeError, eqx.EquinoxRuntimeError) as error:
            return error
    return FloatingPointError(f"the result is not finite (W2 {float(w2)}, KL {float(kl)})")
