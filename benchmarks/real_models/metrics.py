r"""Quality metrics that do not come from the toolkit, and their paired bootstrap intervals.

- **Pathwise error** (`path_sq`): per sample, $\|x^{(N)} - x^{(1000)}\|^2/d$ between an NFE-$N$ run and the same
  network's 1000-step DDIM run from the same initial noise; reported as its root mean (RMS per pixel).
- **Fréchet distance** (`frechet`): $\|\mu_1 - \mu_2\|^2 + \mathrm{tr}\,S_1 + \mathrm{tr}\,S_2 - 2\,\mathrm{tr}(S_2^{1/2}S_1S_2^{1/2})^{1/2}$
  between the Gaussians fitted to generated and held-out patches, in pixels and in a fixed feature space.
- **Feature space** (`RandomFeatures`): a fixed, seeded, untrained two-layer network: 32 random 3x3 convolution
  filters (zero-mean, so they respond to edges and texture, plus 4 with a mean for colour/brightness), ReLU,
  average pooling over a 3x3 grid of regions, a random linear map to 128 features, standardized by the
  *training* patches' feature mean and standard deviation. It is trained on nothing, so it cannot be tuned to the
  test data; being nonlinear (rectified edge responses pooled over regions) it sees higher-order structure
  (edge polarity, local contrast statistics) that the pixel-space Fréchet distance, a function of the first two
  moments only, cannot.
- **Paired bootstrap** (`bootstrap`): all grids share the initial noises, so sample index $j$ means the same
  noise for every grid: each replicate resamples generated indices once (jointly for all grids) and held-out
  indices once, and recomputes every metric. Percentile 95 % intervals, of values and of differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def path_sq(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample squared difference per pixel, `(n,)`, float64."""
    diff = np.asarray(samples, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return np.mean(diff * diff, axis=1)


def moments(x: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(d,)` and covariance `(d, d)` of the rows of `x`, optionally with integer resampling counts.

    Products in `x`'s dtype (float32 inputs: twice as fast, ample for Fréchet distances), results float64."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    w = np.ones(x.shape[0], dtype=x.dtype) if counts is None else counts.astype(x.dtype)
    n = float(w.sum())
    mu = (w @ x).astype(np.float64) / n
    xc = x - mu.astype(x.dtype)
    cov = ((xc * w[:, None]).T @ xc).astype(np.float64) / (n - 1)
    return mu, cov


def sqrtm_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    lam, vec = np.linalg.eigh(s)
    return (vec * np.sqrt(np.maximum(lam, 0.0))) @ vec.T


def frechet(mu1, s1, mu2, s2, *, s2_sqrt: np.ndarray | None = None) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2); `s2_sqrt` may be passed to reuse it."""
    r = sqrtm_psd(s2) if s2_sqrt is None else s2_sqrt
    m = r @ s1 @ r
    tr_sqrt = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), 0.0)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


class RandomFeatures:
    """The fixed random feature map (module docstring). `shape`: one patch as an image, `(p, p, 3)` or `(p, p)`."""

    def __init__(self, shape: tuple[int, ...], *, seed: int = 0, filters: int = 32, features: int = 128):
        self.shape = shape if len(shape) == 3 else (*shape, 1)
        rng = np.random.default_rng(seed)
        channels = self.shape[2]
        w = rng.standard_normal((3, 3, channels, filters + 4))
        w[..., :filters] -= w[..., :filters].mean(axis=(0, 1, 2), keepdims=True)
        self.conv = w / np.sqrt(9 * channels)
        self.bias = 0.1 * rng.standard_normal(filters + 4)
        self.proj = rng.standard_normal((9 * (filters + 4), features)) / np.sqrt(9 * (filters + 4))
        self.offset = np.zeros(features)
        self.scale = np.ones(features)

    def raw(self, x: np.ndarray) -> np.ndarray:
        imgs = np.asarray(x, dtype=np.float64).reshape(-1, *self.shape)
        win = sliding_window_view(imgs, (3, 3), axis=(1, 2))  # (n, p-2, p-2, C, 3, 3)
        h = np.maximum(np.einsum("nijcab,abcf->nijf", win, self.conv, optimize=True) + self.bias, 0.0)
        rows = np.array_split(np.arange(h.shape[1]), 3)
        pooled = [h[:, r][:, :, c].mean(axis=(1, 2)) for r in rows for c in rows]
        return np.concatenate(pooled, axis=1) @ self.proj

    def fit(self, x: np.ndarray) -> RandomFeatures:
        """Standardize with the statistics of `x` (the training patches)."""
        f = self.raw(x)
        self.offset, self.scale = f.mean(0), f.std(0) + 1e-12
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((self.raw(x) - self.offset) / self.scale).astype(np.float32)


class Interval(NamedTuple):
    value: float
    low: float
    high: float


def interval(value: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(value), float(lo), float(hi))


def resampling_counts(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """`(replicates, n)` multinomial counts: each row is one bootstrap resample of n indices."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)])


def bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    n_gen: int,
    n_ref: int,
    *,
    replicates: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Paired bootstrap: `statistic(gen_counts, ref_counts)` returns `{key: value}` for all grids at once; the same
    resample of generated indices is used for every key. Returns `{key: (replicates,)}`."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    for _ in range(replicates):
        g = np.bincount(rng.integers(0, n_gen, n_gen), minlength=n_gen)
        r = np.bincount(rng.integers(0, n_ref, n_ref), minlength=n_ref)
        for k, v in statistic(g, r).items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def quality_statistic(
    samples: dict[str, np.ndarray],
    reference_run: np.ndarray,
    held_out: np.ndarray,
    features,
    extra: dict[str, np.ndarray] | None = None,
):
    """The statistic for `bootstrap`: every grid's path RMS, pixel Fréchet and feature Fréchet distance.

    `samples`: `{grid: (n, d)}` generated with shared initial noises; `reference_run`: the 1000-step run `(n, d)`;
    `extra`: more `{name: (n, d)}` sets scored by the Fréchet distances only (e.g. training patches).
    Returns `(statistic, point)`: the function of resampling counts, and its value on the full sample.
    Keys are `"path/<grid>"`, `"fd_pix/<name>"`, `"fd_feat/<name>"`.
    """
    extra = extra or {}
    every = samples | extra
    path = {k: path_sq(x, reference_run) for k, x in samples.items()}
    feats = {k: features(x) for k, x in every.items()}
    pixels = {k: np.asarray(x, dtype=np.float32) for k, x in every.items()}
    ref_f = features(held_out)
    held = np.asarray(held_out, dtype=np.float32)

    def statistic(g, r):
        out = {}
        mu_r, s_r = moments(held, r)
        mu_rf, s_rf = moments(ref_f, r)
        root, root_f = sqrtm_psd(s_r), sqrtm_psd(s_rf)
        n = g.sum()
        for k in every:
            if k in path:
                out[f"path/{k}"] = float(np.sqrt(g @ path[k] / n))
            out[f"fd_pix/{k}"] = frechet(*moments(pixels[k], g), mu_r, s_r, s2_sqrt=root)
            out[f"fd_feat/{k}"] = frechet(*moments(feats[k], g), mu_rf, s_rf, s2_sqrt=root_f)
        return out

    ones_g = np.ones(next(iter(every.values())).shape[0], dtype=np.int64)
    ones_r = np.ones(held.shape[0], dtype=np.int64)
    return statistic, statistic(ones_g, ones_r)
