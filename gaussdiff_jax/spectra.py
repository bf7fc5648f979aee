"""Bundled reference covariance spectra (see `gaussdiff_jax/data/README.md` for provenance)."""

from __future__ import annotations

from importlib import resources

import numpy as np

from ._source import GaussianSource

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
    - `"digits"`: scikit-learn's 8x8 digits, pixels in [0, 1], d = 64 (2 zeros).
    - `"adsn_china"`: ADSN model of a 128x128 crop of scikit-learn's `china.jpg`, d = 49 152 (32 769 zeros).

    Provenance and checksums: `gaussdiff_jax/data/README.md`; the last two are made by `data/make_spectra.py`.
    """
    if name not in _FILES:
        raise ValueError(f"unknown spectrum {name!r}; available: {', '.join(available())}.")
    with resources.files(__package__).joinpath("data", _FILES[name]).open("rb") as f:
        return np.load(f).astype(np.float64)


def source(name: str) -> GaussianSource:
    """The bundled spectrum `name` as a zero-mean `GaussianSource` (default float dtype)."""
    return GaussianSource(load(name))
