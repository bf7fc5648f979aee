r"""The one padding rule of the scale package: extra modes that add exactly 0, extra spectra that are copies.

- **Modes** (the last axis) are padded with eigenvalue 1, mean 0 and weight 0. A weight-0 mode adds
  exactly 0 to every divergence, and eigenvalue 1 keeps every per-mode formula finite (no singular
  target, no division by 0), so padded spectra give bit-identical totals up to summation order.
- **Spectra** (the first axis of an `(S, d)` batch) are padded with copies of the last spectrum: valid
  inputs whose results the caller drops.

Used by `stack_sources` (spectra of different sizes in one sweep) and by the sharding (a multiple of the
device count). The engine pads bare eigenvalues for speed (`_core/_law.py`); `pad_axis` is the same
operation on an array.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array

from .._core._source import GaussianSource


def _amount(size: int, multiple: int | None, to: int | None) -> int:
    if (multiple is None) == (to is None):
        raise ValueError("padding: give exactly one of multiple= and to=.")
    if to is not None:
        if to < size:
            raise ValueError(f"padding: cannot pad an axis of {size} entries to {to}.")
        return to - size
    if multiple < 1:
        raise ValueError(f"padding: multiple must be >= 1; got {multiple}.")
    return -size % multiple


def pad_axis(x: Array, *, multiple: int | None = None, to: int | None = None, axis: int = -1, value=0.0) -> Array:
    """Pad `x` along `axis` with `value` up to a multiple of `multiple` entries, or to `to` entries."""
    axis = axis % x.ndim
    pad = _amount(x.shape[axis], multiple, to)
    if pad == 0:
        return x
    width = [(0, 0)] * x.ndim
    width[axis] = (0, pad)
    return jnp.pad(x, width, constant_values=value)


def pad_modes(source: GaussianSource, *, multiple: int | None = None, to: int | None = None) -> GaussianSource:
    """`source` with weight-0 modes (eigenvalue 1, mean 0) appended on its last axis: `(*batch, d')`."""
    pad = _amount(source.dim, multiple, to)
    if pad == 0:
        return source
    weights = jnp.ones_like(source.eigenvalues) if source.weights is None else source.weights
    return GaussianSource(
        pad_axis(source.eigenvalues, to=source.dim + pad, value=1.0),
        None if source.mean is None else pad_axis(source.mean, to=source.dim + pad),
        pad_axis(weights, to=source.dim + pad),
    )


def pad_spectra(source: GaussianSource, *, multiple: int) -> GaussianSource:
    """An `(S, d)` source padded on its spectra axis with copies of the last spectrum."""
    pad = _amount(source.eigenvalues.shape[0], multiple, None)
    if pad == 0:
        return source

    def edge(x):
        return None if x is None else jnp.pad(x, ((0, pad), (0, 0)), mode="edge")

    return GaussianSource(edge(source.eigenvalues), edge(source.mean), edge(source.weights))
