r"""Input validation that works both outside and inside `jax.jit`, and readable errors from jitted code.

Outside jit (concrete arrays) a failed check raises `ValueError` at once, with a message that says what
was wrong and what to do. Inside jit the same message is attached with `equinox.error_if`, which raises
at run time instead of letting a NaN flow downstream. What that run-time error looks like depends on the jit:

- `equinox.filter_jit`: `equinox.EquinoxRuntimeError`; its text starts with the stack inside jit, then a line
  `equinox.EquinoxRuntimeError: <message>`, then equinox's debugging advice.
- `jax.jit` (jax 0.10): `jax.errors.JaxRuntimeError`, whose text XLA writes: a first line
  `INTERNAL: CpuCallback error calling callback: Traceback (most recent call last):`, about fifteen stack
  lines, then `_EquinoxRuntimeError: <message>` and equinox's advice to use `filter_jit`. The Python
  exception raised in the host callback reaches the user only as that text, so no library can put its own
  message on the first line here.
- `with gdj.readable_errors():` around either (or as a decorator): a `ValueError` whose text is exactly the
  package's message, as outside jit.

Equinox's `EQX_ON_ERROR` environment variable (read once, when equinox is imported) changes what a failed
check does inside jit: `raise` (default, as above); `breakpoint` prints `equinox.EquinoxRuntimeError:
<message>` and opens a debugger in the failing frame; `nan` returns NaN silently (not recommended: the
check exists to prevent exactly that); `off` skips the checks.
"""

from __future__ import annotations

import contextlib
import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool

# Messages attached inside jit so far: `readable_errors` finds them in the text of a run-time error. They are
# static strings, one per kind of check, so the set stays small.
_MESSAGES: set[str] = set()


class checks_as_nan(contextlib.ContextDecorator):
    """While tracing inside this context, a failed check inside jit turns its value into NaN (or leaves an
    integer / boolean unchanged) instead of attaching a run-time error.

    Run-time errors are host callbacks, and JAX does not put programs with host callbacks in its persistent
    compilation cache. Code whose inputs were already validated outside jit (the CLI), or that detects a
    non-finite result and then re-runs the computation with the checks on to report the message
    (`gdj.optimize`), traces under this context so that its compiled programs are cached across runs.
    Concrete checks (outside jit) still raise `ValueError` at once.
    """

    depth = 0

    def __enter__(self):
        checks_as_nan.depth += 1
        return self

    def __exit__(self, *exc):
        checks_as_nan.depth -= 1
        return False


def is_concrete(*xs) -> bool:
    """True when none of `xs` is a tracer (so their values can be inspected in Python)."""
    return not any(isinstance(leaf, jax.core.Tracer) for x in xs for leaf in jax.tree_util.tree_leaves(x))


def check(x: Array, bad: Bool[ArrayLike, "..."], message: str) -> Array:
    """Return `x` unchanged if no entry of `bad` is true; otherwise fail with `message`.

    **Arguments:**

    - `x`: the value that continues downstream (the check is attached to it inside jit).
    - `bad`: boolean array, true where the input is invalid.
    - `message`: what was wrong and how to fix it.

    **Returns:** `x`.

    **Raises:** `ValueError` when `bad` is concrete and has a true entry; inside jit an
    `equinox` runtime error carrying `message` (a `ValueError` under `readable_errors`).
    """
    _MESSAGES.add(message)
    if is_concrete(bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
        return x
    if checks_as_nan.depth:
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(jnp.any(bad), jnp.nan, x)
        return x
    # Route the check through a scalar and tie it to `x` by adding that (zero) scalar: passing the whole
    # of `x` through `error_if` would make a sharded `x` gather onto one device (the error branch is a
    # host callback), while a scalar costs nothing.
    zero = eqx.error_if(jnp.zeros((), dtype=jnp.int8), jnp.any(bad), message)
    if x.dtype == jnp.bool_:
        return x | zero.astype(bool)
    return x + zero.astype(x.dtype)


def check_finite(x: Array, message: str) -> Array:
    """Fail with `message` if `x` has a NaN or infinite entry (see `check`)."""
    return check(x, ~jnp.isfinite(x), message)


def error_message(error: BaseException) -> str | None:
    """The package's check message carried by `error` (a run-time error from jitted code, or the `ValueError`
    raised outside jit), or `None` if it carries none. The longest match wins (messages may nest)."""
    text = str(error)
    found = [m for m in _MESSAGES if m in text]
    return max(found, key=len) if found else None


class _QuietCallbackFailure(logging.Filter):
    """Drops jax's "jax.pure_callback failed" log record (a second copy of the stack, on stderr)."""

    depth = 0  # open `readable_errors` contexts

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "jax._src.callback" and record.getMessage() == "jax.pure_callback failed")


_QUIET = _QuietCallbackFailure()


class readable_errors(contextlib.ContextDecorator):
    """Turn this package's run-time errors from jitted code into `ValueError(message)`, as outside jit.

    Inside `jax.jit` a failed input check (a bad grid, a negative eigenvalue, ...) reaches the user as XLA's
    `JaxRuntimeError`, whose first line is `INTERNAL: CpuCallback error calling callback: Traceback ...` and
    whose message is some twenty lines further down; under `equinox.filter_jit` it is an
    `EquinoxRuntimeError` that starts with a stack. Within this context (or on a function decorated with it)
    such an error is raised again as a `ValueError` whose text is the package's message alone (the original
    is kept as `__cause__`), and jax's duplicate log of the callback's stack is silenced. Other errors pass
    through unchanged.

    ```python
    with gdj.readable_errors():
        law = jax.jit(lambda ts: gdj.sample_law(src, sch, gdj.DDIM(), ts))(ts)
    ```
    """

    def __enter__(self):
        _QUIET.depth += 1
        logging.getLogger("jax._src.callback").addFilter(_QUIET)  # added once however deep
        return self

    def __exit__(self, kind, error, traceback):
        _QUIET.depth -= 1
        if _QUIET.depth == 0:
            logging.getLogger("jax._src.callback").removeFilter(_QUIET)
        if error is None or not isinstance(error, RuntimeError):
            return False
        message = error_message(error)
        if message is None:
            return False
        raise ValueError(message) from error
