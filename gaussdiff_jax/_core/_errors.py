"""Input validation that works both outside and inside `jax.jit`.

Outside jit (concrete arrays) a failed check raises `ValueError` at once, with a message that says what
was wrong and what to do. Inside jit the same message is attached with `equinox.error_if`, which raises
at run time (an `EqxRuntimeError`) instead of letting a NaN flow downstream.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool


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
    `equinox` runtime error carrying `message`.
    """
    if is_concrete(bad):
        if bool(np.any(np.asarray(bad))):
            raise ValueError(message)
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
