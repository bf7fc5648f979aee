"""Casting whole modules (sources, schedules, samplers, laws) to one floating dtype."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


def cast(tree, dtype):
    """Return `tree` with every floating-point array leaf cast to `dtype` (e.g. `jnp.float32`).

    Use it to run the whole pipeline in float32 (as on TPUs) while float64 is enabled, e.g.
    `cast(GaussianSource(lam), jnp.float32)` and `cast(LinearBeta(), jnp.float32)`.
    Non-floating leaves and static fields are left alone.
    """

    def convert(x):
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(convert, tree)
