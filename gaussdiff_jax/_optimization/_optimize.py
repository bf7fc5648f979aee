"""Gradient-based optimization of any equinox module (schedule, grid, ...) against any scalar loss, with optax."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax


class OptimizeResult(NamedTuple):
    """What `optimize` returns."""

    module: Any
    """The best module seen (lowest loss; usually the last), same structure as the input."""
    losses: np.ndarray
    """Loss before each step, shape `(steps,)`, plus the final loss as the last entry (`steps + 1` values)."""


def optimize(
    loss_fn: Callable[..., Any],
    module: Any,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 500,
    progress: bool = True,
    args: Any = None,
    filter_spec: Any = eqx.is_inexact_array,
) -> OptimizeResult:
    r"""Minimize `loss_fn(module)` (or `loss_fn(module, args)`) over the module's floating-point arrays.

    **Arguments:**

    - `loss_fn`: returns a scalar; any JAX-traceable function, e.g.
      `lambda sch: gdj.kl(src, gdj.sample_law(src, sch, gdj.DDIM(), ts))`.
    - `module`: an equinox module (or any pytree): a schedule, a `LearnableGrid`, a tuple of them...
    - `optimizer`: an optax transformation (default `optax.adam(1e-2)`). Optimizers that need the
      loss value or a line search (e.g. `optax.lbfgs()`) are supported: `value`, `grad` and
      `value_fn` are passed to `update` as extra arguments.
    - `steps`: number of optimizer steps.
    - `progress`: show a progress bar with the current loss (rich).
    - `args`: passed as the second argument of `loss_fn` if not `None` (data that is not trained).
    - `filter_spec`: which leaves are trained (equinox filter; default all floating arrays).

    **Returns:** `OptimizeResult(module, losses)`: the parameters with the lowest loss seen (so a
    fixed step count cannot make a converged L-BFGS run worse) and the loss history.

    **Raises:** `FloatingPointError` if the loss becomes NaN or infinite (with the step number and what
    to try), rather than returning a corrupted module.

    One compiled step (`eqx.filter_jit`) is reused for every iteration.
    """
    if int(steps) < 0:
        raise ValueError(f"optimize: steps must be >= 0; got {steps}.")
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    optimizer = optax.with_extra_args_support(optimizer)
    params, static = eqx.partition(module, filter_spec)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("optimize: the module has no trainable floating-point arrays (check filter_spec).")

    def value_of(p):
        full = eqx.combine(p, static)
        return loss_fn(full) if args is None else loss_fn(full, args)

    @eqx.filter_jit
    def step(p, state):
        value, grad = jax.value_and_grad(value_of)(p)
        # optax mixes its int32 step counter with floats; keep that legal under strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grad, state, p, value=value, grad=grad, value_fn=value_of)
            return optax.apply_updates(p, updates), state, value

    with jax.numpy_dtype_promotion("standard"):
        state = optimizer.init(params)
    # Some optimizers (optax.lbfgs) initialize weakly-typed state that becomes strongly typed after one
    # update; fixing the types now avoids compiling the step twice.
    state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x, state)
    losses = []
    best_value, best_params = math.inf, params
    bar = _progress(progress, int(steps))
    try:
        for k in range(int(steps)):
            previous = params  # the loss returned by a step is the loss of the parameters it started from
            params, state, value = step(params, state)
            value = float(value)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"optimize: the loss is {value} at step {k}. Lower the learning rate, start from a valid "
                    "point (a finite loss), or check that the loss is defined on the whole parameter space."
                )
            losses.append(value)
            if value < best_value:
                best_value, best_params = value, previous
            if bar is not None:
                bar.advance(value)
        final = float(eqx.filter_jit(value_of)(params))
        if math.isfinite(final):
            losses.append(final)
            if final < best_value:
                best_value, best_params = final, params
    finally:
        if bar is not None:
            bar.close()
    return OptimizeResult(eqx.combine(best_params, static), np.asarray(losses))


class _Bar:
    def __init__(self, steps: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("optimize"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("optimize", total=steps, loss="-")
        self._progress.start()
        self._count = 0

    def advance(self, value: float):
        self._count += 1
        # Refreshing the text for every step is cheap; rich throttles drawing itself.
        self._progress.update(self._task, advance=1, loss=f"{value:.6g}")

    def close(self):
        self._progress.stop()


def _progress(enabled: bool, steps: int):
    return _Bar(steps) if enabled and steps > 0 else None
