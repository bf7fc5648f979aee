r"""Natural image patches from scikit-learn's bundled sample images, with a held-out split by image region.

**Datasets.** `"rgb8"`: 8x8 RGB patches ($d = 192$); `"grey16"`: 16x16 grey patches ($d = 256$, ITU-R 601
luma, rounded back to 8 bits). Both from `sklearn.datasets.load_sample_images()` (china.jpg, flower.jpg,
427x640 each), patch stride 4 pixels.

**Held-out split (disjoint regions).** Each image is cut into 64x64-pixel blocks; a seeded 25 % of the blocks of
each image are held out. A training patch lies entirely in training blocks; a held-out patch lies entirely in
held-out blocks *and* at least `MARGIN` = 8 pixels from every training pixel. So no held-out patch shares a pixel
with a training patch, nor is it a shifted copy of one by less than 8 pixels (one 8x8 patch width): held-out
patches are not near-duplicates of training ones. Patches straddling the two kinds of block are dropped.

**Dequantization.** Pixels are 8-bit integers $u$; a patch is $x = (u + \epsilon)/128 - 1 \in [-1, 1]$ with
$\epsilon \sim U[0, 1)$ i.i.d. (the standard uniform dequantization of likelihood models). Training draws fresh
$\epsilon$ every batch; evaluation data use one seeded draw. The noise adds $\Delta^2/12 = (1/128)^2/12 = 5.09
\times 10^{-6}$ to every covariance eigenvalue (`DEQUANT_VARIANCE`): that is the floor of the spectrum the
Gaussian model uses. Unlike data with blank pixels, these natural patches have no eigenvalue near it (smallest
5.8e-5 for rgb8, 1.7e-3 for grey16), so the floor never binds; coarser floors (1e-3) are studied as objectives.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

DATASETS = ("rgb8", "grey16")
BLOCK = 64
HELD_OUT_FRACTION = 0.25
MARGIN = 8
STRIDE = 4
DEQUANT_VARIANCE = (1.0 / 128.0) ** 2 / 12.0
_LUMA = np.array([0.299, 0.587, 0.114])


class Patches(NamedTuple):
    """Integer patches of one dataset, flattened (pixel-major, channel-minor), and where they came from."""

    train: np.ndarray
    """uint8, `(n_train, d)`."""
    test: np.ndarray
    """uint8, `(n_test, d)`."""
    shape: tuple[int, ...]
    """One patch as an image: `(p, p, 3)` or `(p, p)`."""
    train_origin: np.ndarray
    """int, `(n_train, 3)`: image index, top row, left column."""
    test_origin: np.ndarray
    """int, `(n_test, 3)`."""


def _images(dataset: str) -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images  # china.jpg, flower.jpg: (427, 640, 3) uint8
    if dataset == "rgb8":
        return [np.asarray(im, dtype=np.uint8) for im in images]
    if dataset == "grey16":
        return [np.clip(np.round(np.asarray(im, dtype=np.float64) @ _LUMA), 0, 255).astype(np.uint8) for im in images]
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}.")


def patch_size(dataset: str) -> int:
    """Side of a patch in pixels: 8 (rgb8) or 16 (grey16)."""
    return {"rgb8": 8, "grey16": 16}[dataset]


def held_out_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean `(height, width)`: True on held-out blocks (a seeded `HELD_OUT_FRACTION` of the BLOCK x BLOCK blocks)."""
    rows, cols = -(-height // BLOCK), -(-width // BLOCK)
    n_blocks = rows * cols
    chosen = rng.permutation(n_blocks)[: int(round(HELD_OUT_FRACTION * n_blocks))]
    blocks = np.zeros(n_blocks, dtype=bool)
    blocks[chosen] = True
    full = np.repeat(np.repeat(blocks.reshape(rows, cols), BLOCK, axis=0), BLOCK, axis=1)
    return full[:height, :width]


def _erode(mask: np.ndarray, margin: int) -> np.ndarray:
    """Pixels of `mask` whose (2 margin + 1)-square neighbourhood (clipped to the image) lies in `mask`."""
    out = mask.copy()
    h, w = mask.shape
    for di in range(-margin, margin + 1):
        for dj in range(-margin, margin + 1):
            shifted = np.ones_like(mask)
            src = mask[max(di, 0) : h + min(di, 0), max(dj, 0) : w + min(dj, 0)]
            shifted[max(-di, 0) : h + min(-di, 0), max(-dj, 0) : w + min(-dj, 0)] = src
            out &= shifted
    return out


def _all_inside(mask: np.ndarray, p: int) -> np.ndarray:
    """`(h - p + 1, w - p + 1)`: whether the p x p window at each top-left corner lies inside `mask` (integral image)."""
    c = np.pad(np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
    inside = c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]
    return inside == p * p


@functools.lru_cache(maxsize=4)
def load_patches(dataset: str, *, seed: int = 0) -> Patches:
    """The integer patches of `dataset` (`"rgb8"` or `"grey16"`), split by image region (module docstring)."""
    p = patch_size(dataset)
    rng = np.random.default_rng(seed)
    train, test, o_train, o_test = [], [], [], []
    for k, image in enumerate(_images(dataset)):
        h, w = image.shape[:2]
        held = held_out_mask(h, w, rng)
        train_ok = _all_inside(~held, p)
        test_ok = _all_inside(_erode(held, MARGIN), p)
        for ok, out, org in ((train_ok, train, o_train), (test_ok, test, o_test)):
            ii, jj = np.nonzero(ok[::STRIDE, ::STRIDE])
            ii, jj = ii * STRIDE, jj * STRIDE
            out.append(np.stack([image[i : i + p, j : j + p].reshape(-1) for i, j in zip(ii, jj, strict=True)]))
            org.append(np.stack([np.full_like(ii, k), ii, jj], axis=1))
    shape = (p, p, 3) if dataset == "rgb8" else (p, p)
    return Patches(np.concatenate(train), np.concatenate(test), shape, np.concatenate(o_train), np.concatenate(o_test))


def dequantize(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1]: `(u + U[0, 1)) / 128 - 1` (float32 may round the top of a bin up)."""
    return ((u.astype(np.float32) + rng.random(u.shape, dtype=np.float32)) / 128.0 - 1.0).astype(np.float32)


class GaussianFit(NamedTuple):
    """The Gaussian model of the data: mean and covariance eigendecomposition (ascending eigenvalues)."""

    mean: np.ndarray
    """`(d,)`."""
    eigenvalues: np.ndarray
    """`(d,)`, ascending."""
    eigenvectors: np.ndarray
    """`(d, d)`, columns."""


def gaussian_fit(x: np.ndarray) -> GaussianFit:
    """Mean and covariance spectrum (float64) of the rows of `x` `(n, d)`."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    lam, vec = np.linalg.eigh(cov)
    return GaussianFit(mean, np.maximum(lam, 0.0), vec)


def evaluation_data(dataset: str, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dequantized float32 training and held-out patches (one seeded dequantization draw each)."""
    patches = load_patches(dataset)
    rng = np.random.default_rng(1000 + seed)
    return dequantize(patches.train, rng), dequantize(patches.test, rng)
