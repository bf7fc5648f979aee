"""Gradient-based optimization of any equinox module (schedule, grid, ...) against any scalar loss, with optax.

The whole optimization runs as compiled code: a `lax.while_loop` over iterations (loss and gradient,
stopping test, optax update) inside one jitted function that runs a *chunk* of iterations. Python
dispatches chunks and reads back a few scalars and the chunk's loss history once per chunk (for the progress
bar, and to stop); the next chunk is dispatched before the previous one is read, so the device never waits
for the host. A finished run makes the speculative chunk exit at once. The compiled chunk is cached by
equinox on `(loss_fn, optimizer, the module's structure and shapes)`: a second call does not retrace, and
neither does a different `steps` or `tol` (both are traced arguments).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._core._errors import checks_as_nan, error_message
from .._scale._compress import agrees, compression_for_loss

# Iterations per chunk: the size of a chunk's loss-history buffer, and the most iterations one dispatch runs.
_CHUNK = 128
_RUNNING, _CONVERGED, _MAX_STEPS, _NONFINITE = 0, 1, 2, 3
_DEFAULT_OPTIMIZER = optax.lbfgs()
_STATUS = {_CONVERGED: "converged", _MAX_STEPS: "max_steps", _NONFINITE: "nonfinite"}


class OptimizeResult(NamedTuple):
    """What `optimize` returns."""

    module: Any
    """The best module seen (lowest loss; usually the last), same structure as the input."""
    losses: np.ndarray
    r"""Loss history, shape `(K + 1,)`: `losses[k]` is the loss after `k` optimizer updates, $k = 0..K$, where $K$
    (`num_steps`) is the number of updates made: `steps` when the step cap was reached, fewer when converged."""
    status: str = "max_steps"
    """How the run stopped: `"converged"` (the `tol` test passed), `"max_steps"` (the `steps` cap) or
    `"nonfinite"` (only on the result attached to the `FloatingPointError`)."""

    @property
    def num_steps(self) -> int:
        """The number of optimizer updates made, `len(losses) - 1`."""
        return int(self.losses.shape[0]) - 1


class _Carry(NamedTuple):
    """The loop state, carried from iteration to iteration and from chunk to chunk (on the device)."""

    params: Any  # trainable arrays
    opt_state: Any
    step: Any  # int32: updates made so far
    previous: Any  # loss before the last update (NaN at step 0)
    best_params: Any
    best_value: Any  # +inf until a finite loss is seen
    status: Any  # int32, one of _RUNNING, ...


def optimize(
    loss_fn: Callable[..., Any],
    module: Any,
    *,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 500,
    tol: float = 1e-8,
    progress: bool | Callable[[int, float], Any] = True,
    args: Any = None,
    filter_spec: Any = eqx.is_inexact_array,
) -> OptimizeResult:
    r"""Minimize `loss_fn(module)` (or `loss_fn(module, args)`) over the module's floating-point arrays.

    **Arguments:**

    - `loss_fn`: returns a real scalar; any JAX-traceable function, e.g.
      `lambda sch: gdj.kl(src, gdj.sample_law(src, sch, gdj.DDIM(), ts))`. Keep the same function object
      across calls to reuse the compiled loop (it is part of the cache key).
    - `module`: an equinox module (or any pytree): a schedule, a `LearnableGrid`, a tuple of them...
    - `optimizer`: an optax transformation; default `optax.lbfgs()` (quasi-Newton with a zoom line
      search: tens of iterations on the package's smooth, deterministic losses, where Adam needs thousands).
      Optimizers that need the loss value or a line search are supported: `value`, `grad` and `value_fn`
      are passed to `update` as extra arguments. When the optimizer's last transformation is an optax line
      search (`optax.lbfgs()`, `scale_by_zoom_linesearch`, `scale_by_backtracking_linesearch(store_grad=True)`),
      the loss and gradient it computed at the accepted point are reused: one evaluation per iteration.
    - `steps`: the most optimizer updates to make (the cap).
    - `tol`: the stopping tolerance (`0` runs to the cap unless an exact stationary point is hit). With
      $f_k$ the loss after $k$ updates and $g_k$ its gradient, the run stops after the evaluation at
      $k \ge 1$ when both
        - the relative loss change $|f_k - f_{k-1}| \le \mathrm{tol}\,|f_k|$, and
        - the gradient norm $\|g_k\|_2 \le \sqrt{\mathrm{tol}}\,|f_k|$ (the 2-norm over all trainable
          entries). Near a minimum the remaining decrease is about $\|g\|^2 / h$ for a curvature $h$; with
          $h \sim |f|$ (parameters of order one, like logits) this asks for a relative accuracy of about
          `tol`, as the first test does.
      Both are relative to the loss, so a loss whose minimum is 0 (or that is shifted by a large constant)
      is better run with `tol=0` and a step cap. The default suits float64; float32 losses have a
      relative resolution of ~1e-7, where the change test passes as soon as the loss stalls, and the run
      stops when the gradient test passes too (or at the cap).
    - `progress`: `True` shows a progress bar with the current loss (rich); a callable is called as
      `progress(step, loss)` after each chunk of iterations (from the host, with Python numbers).
    - `args`: passed as the second argument of `loss_fn` if not `None` (data that is not trained; its
      arrays are traced, so new values do not recompile).
    - `filter_spec`: which leaves are trained (equinox filter; default all floating arrays).

    **Returns:** `OptimizeResult(module, losses, status)`: the parameters with the lowest loss seen (so a
    stopping iteration cannot make a converged run worse), the loss history (`num_steps + 1` values) and
    how the run stopped.

    **Raises:** `FloatingPointError` if the loss or its gradient becomes NaN or infinite (with the step number
    and what to try), rather than returning a corrupted module; its `result` attribute holds the best
    module seen before, with `status="nonfinite"`.

    The iterations run in a compiled `lax.while_loop` (no per-step Python dispatch or host sync); the host
    reads the loss history once per chunk of up to 128 iterations (shorter chunks, about 0.1-0.5 s each,
    when showing progress).
    """
    if int(steps) != steps or int(steps) < 0:
        raise ValueError(f"optimize: steps must be an integer >= 0; got {steps}.")
    if not (isinstance(tol, (int, float, np.floating)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"optimize: tol must be a finite number >= 0; got {tol!r}.")
    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    params, static = eqx.partition(module, filter_spec)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("optimize: the module has no trainable floating-point arrays (check filter_spec).")
    # The loop carries the trainable arrays as a flat list (and so do the optimizer's states): a module's own
    # flattening runs Python per node, ~50 times per call through the carry (a third of a short run's time).
    leaves, treedef = jax.tree_util.tree_flatten(params)
    problem = (_Loss(loss_fn), _Key.of(optimizer), (treedef, static), args)
    carry = _start(leaves, problem)
    status, carry, chunks = _run_chunks(carry, problem, _Report(progress, int(steps)), steps, tol)
    losses = np.concatenate(chunks)  # at least one chunk ran
    result = OptimizeResult(_module(problem, carry.best_params), losses, _STATUS[int(status)])
    if status == _NONFINITE:
        raise _nonfinite_error(result, _check_message(problem, carry.params))
    return result


def _run_chunks(carry: _Carry, problem, report, steps, tol):
    """The compiled loop, one chunk of iterations per dispatch until the run stops: `(status, carry, histories)`."""
    chunks, status = [], _RUNNING
    try:
        limit = _CHUNK if report.bar is None and report.callback is None else 4
        steps_, tol_ = np.asarray(steps, np.int32), np.asarray(tol, jnp.result_type(float))
        pending = _chunk(carry, np.asarray(limit, np.int32), steps_, tol_, problem)
        while True:
            # From the second chunk on, a speculative next chunk (it exits at once if `pending` finished) keeps
            # the device busy while the host reads. Not after the first: most runs end there (a speculative
            # dispatch costs ~0.2 ms, a fifth of a whole 20-iteration run on a small problem).
            following = _chunk(pending[0], np.asarray(limit, np.int32), steps_, tol_, problem) if chunks else None
            carry, history, count = pending
            status, step, count, history = jax.device_get((carry.status, carry.step, count, history))
            chunks.append(np.asarray(history[:count]))
            limit = report.chunk_done(int(step), chunks[-1], limit)
            if status != _RUNNING:
                return status, carry, chunks
            if following is None:
                following = _chunk(carry, np.asarray(limit, np.int32), steps_, tol_, problem)
            pending = following
    finally:
        report.close()


def optimize_on_compression(run: Callable[[Any], OptimizeResult], source, exact: float):
    """`run(compressed)` on the spectrum's quadrature compression (`compression_for_loss`: 204 of CIFAR-10's 3072
    modes) when its loss at the start, `losses[0]`, reproduces the exact value `exact` there to 1e-9; else (or
    when the spectrum does not compress) `run(source)`. Returns `(result, the source it ran on)`."""
    compressed = compression_for_loss(source)
    if compressed is not None:
        result = run(compressed)
        if agrees(result.losses[:1], [exact]):
            return result, compressed
    return run(source), source


def _check_message(problem, params) -> str | None:
    """The package's input-check message for the loss at `params`, if one of its checks fails there."""
    try:
        jax.block_until_ready(_checked_value(problem, params))
    except Exception as error:  # a run-time check error from jitted code (or a ValueError from a concrete check)
        return error_message(error)
    return None


def _nonfinite_error(result: OptimizeResult, check: str | None = None) -> FloatingPointError:
    step, value = result.num_steps, float(result.losses[-1])
    what = f"the loss is {value}" if not math.isfinite(value) else f"the gradient is not finite (loss {value:.6g})"
    cause = f" The loss's input check failed there: {check}" if check else ""
    error = FloatingPointError(
        f"optimize: {what} at step {step}.{cause} Lower the learning rate, start from a valid point (a finite "
        "loss), or check that the loss is defined on the whole parameter space."
    )
    error.result = result
    return error


class _Key:
    """A hashable stand-in for an optax transformation, equal for equivalent ones.

    `optax.lbfgs()` and `optax.adam(1e-2)` build new closures on every call: compared by identity, each call of
    `optimize` with an inline optimizer would retrace and recompile. Two transformations are equivalent when
    their functions share code, defaults, closure cells holding equal values (numbers, strings, None, and
    recursively functions and tuples) and the globals they name; anything else (arrays, mutable objects,
    modules, globals) is compared by identity, so equality never claims more than it knows.
    """

    def __init__(self, value):
        self.value = value
        self._signature = _signature(value, depth=0)
        self._hash = hash(self._signature)

    @classmethod
    def of(cls, value) -> _Key:
        """The key of `value`, reused when the same object is optimized with again (its signature walks the
        optimizer's closures: ~0.1 ms, a tenth of a short run). Keeps the last 16 objects alive."""
        key = _RECENT_KEYS.pop(id(value), None)
        if key is None or key.value is not value:
            key = cls(value)
        _RECENT_KEYS[id(value)] = key
        while len(_RECENT_KEYS) > 16:
            _RECENT_KEYS.pop(next(iter(_RECENT_KEYS)))
        return key

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _Key) and (other is self or self._signature == other._signature)


_RECENT_KEYS: dict[int, _Key] = {}
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


class _Same:
    """Identity comparison for a value of unknown semantics (kept alive while the key is)."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value


def _signature(value, depth: int):
    if isinstance(value, _PLAIN):
        return (type(value), value)
    if depth > 24:
        return _Same(value)
    if isinstance(value, tuple):  # includes optax's GradientTransformation NamedTuples
        return (type(value), tuple(_signature(v, depth + 1) for v in value))
    code = getattr(value, "__code__", None)
    if code is None or hasattr(value, "__self__") or not hasattr(value, "__globals__"):
        return _Same(value)
    cells = tuple(_signature(c.cell_contents, depth + 1) if _filled(c) else "<empty>" for c in value.__closure__ or ())
    names = value.__globals__
    globals_ = tuple(
        _Same(names[n]) if not isinstance(names[n], _PLAIN) else names[n] for n in code.co_names if n in names
    )
    defaults = _signature(value.__defaults__ or (), depth + 1)
    kwdefaults = _signature(tuple(sorted((value.__kwdefaults__ or {}).items())), depth + 1)
    return ("function", code, cells, globals_, defaults, kwdefaults)


def _filled(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell (a variable not assigned yet)
        return False
    return True


class _Loss:
    """`loss_fn`, compared by identity (as `jax.jit` does: the same function object reuses the compiled loop)."""

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Loss) and other.value is self.value


def _value_of(problem, params, *, checked: bool = False):
    """The loss. Traced with the package's input checks as NaN (no host callbacks: the compiled loop can enter
    JAX's persistent compilation cache); a non-finite loss is then re-run `checked` to report the message."""
    loss_fn, args = problem[0].value, problem[3]
    full = _module(problem, params)
    with contextlib.nullcontext() if checked else checks_as_nan():
        return loss_fn(full) if args is None else loss_fn(full, args)


def _module(problem, leaves):
    """The module whose trainable arrays are `leaves` (the flat list the loop carries)."""
    treedef, static = problem[2]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


@eqx.filter_jit
def _checked_value(problem, params):
    return _value_of(problem, params, checked=True)


def _strong(tree):
    """The same pytree with no weakly typed arrays (so the loop carry keeps one type from chunk to chunk)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x, tree)


@eqx.filter_jit
def _start(params, problem) -> _Carry:
    """The loop state before the first iteration (one small compiled function: optimizer init, no loss call)."""
    value = jax.eval_shape(lambda p: _value_of(problem, p), params)
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"optimize: loss_fn must return a real scalar; got shape {value.shape}, {value.dtype}.")
    optimizer = optax.with_extra_args_support(problem[1].value)
    # optax mixes its int32 counters with floats (and lbfgs int32 with int64); keep that legal under strict
    # dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    return _strong(
        _Carry(
            params=params,
            opt_state=opt_state,
            step=jnp.zeros((), jnp.int32),
            previous=jnp.full((), jnp.nan, value.dtype),
            best_params=params,
            best_value=jnp.full((), jnp.inf, value.dtype),
            status=jnp.full((), _RUNNING, jnp.int32),
        )
    )


def _reusable_linesearch_state(opt_state):
    """The state of an optax line search that is the optimizer's last transformation, or None.

    Such a line search evaluated the loss and gradient at the point it accepted, which is the next iterate:
    they can be reused instead of evaluated again (`optax.value_and_grad_from_state` does the same). Only the
    last transformation of a chain qualifies, since a later one would change the update.
    """
    state = opt_state
    while True:
        if isinstance(state, optax.ScaleByZoomLinesearchState):
            return state
        if isinstance(state, optax.ScaleByBacktrackingLinesearchState):
            return state if state.grad is not None else None
        if type(state) is tuple and state:  # an optax.chain state (NamedTuple states are not plain tuples)
            state = state[-1]
            continue
        return None


def _value_and_grad(problem, params, opt_state, dtype):
    """Loss (as `dtype`) and gradient at `params`, reused from the line search's state when it holds them."""

    def evaluate(p):
        value, grad = jax.value_and_grad(lambda p: _value_of(problem, p))(p)
        return value.astype(dtype), grad

    stored = _reusable_linesearch_state(opt_state)
    if stored is None or jax.tree_util.tree_structure(stored.grad) != jax.tree_util.tree_structure(params):
        return evaluate(params)
    # The stored value is +inf before the first line search (and after a failed one): evaluate then.
    value = jnp.asarray(stored.value).astype(dtype)
    return jax.lax.cond(jnp.isfinite(value), lambda p: (value, stored.grad), evaluate, params)


def _tree_all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _tree_norm(tree, dtype):
    squares = [jnp.sum(jnp.abs(x) ** 2).astype(dtype) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.sqrt(sum(squares[1:], squares[0]))


@eqx.filter_jit
def _chunk(carry: _Carry, limit, steps, tol, problem):
    """Run up to `limit` iterations (at most `_CHUNK`) from `carry`; stop early at convergence, the cap or a
    non-finite loss. Returns `(carry, history, count)`: the losses of the `count` iterates evaluated."""
    optimizer = optax.with_extra_args_support(problem[1].value)
    dtype = carry.best_value.dtype
    tol = tol.astype(dtype)

    def value_of(p):
        return _value_of(problem, p)

    def update(c: _Carry, value, grad):
        # optax mixes its int32 step counter with floats; keep that legal under strict dtype promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(
                grad, c.opt_state, c.params, value=value, grad=grad, value_fn=value_of
            )
            params = optax.apply_updates(c.params, updates)
        return _strong(params), _strong(opt_state)

    def body(loop):
        c, history, i = loop
        value, grad = _value_and_grad(problem, c.params, c.opt_state, dtype)
        finite = jnp.isfinite(value) & _tree_all_finite(grad)
        improved = finite & (value < c.best_value)
        best_params = jax.tree_util.tree_map(lambda a, b: jnp.where(improved, a, b), c.params, c.best_params)
        grad_norm = _tree_norm(grad, dtype)
        scale = jnp.abs(value)
        converged = (c.step > 0) & (jnp.abs(value - c.previous) <= tol * scale) & (grad_norm <= jnp.sqrt(tol) * scale)
        status = jnp.where(
            ~finite,
            _NONFINITE,
            jnp.where(converged, _CONVERGED, jnp.where(c.step >= steps, _MAX_STEPS, _RUNNING)),
        ).astype(jnp.int32)
        params, opt_state = jax.lax.cond(
            status == _RUNNING, update, lambda c, *_: (c.params, c.opt_state), c, value, grad
        )
        c = _Carry(
            params=params,
            opt_state=opt_state,
            step=c.step + (status == _RUNNING).astype(jnp.int32),
            previous=value,
            best_params=best_params,
            best_value=jnp.where(improved, value, c.best_value),
            status=status,
        )
        return c, history.at[i].set(value), i + 1

    def cond(loop):
        c, _, i = loop
        return (c.status == _RUNNING) & (i < jnp.minimum(limit, _CHUNK))

    history = jnp.full(_CHUNK, jnp.nan, dtype)
    return jax.lax.while_loop(cond, body, (carry, history, jnp.zeros((), jnp.int32)))


class _Report:
    """Progress reporting between chunks, and the choice of the next chunk's length."""

    def __init__(self, progress, steps: int):
        self.callback = progress if callable(progress) else None
        self.bar = _Bar(steps) if progress is True and steps > 0 else None
        self.last = time.perf_counter()
        self.first = True

    def chunk_done(self, step: int, losses: np.ndarray, limit: int) -> int:
        """Report a finished chunk; return the next chunk's length."""
        if losses.shape[0] == 0:
            return limit
        if self.bar is not None:
            self.bar.update(step, float(losses[-1]))
        if self.callback is not None:
            self.callback(step, float(losses[-1]))
        if self.bar is None and self.callback is None:
            return _CHUNK
        # Aim at 0.1-0.5 s between reports (the first chunk includes compilation: not a measure).
        now, elapsed = time.perf_counter(), time.perf_counter() - self.last
        self.last = now
        if self.first:
            self.first = False
            return limit
        if elapsed < 0.1:
            return min(2 * limit, _CHUNK)
        return max(limit // 2, 1) if elapsed > 0.5 else limit

    def close(self):
        if self.bar is not None:
            self.bar.close()


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

    def update(self, step: int, value: float):
        self._progress.update(self._task, completed=step, loss=f"{value:.6g}")

    def close(self):
        self._progress.stop()
