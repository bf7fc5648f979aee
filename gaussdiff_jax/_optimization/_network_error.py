r"""Measure a trained network's denoiser error per noise level and eigen-direction of the data (`ErrorProfile`).

For held-out data $x_0$ (rows of `data`), each measured training step $i$ of a `Discrete` table, noise
$x_i = \alpha_ix_0 + \sigma_iz$ and the network's prediction converted to $\hat x_0$ (from $\varepsilon$, $x_0$ or $v$),
the error is taken against the exact posterior mean of the Gaussian fitted to the data,
$D(x_i) = \mu + U\,\mathrm{diag}\big(\tfrac{\alpha_i\lambda}{\alpha_i^2\lambda + \sigma_i^2}\big)U^\top(x_i - \alpha_i\mu)$: the part of the network's
output that the closed-form model does not already contain. Its second moment per eigen-direction,
$\mathbb E[(U^\top(\hat x_0 - D))_j^2]$, is the `ErrorProfile` that `sample_law(..., model_error=...)` propagates.
`reference="data"` measures instead the excess of the network's error over the Gaussian posterior error,
$\max(0, \mathbb E[(U^\top(\hat x_0 - x_0))_j^2] - \lambda_j\sigma_i^2/(\alpha_i^2\lambda_j + \sigma_i^2))$.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._errors import check
from .._core._model_error import ErrorProfile
from .._core._source import GaussianSource
from .._schedule import Discrete

Parameterization = Literal["eps", "x0", "v"]


class GaussianFit(NamedTuple):
    """The Gaussian fitted to data: mean `(d,)`, eigenvalues `(d,)` (descending), eigenvectors `(d, d)` (columns)."""

    mean: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    def source(self, floor: float = 0.0) -> GaussianSource:
        """The `GaussianSource` in this fit's eigen-coordinates (eigenvalues floored at `floor`)."""
        lam = np.maximum(self.eigenvalues, floor)
        return GaussianSource(jnp.asarray(lam), mean=jnp.asarray(self.eigenvectors.T @ self.mean))


def fit_gaussian(data: Float[np.ndarray, "n d"]) -> GaussianFit:
    """Mean and eigendecomposition of the sample covariance of `data` (rows), eigenvalues descending, >= 0."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"data must be an (n, d) array of n >= 2 samples; got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("data has NaN or infinite entries.")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    lam, vec = np.linalg.eigh(cov)
    order = np.argsort(lam)[::-1]
    return GaussianFit(mean, np.maximum(lam[order], 0.0), vec[:, order])


def measured_steps(schedule: Discrete, num_levels: int) -> np.ndarray:
    """Training steps spread evenly in log-SNR over the table, always including 0 and T - 1 (ascending)."""
    table = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    log_snr = np.log(table) - np.log1p(-table)  # decreasing in the index
    targets = np.linspace(log_snr[-1], log_snr[0], max(int(num_levels), 2))
    idx = np.searchsorted(-log_snr, -targets)  # -log_snr is increasing
    idx = np.clip(idx, 0, table.size - 1)
    return np.unique(np.concatenate([[0, table.size - 1], idx]))


def _to_x0(out, x, alpha, sigma, parameterization):
    if parameterization == "eps":
        return (x - sigma * out) / alpha
    if parameterization == "x0":
        return out
    if parameterization == "v":
        return alpha * x - sigma * out
    raise ValueError(f"parameterization must be 'eps', 'x0' or 'v'; got {parameterization!r}.")


@eqx.filter_jit
def _level_moments(denoiser, x0, z, step, alpha, sigma, mean, lam, vec, parameterization, reference):
    x = alpha * x0 + sigma * z
    out = denoiser(x, jnp.full((x.shape[0],), step, dtype=jnp.int32))
    out = check(out, ~jnp.isfinite(out), "the denoiser returned NaN or infinite values.")
    x0_hat = _to_x0(out, x, alpha, sigma, parameterization)
    coords_hat = (x0_hat - mean) @ vec
    if reference == "gaussian":
        gain = alpha * lam / (alpha**2 * lam + sigma**2)
        coords_ref = gain * ((x - alpha * mean) @ vec)
        return jnp.mean((coords_hat - coords_ref) ** 2, axis=0)
    posterior = lam * sigma**2 / (alpha**2 * lam + sigma**2)
    return jnp.maximum(jnp.mean((coords_hat - (x0 - mean) @ vec) ** 2, axis=0) - posterior, 0.0)


def measure_error_profile(
    denoiser: Callable,
    data: Float[np.ndarray, "n d"],
    schedule: Discrete,
    *,
    parameterization: Parameterization = "eps",
    fit: GaussianFit | None = None,
    num_levels: int = 48,
    key: jax.Array | None = None,
    reference: Literal["gaussian", "data"] = "gaussian",
) -> tuple[ErrorProfile, GaussianFit]:
    r"""The network's denoiser error per training step and eigen-direction (module docstring).

    **Arguments:**

    - `denoiser`: a JAX callable `denoiser(x, t)` with `x` of shape `(n, d)` (noised data, VP scale) and `t` of
      shape `(n,)` (int32 training steps), returning `(n, d)` in the given `parameterization`.
    - `data`: held-out samples `(n, d)`, in the network's data space (e.g. pixels in [-1, 1]).
    - `schedule`: the network's `Discrete` table.
    - `parameterization`: `"eps"`, `"x0"` or `"v"` ($v = \alpha\varepsilon - \sigma x_0$).
    - `fit`: the Gaussian model (default: `fit_gaussian(data)`).
    - `num_levels`: measured training steps (spread evenly in log-SNR; steps 0 and T - 1 always included).
    - `key`: PRNG key for the noise (default `jax.random.key(0)`).
    - `reference`: `"gaussian"` (error against the Gaussian posterior mean) or `"data"` (excess error against $x_0$).

    **Returns:** `(profile, fit)`: the `ErrorProfile` in the fit's eigen-coordinates (modes ordered by descending
    eigenvalue) and the fit. **Raises:** `ValueError` for a wrong output shape, NaN outputs or bad data.
    """
    if not isinstance(schedule, Discrete):
        raise ValueError("measure_error_profile: the network's schedule must be a gdj.Discrete table (training steps).")
    x0 = np.asarray(data, dtype=np.float64)
    fit = fit_gaussian(x0) if fit is None else fit
    if x0.ndim != 2 or x0.shape[1] != fit.mean.shape[0]:
        raise ValueError(f"data must have shape (n, {fit.mean.shape[0]}); got {x0.shape}.")
    steps = measured_steps(schedule, num_levels)
    table = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    key = jax.random.key(0) if key is None else key
    z = jax.random.normal(key, x0.shape, dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    dtype = z.dtype
    x0j, mean, lam, vec = (jnp.asarray(a, dtype=dtype) for a in (x0, fit.mean, fit.eigenvalues, fit.eigenvectors))
    _check_output_shape(denoiser, x0j[:2], int(steps[0]))
    moments = []
    for step in steps:
        alpha, sigma = (jnp.asarray(v, dtype=dtype) for v in (np.sqrt(table[step]), np.sqrt(1 - table[step])))
        try:
            m = _level_moments(denoiser, x0j, z, int(step), alpha, sigma, mean, lam, vec, parameterization, reference)
        except Exception as error:  # an equinox runtime error from the finiteness check
            if "NaN or infinite" in str(error):
                raise ValueError(f"the denoiser returned NaN or infinite values at training step {int(step)}.") from None
            raise
        moments.append(np.asarray(m))
    log_snr = np.log(table[steps]) - np.log1p(-table[steps])  # decreasing in the step
    order = np.argsort(log_snr)
    profile = ErrorProfile(jnp.asarray(log_snr[order]), jnp.asarray(np.stack(moments)[order]))
    return profile, fit


def _check_output_shape(denoiser, x: Array, step: int):
    try:
        out = jax.eval_shape(denoiser, x, jnp.full((x.shape[0],), step, dtype=jnp.int32))
    except Exception as error:
        raise ValueError(
            f"calling the denoiser as denoiser(x, t) with x of shape {x.shape} and t of shape ({x.shape[0]},) int32 "
            f"failed: {type(error).__name__}: {error}"
        ) from None
    if getattr(out, "shape", None) != x.shape:
        raise ValueError(
            f"the denoiser must return an array of the shape of x, {x.shape}; got {getattr(out, 'shape', out)}."
        )
