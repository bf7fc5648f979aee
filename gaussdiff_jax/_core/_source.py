"""The Gaussian data distribution, described by its covariance spectrum in its eigenbasis."""

from __future__ import annotations

import math

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

    @property
    def num_modes(self) -> Float[Array, "*batch"]:
        """Number of modes represented, counting multiplicities (`dim` when there are no weights)."""
        if self.weights is None:
            return jnp.full(self.batch_shape, self.dim, dtype=self.eigenvalues.dtype)
        return jnp.sum(self.weights, axis=-1)

    # --- constructors from data (issue 4) ---

    @classmethod
    def from_covariance(
        cls,
        covariance: Float[ArrayLike, "*batch d d"],
        mean: Float[ArrayLike, "*batch d"] | None = None,
        *,
        rtol: float | None = None,
    ) -> GaussianSource:
        r"""The law $\mathcal N(\mu, \Sigma)$ from an explicit covariance matrix (dense eigendecomposition).

        **Arguments:**

        - `covariance`: symmetric positive semi-definite $\Sigma$, shape `(*batch, d, d)`.
        - `mean`: $\mu$ in the original coordinates, shape `(*batch, d)`; `None` means zero mean.
        - `rtol`: eigenvalues in $[-\text{rtol}\,\lambda_{\max}, 0)$ are round-off and are set to 0; more
          negative ones are an error. Default `100 * d * eps` of the dtype.

        **Returns:** a `GaussianSource` with eigenvalues in decreasing order and mean coordinates
        $m = U^\top\mu$ for the eigenbasis $U$ of `jnp.linalg.eigh` (columns reordered likewise).
        Costs $O(d^3)$; for $n < d$ samples use `from_samples`, which never forms $\Sigma$.
        """
        cov = jnp.asarray(covariance)
        if not jnp.issubdtype(cov.dtype, jnp.floating):
            cov = cov.astype(jnp.result_type(float))
        if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2] or cov.shape[-1] == 0:
            raise ValueError(
                f"from_covariance: covariance must have shape (*batch, d, d) with d >= 1; got {cov.shape}."
            )
        d = cov.shape[-1]
        if rtol is not None and not (math.isfinite(rtol) and rtol >= 0):
            raise ValueError(f"from_covariance: rtol must be finite and >= 0; got {rtol}.")
        tol = 100 * d * float(jnp.finfo(cov.dtype).eps) if rtol is None else float(rtol)
        cov = check(cov, ~jnp.isfinite(cov), "from_covariance: covariance has a NaN or infinite entry.")
        scale = jnp.max(jnp.abs(cov), axis=(-2, -1), keepdims=True)
        cov = check(
            cov,
            jnp.abs(cov - jnp.swapaxes(cov, -1, -2)) > tol * scale,
            "from_covariance: covariance is not symmetric (beyond round-off). Pass (C + C.T) / 2 if "
            "the asymmetry is numerical.",
        )
        sym = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        lam, vecs = jnp.linalg.eigh(sym)
        lam, vecs = lam[..., ::-1], vecs[..., :, ::-1]
        top = jnp.maximum(lam[..., :1], 0.0)
        lam = check(
            lam,
            lam < -tol * top,
            "from_covariance: covariance is not positive semi-definite (an eigenvalue is clearly negative).",
        )
        lam = jnp.maximum(lam, 0.0)  # round-off negatives of a singular covariance
        m = None
        if mean is not None:
            mu = jnp.asarray(mean).astype(lam.dtype)
            if mu.ndim < 1 or mu.shape[-1] != d or not _broadcasts_to(mu.shape[:-1], lam.shape[:-1]):
                raise ValueError(
                    f"from_covariance: mean must have shape (*batch, {d}) with a batch shape that broadcasts "
                    f"to the covariance's {lam.shape[:-1]}; got {mu.shape}. Stack the covariances to match."
                )
            mu = check(mu, ~jnp.isfinite(mu), "from_covariance: mean has a NaN or infinite entry.")
            m = jnp.einsum("...ij,...i->...j", vecs, mu)  # m = U^T mu
            m = jnp.broadcast_to(m, lam.shape)
        return cls(lam, m)

    @classmethod
    def from_samples(
        cls,
        samples: Float[ArrayLike, "*batch n d"],
        *,
        ddof: int = 1,
        center: bool = True,
    ) -> GaussianSource:
        r"""The Gaussian fitted to samples (principal component analysis): sample mean and covariance.

        **Arguments:**

        - `samples`: shape `(*batch, n, d)`, one sample per row.
        - `ddof`: the covariance is $X_c^\top X_c/(n - \text{ddof})$ with $X_c$ the centred samples
          (`ddof=1`, the default, is `numpy.cov`'s unbiased estimate).
        - `center`: subtract the sample mean (and keep it as the source's mean). With `False` the
          samples are taken as already centred around a zero mean.

        **Returns:** a `GaussianSource` of dimension `d`, eigenvalues in decreasing order. Uses a thin
        SVD of $X_c$ ($O(nd\min(n, d))$, never the $d \times d$ covariance). When $n \le d$ the
        covariance has rank at most $n - 1$ ($n$ with `center=False`): the remaining eigenvalues are
        exactly 0 whatever the size of the mean (singular values below round-off are set to 0 too).
        The mean's component in that null space is put on one null mode; any orthonormal basis of a
        degenerate eigenspace is an eigenbasis, and every divergence depends only on each eigenspace's
        mean energy.
        """
        x = jnp.asarray(samples)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        if x.ndim < 2 or x.shape[-1] == 0:
            raise ValueError(f"from_samples: samples must have shape (*batch, n, d) with d >= 1; got {x.shape}.")
        n, d = x.shape[-2], x.shape[-1]
        if int(ddof) != ddof or ddof < 0 or n - ddof < 1:
            raise ValueError(
                f"from_samples: need an integer ddof >= 0 and n - ddof >= 1 samples; got n = {n}, ddof = {ddof}."
            )
        x = check(x, ~jnp.isfinite(x), "from_samples: samples contain a NaN or infinite entry.")
        mu = jnp.mean(x, axis=-2) if center else jnp.zeros(x.shape[:-2] + (d,), dtype=x.dtype)
        xc = x - mu[..., None, :]
        _, s, vt = jnp.linalg.svd(xc, full_matrices=False)  # s: (*batch, k), vt: (*batch, k, d)
        k = s.shape[-1]
        eps = float(jnp.finfo(x.dtype).eps)
        s = jnp.where(s <= max(n, d) * eps * s[..., :1], 0.0, s)
        if center and k == n:
            # Centred rows sum to 0, so the rank is at most n - 1: the last singular value is centring
            # round-off, which scales with |mean|, not with the spread, and can survive the threshold.
            s = s.at[..., n - 1].set(0.0)
        lam = s**2 / (n - ddof)
        coords = jnp.einsum("...kd,...d->...k", vt, mu)
        if k < d:
            # Null space: eigenvalue 0, dimension d - k. Put the mean's remaining norm on its first mode.
            # The norm of the residual mu - V V^T mu, not sqrt(|mu|^2 - |V^T mu|^2): no cancellation when
            # the mean lies almost entirely in the row space.
            residual = mu - jnp.einsum("...kd,...k->...d", vt, coords)
            rest = jnp.sqrt(jnp.sum(residual * residual, axis=-1))
            pad = jnp.zeros(x.shape[:-2] + (d - k,), dtype=lam.dtype)
            lam = jnp.concatenate([lam, pad], axis=-1)
            coords = jnp.concatenate([coords, pad.at[..., 0].set(rest)], axis=-1)
        return cls(lam, coords if center else None)

    @classmethod
    def from_image(cls, image: Float[ArrayLike, "M N *C"], *, mean: bool = True) -> GaussianSource:
        r"""The ADSN texture model of an image: a stationary (circulant) Gaussian, diagonalized by the FFT.

        Asymptotic discrete spot noise (Galerne, Gousseau, Morel 2011): with the per-channel mean
        $\bar u_c$ and the texton $t_c = (u_c - \bar u_c)/\sqrt{MN}$, the model is
        $X_c = \bar u_c + t_c \star W$ for one white noise $W$ on the $M \times N$ torus (circular
        convolution). Its covariance, of size $d = MNC$, is block-diagonal in the Fourier basis: at
        frequency $\xi$ the $C \times C$ block is $\hat t(\xi)\hat t(\xi)^*$, of rank one, with eigenvalue
        $\sum_c|\hat t_c(\xi)|^2$ (unnormalized DFT) and $C - 1$ zeros.

        **Arguments:**

        - `image`: shape `(M, N)` (grey) or `(M, N, C)` (channels last), any real range.
        - `mean`: include the model's mean image $\bar u$ (it lies in the zero eigenspace at frequency
          0, since the texton has zero mean; its coordinate is $\|\bar u\| = \sqrt{MN\sum_c\bar u_c^2}$).

        **Returns:** a `GaussianSource` of dimension $MNC$: the $MN$ per-frequency eigenvalues (in
        `numpy.fft.fft2` order, row-major, frequency 0 first and set to exactly 0) followed by
        $MN(C - 1)$ zeros, the layout of the bundled `spectra.load("adsn_china")` (and of
        `"adsn_fabric"`). The FFT runs in float64 numpy on a concrete image (not under `jax.jit`); the
        result has the image's dtype if that is float32 or float64, else the default float dtype
        (integer images, e.g. `uint8`).
        """
        if not is_concrete(image):
            raise ValueError("from_image: the image must be a concrete array (call it outside jax.jit / vmap).")
        in_dtype = np.asarray(image).dtype
        dtype = in_dtype if in_dtype in (np.float32, np.float64) else jnp.result_type(float)
        u = np.asarray(image, dtype=np.float64)
        if u.ndim == 2:
            u = u[:, :, None]
        if u.ndim != 3 or u.shape[0] < 1 or u.shape[1] < 1 or u.shape[2] < 1:
            raise ValueError(f"from_image: image must have shape (M, N) or (M, N, C); got {np.shape(image)}.")
        if not np.all(np.isfinite(u)):
            raise ValueError("from_image: image has a NaN or infinite pixel.")
        M, N, C = u.shape
        ubar = u.mean(axis=(0, 1))
        texton = (u - ubar) / math.sqrt(M * N)
        spectrum = np.sum(np.abs(np.fft.fft2(texton, axes=(0, 1))) ** 2, axis=-1).reshape(-1)
        spectrum[0] = 0.0  # the texton has zero mean: exactly 0 at frequency 0
        lam = np.concatenate([spectrum, np.zeros(M * N * (C - 1))])
        m = None
        if mean:
            m = np.zeros_like(lam)
            m[0] = math.sqrt(M * N * float(np.sum(ubar**2)))
            m = jnp.asarray(m, dtype=dtype)
        return cls(jnp.asarray(lam, dtype=dtype), m)

    @classmethod
    def power_law(
        cls,
        dim: int,
        *,
        exponent: float = 1.0,
        scale: float = 1.0,
        dtype=None,
    ) -> GaussianSource:
        r"""The synthetic spectrum $\lambda_j = \text{scale}\cdot j^{-\text{exponent}}$, $j = 1, \dots, d$ (zero mean).

        Natural images have roughly power-law covariance spectra. The array has `dim` entries, computed
        in float64 and stored as `dtype` (default: the default float dtype); for $d$ too large to store
        use `gaussdiff_jax.compress_power_law`, which never forms it.
        """
        dim = int(dim)
        if dim < 1:
            raise ValueError(f"power_law: dim must be >= 1; got {dim}.")
        if not (math.isfinite(exponent) and exponent >= 0):
            raise ValueError(f"power_law: exponent must be finite and >= 0; got {exponent}.")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"power_law: scale must be finite and > 0; got {scale}.")
        j = np.arange(1, dim + 1, dtype=np.float64)
        dtype = jnp.result_type(float) if dtype is None else dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"power_law: dtype must be a floating dtype; got {dtype}.")
        return cls(jnp.asarray(scale * j ** (-float(exponent)), dtype=dtype))


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


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
