"""Bundled reference covariance spectra (see `gaussdiff_jax/data/README.md` for provenance)."""

from __future__ import annotations

from importlib import resources

import jax.numpy as jnp
import numpy as np

from ._core._source import GaussianSource

_FILES = {
    "cifar10": "cifar10_icml2025.npy",
    "cifar10_icml2025": "cifar10_icml2025.npy",
    "cifar10_preprint2024": "cifar10_preprint2024.npy",
    "adsn_fabric": "adsn_fabric.npy",
    "digits": "digits.npy",
    "adsn_china": "adsn_china.npy",
}


def available() -> list[str]:
    """Names accepted by `load`."""
    return sorted(_FILES)


def load(name: str) -> np.ndarray:
    """Eigenvalues of a bundled reference spectrum, as a float64 numpy array of shape `(d,)`.

    - `"cifar10"` (= `"cifar10_icml2025"`): CIFAR-10 training set, d = 3072, pixels in [-1, 1];
      9 eigenvalues are exactly 0 (negative round-off clamped).
    - `"cifar10_preprint2024"`: the same covariance from the 2024 preprint, all > 0.
    - `"adsn_fabric"`: ADSN texture model of a 256x256 RGB image, d = 196 608 (131 072 zeros).
    - `"digits"`: unbiased sample covariance of scikit-learn's 1797 digits (8x8 grey, pixels / 16 in
      [0, 1]), d = 64; 3 zeros (pixels blank in every image).
    - `"adsn_china"`: ADSN texture model (`GaussianSource.from_image`) of the central 128x128 crop of
      scikit-learn's `china.jpg`, pixels / 255, d = 49 152: 16 384 per-frequency eigenvalues in
      `numpy.fft.fft2` order (frequency 0 is 0) then 32 768 zeros.

    The order is as stored: increasing for the CIFAR-10 files, decreasing for `"digits"`,
    per-frequency (unsorted) then zeros for the ADSN ones. Provenance and checksums:
    `gaussdiff_jax/data/README.md`; the last two are made by `gaussdiff_jax/data/make_spectra.py`
    (scikit-learn is needed only to rerun it).

    **Raises:** `ValueError` for an unknown name.
    """
    if name not in _FILES:
        raise ValueError(f"unknown spectrum {name!r}; available: {', '.join(available())}.")
    with resources.files(__package__).joinpath("data", _FILES[name]).open("rb") as f:
        return np.load(f).astype(np.float64)


def source(name: str, *, dtype=None) -> GaussianSource:
    """The bundled spectrum `name` (see `load`) as a zero-mean `GaussianSource`.

    `dtype`: the eigenvalues' dtype, e.g. `jnp.float32`; default the default float dtype (float64
    only when x64 is enabled).
    """
    lam = load(name)
    return GaussianSource(jnp.asarray(lam, dtype=jnp.result_type(float) if dtype is None else dtype))
