"""The Gaussian data distribution, described by its covariance spectrum in its eigenbasis."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._errors import check, is_concrete


class GaussianSource(eqx.Module):
    r"""A Gaussian data law $\mathcal N(\mu, U\,\mathrm{diag}(\lambda)\,U^\top)$ in its eigen-coordinates.

    Every sampler run with the exact score acts on each eigen-coordinate independently (MATH.md
    section 2), so the eigenvalues $\lambda$ and the mean coordinates $m = U^\top\mu$ are all the
    toolkit needs; the rotation $U$ is never formed.

    **Arguments:**

    - `eigenvalues`: covariance eigenvalues $\lambda_i \ge 0$, shape `(*batch, d)`. Leading axes are a
      batch of independent spectra (sweeps, `jax.vmap`).
    - `mean`: mean in eigen-coordinates $m$, broadcastable to `eigenvalues`; `None` means zero mean.
    - `weights`: per-mode multiplicities, broadcastable to `eigenvalues` (a compressed spectrum where
      one entry stands for `weights[i]` identical modes); `None` means every mode counts once.

    Divergences are sums over modes of per-mode terms times `weights`.
    """

    eigenvalues: Float[Array, "*batch d"]
    mean: Float[Array, "*batch d"] | None = None
    weights: Float[Array, "*batch d"] | None = None

    def __init__(
        self,
        eigenvalues: Float[ArrayLike, "*batch d"],
        mean: Float[ArrayLike, "*batch d"] | None = None,
        weights: Float[ArrayLike, "*batch d"] | None = None,
    ):
        eigenvalues = jnp.asarray(eigenvalues)
        if not jnp.issubdtype(eigenvalues.dtype, jnp.floating):
            eigenvalues = eigenvalues.astype(jnp.result_type(float))
        if eigenvalues.ndim < 1 or eigenvalues.shape[-1] == 0:
            raise ValueError(
                f"GaussianSource needs eigenvalues of shape (*batch, d) with d >= 1; got shape "
                f"{eigenvalues.shape}. Pass a 1-D array of covariance eigenvalues (or a stack of them)."
            )
        eigenvalues = check(
            eigenvalues,
            ~(eigenvalues >= 0),  # also catches NaN
            "GaussianSource: eigenvalues must be finite and >= 0 (covariance eigenvalues); found a "
            "negative or NaN entry. Clamp round-off negatives with jnp.maximum(eigenvalues, 0).",
        )
        eigenvalues = check(
            eigenvalues,
            jnp.isinf(eigenvalues),
            "GaussianSource: eigenvalues must be finite; found inf.",
        )
        self.eigenvalues = eigenvalues
        self.mean = None if mean is None else _broadcast_like(mean, eigenvalues, "mean")
        self.weights = None if weights is None else _broadcast_like(weights, eigenvalues, "weights")
        if self.weights is not None:
            self.weights = check(
                self.weights,
                ~(self.weights >= 0),
                "GaussianSource: weights (mode multiplicities) must be finite and >= 0.",
            )

    @property
    def dim(self) -> int:
        """Number of modes `d` stored (the last axis), not counting multiplicities."""
        return self.eigenvalues.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape of the spectrum."""
        return self.eigenvalues.shape[:-1]

    @property
    def mean_or_zero(self) -> Float[Array, "*batch d"]:
        """The mean coordinates, zeros if none were given."""
        if self.mean is None:
            return jnp.zeros_like(self.eigenvalues)
        return self.mean

    def total(self, per_mode: Float[Array, "*batch d"]) -> Float[Array, "*batch"]:
        """Sum a per-mode quantity over modes, counting each mode with its multiplicity."""
        if self.weights is not None:
            per_mode = per_mode * self.weights
        return jnp.sum(per_mode, axis=-1)


def _broadcast_like(x: ArrayLike, like: Array, name: str) -> Array:
    x = jnp.asarray(x, dtype=like.dtype)
    try:
        shape = np.broadcast_shapes(x.shape, like.shape)
    except ValueError:
        raise ValueError(
            f"GaussianSource: {name} of shape {x.shape} does not broadcast against eigenvalues of "
            f"shape {like.shape}. Give one value per eigenvalue, in the same (*batch, d) layout."
        ) from None
    if shape != like.shape:
        raise ValueError(
            f"GaussianSource: {name} of shape {x.shape} would enlarge eigenvalues of shape "
            f"{like.shape} to {shape}. Batch the eigenvalues explicitly instead."
        )
    if is_concrete(x) and name == "mean" and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError("GaussianSource: mean must be finite; found NaN or inf.")
    return jnp.broadcast_to(x, like.shape)
