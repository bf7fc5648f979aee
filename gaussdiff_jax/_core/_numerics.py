"""Small numerical primitives with well-defined derivatives at the edges of their domains."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def safe_sqrt(x):
    r"""$\sqrt{x}$ whose derivative is taken as 0 at $x = 0$ instead of $\infty$.

    Schedules reach $\bar\alpha = 0$ exactly at $t = 1$ for every parameter value, so the tangent
    there is 0 and $\infty \cdot 0$ would turn gradients into NaN.
    """
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    positive = x > 0
    return y, jnp.where(positive, 0.5 * dx / jnp.where(positive, y, 1.0), 0.0)
