"""Regenerate the spectra computed from data that scikit-learn ships (not needed at run time).

Run from the repository root with scikit-learn installed: `python gaussdiff_jax/data/make_spectra.py`.

- `digits.npy`: `sklearn.datasets.load_digits()` (1797 grey 8x8 images), pixels divided by 16 (range
  [0, 1]), unbiased sample covariance (`numpy.cov`), `numpy.linalg.eigvalsh`, round-off negatives clamped
  to 0, decreasing order; float64, d = 64. Three pixels are blank in every image: their rows and
  columns of the covariance are exactly zero, so they contribute three exact zero eigenvalues; the
  eigendecomposition runs on the other 61 pixels (a dense `eigvalsh` of the full 64x64 matrix would
  return those zeros as +-1e-17 round-off, one of which would survive the clamp).
- `adsn_china.npy`: the ADSN texture model (`GaussianSource.from_image`) of the central 128x128 crop of
  `sklearn.datasets.load_sample_image("china.jpg")`, pixels divided by 255; float64, d = 49 152
  (16 384 per-frequency eigenvalues in `numpy.fft.fft2` order, then 32 768 zeros).
"""

from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def digits_spectrum() -> np.ndarray:
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    cov = np.cov(X.T)
    live = np.any(cov != 0, axis=0)  # blank pixels: exactly zero rows / columns
    lam = np.linalg.eigvalsh(cov[np.ix_(live, live)])[::-1]
    lam = np.concatenate([np.maximum(lam, 0.0), np.zeros(int(np.sum(~live)))])
    return lam


def china_adsn_spectrum() -> np.ndarray:
    from sklearn.datasets import load_sample_image

    import gaussdiff_jax as gdj

    image = load_sample_image("china.jpg").astype(np.float64) / 255.0
    M, N = image.shape[:2]
    crop = image[(M - 128) // 2 : (M + 128) // 2, (N - 128) // 2 : (N + 128) // 2]
    return np.asarray(gdj.GaussianSource.from_image(crop, mean=False).eigenvalues, dtype=np.float64)


if __name__ == "__main__":
    import jax

    jax.config.update("jax_enable_x64", True)
    for name, fn in (("digits", digits_spectrum), ("adsn_china", china_adsn_spectrum)):
        lam = fn()
        np.save(HERE / f"{name}.npy", lam)
        print(f"{name}: d = {lam.size}, sum = {lam.sum():.6f}, max = {lam.max():.6f}, zeros = {(lam == 0).sum()}")
