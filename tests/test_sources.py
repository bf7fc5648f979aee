"""Sources from data: covariance, samples (PCA), images (ADSN via FFT), power laws, bundled spectra.

Every constructor is checked against an independent dense computation: `numpy.linalg.eigh` of the
explicit covariance (for images, the covariance of the literal circular-convolution model, built pixel
by pixel), plus a Monte Carlo check of that covariance. An eigenbasis is not unique inside a degenerate
eigenspace, so mean coordinates are compared by their energy per eigenspace, and whole laws by the
KL / W2 of a sampler run on them.
"""

import hashlib
import importlib.util
import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

GRID = jnp.linspace(1.0, 1e-3, 11)
DATA = Path(gdj.__file__).parent / "data"


def _eigenspaces(lam, gap):
    """Clusters of a sorted spectrum: `(lo, hi)` intervals separated by more than `gap`."""
    lam = np.sort(np.asarray(lam, dtype=np.float64))
    cuts = np.flatnonzero(np.diff(lam) > gap)
    starts, ends = np.r_[0, cuts + 1], np.r_[cuts, lam.size - 1]
    return [(lam[a], lam[b]) for a, b in zip(starts, ends)]


def _assert_same_law(lam_a, m_a, lam_b, m_b, *, rtol=1e-9):
    """Same eigenvalues (as a multiset) and the same mean energy in every eigenspace."""
    lam_a, m_a, lam_b, m_b = (np.asarray(x, dtype=np.float64) for x in (lam_a, m_a, lam_b, m_b))
    tol = rtol * np.max(np.abs(lam_b))
    np.testing.assert_allclose(np.sort(lam_a), np.sort(lam_b), rtol=0, atol=tol)
    total = np.sum(m_b**2)
    assert np.sum(m_a**2) == pytest.approx(total, rel=rtol, abs=1e-300)
    spaces = _eigenspaces(lam_b, gap=100 * tol)
    for lo, hi in spaces:
        in_a = (lam_a >= lo - 10 * tol) & (lam_a <= hi + 10 * tol)
        in_b = (lam_b >= lo) & (lam_b <= hi)
        assert in_a.sum() == in_b.sum(), (lo, hi)
        assert abs(np.sum(m_a[in_a] ** 2) - np.sum(m_b[in_b] ** 2)) <= rtol * total + 1e-14, (lo, hi)
    return spaces


@eqx.filter_jit
def _divergences(src):
    """KL and W2 of the Heun output law, to the truncated target (the spectra may be singular).

    Heun, not DDPM: DDPM's mean multiplier on a zero eigenvalue is exactly sqrt(alpha_bar(t_min)), the
    target's, so its divergences would not see the mean's component in the null space.
    """
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.Heun(), GRID)
    return jnp.stack([gdj.kl(src, law, target="truncated"), gdj.w2(src, law, target="truncated")], axis=-1)


# --- from_covariance ---


def test_from_covariance_matches_eigh():
    rng = np.random.default_rng(0)
    d = 7
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    true = np.array([2.0, 2.0, 2.0, 1.0, 0.5, 0.5, 0.0])  # degenerate eigenspaces and a null space
    cov = Q @ np.diag(true) @ Q.T
    cov = 0.5 * (cov + cov.T)
    mu = rng.normal(size=d)
    src = gdj.GaussianSource.from_covariance(cov, mu)
    assert src.eigenvalues.shape == src.mean.shape == (d,)
    lam = np.asarray(src.eigenvalues)
    assert np.all(np.diff(lam) <= 0) and np.all(lam >= 0)
    np.testing.assert_allclose(lam, np.linalg.eigh(cov)[0][::-1].clip(0), atol=1e-14)
    # energies per eigenspace from the construction itself (Q), independent of any eigh
    m_true = Q.T @ mu
    spaces = _assert_same_law(lam, src.mean, true, m_true, rtol=1e-12)
    assert len(spaces) == 4

    # a random covariance: coordinates match eigh's eigenvectors mode by mode (distinct eigenvalues)
    B = rng.normal(size=(d, d))
    full = B @ B.T
    w, U = np.linalg.eigh(full)
    one = gdj.GaussianSource.from_covariance(full, mu)
    np.testing.assert_allclose(one.eigenvalues, w[::-1], rtol=1e-12)
    np.testing.assert_allclose(np.abs(one.mean), np.abs(U.T @ mu)[::-1], rtol=1e-9, atol=1e-12)

    # batches: covariance (2, d, d) with means (2, d), or one mean broadcast over the batch
    covs = np.stack([cov, 2 * full + np.eye(d)])
    batch = gdj.GaussianSource.from_covariance(covs, np.stack([mu, -mu]))
    assert batch.eigenvalues.shape == batch.mean.shape == (2, d)
    np.testing.assert_allclose(batch.eigenvalues[1], 2 * w[::-1] + 1, rtol=1e-12)
    _assert_same_law(batch.eigenvalues[0], batch.mean[0], true, m_true, rtol=1e-12)
    shared = gdj.GaussianSource.from_covariance(covs, mu)
    assert shared.mean.shape == (2, d)
    np.testing.assert_allclose(np.sum(np.asarray(shared.mean) ** 2, axis=-1), [mu @ mu] * 2, rtol=1e-12)
    assert gdj.GaussianSource.from_covariance(covs).mean is None

    # integer input, round-off negative eigenvalues of a singular covariance become exactly 0
    assert gdj.GaussianSource.from_covariance(np.eye(d, dtype=np.int32)).eigenvalues.dtype == jnp.float64
    low = B[:, :3] @ B[:, :3].T
    low_lam = np.asarray(gdj.GaussianSource.from_covariance(low).eigenvalues)
    assert np.all(low_lam >= 0) and np.all(low_lam[3:] < 1e-12 * low_lam[0])


def test_from_covariance_under_jit():
    f = eqx.filter_jit(lambda c, m: gdj.GaussianSource.from_covariance(c, m))
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    src = f(cov, np.ones(2))
    np.testing.assert_allclose(src.eigenvalues, np.linalg.eigvalsh(cov)[::-1], rtol=1e-12)
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive semi-definite"):
        jax.block_until_ready(f(np.array([[1.0, 0.0], [0.0, -0.5]]), np.ones(2)))


@pytest.mark.parametrize(
    "cov, mean, match",
    [
        (np.array([[1.0, 0.5], [0.0, 1.0]]), None, "not symmetric"),
        (np.array([[1.0, 0.0], [0.0, -1e-3]]), None, "positive semi-definite"),
        (-np.eye(2), None, "positive semi-definite"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), None, "NaN or infinite"),
        (np.array([[1.0, 0.0], [0.0, np.inf]]), None, "NaN or infinite"),
        (np.ones((2, 3)), None, r"shape \(\*batch, d, d\)"),
        (np.ones(3), None, r"shape \(\*batch, d, d\)"),
        (np.ones((0, 0)), None, "d >= 1"),
        (np.eye(2), np.ones(3), "mean must have shape"),
        (np.eye(2), np.ones((2, 2)), "broadcasts to the covariance"),
        (np.eye(2), np.array([0.0, np.nan]), "mean has a NaN"),
    ],
)
def test_from_covariance_errors(cov, mean, match):
    with pytest.raises(ValueError, match=match):
        gdj.GaussianSource.from_covariance(cov, mean)


def test_from_covariance_tolerance():
    # a relative -1e-17 eigenvalue is round-off (set to 0); with rtol=0 it is an error
    cov = np.diag([1.0, -1e-17])
    assert np.asarray(gdj.GaussianSource.from_covariance(cov).eigenvalues)[-1] == 0.0
    with pytest.raises(ValueError, match="positive semi-definite"):
        gdj.GaussianSource.from_covariance(cov, rtol=0.0)
    with pytest.raises(ValueError, match="rtol"):
        gdj.GaussianSource.from_covariance(cov, rtol=-1.0)


# --- from_samples ---


@pytest.mark.parametrize("n, d", [(200, 12), (6, 15)])
def test_from_samples_matches_eigh_of_sample_covariance(n, d):
    rng = np.random.default_rng(n)
    # anisotropic data with a mean far from the span of the centred samples (most of it in the null space)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3 * rng.normal(size=d)
    src = gdj.GaussianSource.from_samples(X)
    cov, mu = np.cov(X.T), X.mean(axis=0)
    w, U = np.linalg.eigh(cov)
    w = np.maximum(w, 0.0)
    lam = np.asarray(src.eigenvalues)
    assert src.eigenvalues.shape == src.mean.shape == (d,)
    assert np.all(np.diff(lam) <= 0) and np.all(lam >= 0)
    np.testing.assert_allclose(np.sort(lam), w, rtol=1e-10, atol=1e-10 * w.max())
    rank = min(n - 1, d)
    assert np.sum(lam == 0) == d - rank and np.all(lam[:rank] > 1e-8 * lam[0])  # zeros exactly 0
    np.testing.assert_allclose(np.sum(np.asarray(src.mean) ** 2), mu @ mu, rtol=1e-12)
    _assert_same_law(lam, src.mean, w, U.T @ mu, rtol=1e-9)
    if n <= d:
        null = U[:, w < 1e-10 * w.max()]
        assert np.sum((null.T @ mu) ** 2) > 0.5 * (mu @ mu)  # the check below is about the null-space mean
    # The same law as the dense route (from_covariance of np.cov), including the mean in the null space:
    dense = gdj.GaussianSource.from_covariance(cov, mu)
    # (a source without the mean's null-space part shows that the comparison can fail)
    cut = gdj.GaussianSource(src.eigenvalues, jnp.where(src.eigenvalues > 0, src.mean, 0.0))
    three = jax.tree_util.tree_map(lambda *a: jnp.stack(a), src, dense, cut)  # one compilation per d
    div = np.asarray(_divergences(three))
    assert np.all(np.isfinite(div)) and np.all(div > 0)
    np.testing.assert_allclose(div[0], div[1], rtol=1e-10)
    if n <= d:
        assert np.all(np.abs(div[2] - div[0]) > 1e-2 * div[0])


def test_from_samples_batch_options_and_errors():
    # (shapes shared with the test above: every new shape costs compilations)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 6, 15)) + rng.normal(size=(2, 1, 15))
    batch = gdj.GaussianSource.from_samples(X)
    assert batch.eigenvalues.shape == batch.mean.shape == (2, 15)
    for b in range(2):
        one = gdj.GaussianSource.from_samples(X[b])
        np.testing.assert_allclose(batch.eigenvalues[b], one.eigenvalues, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.sum(batch.mean[b] ** 2), np.sum(one.mean**2), rtol=1e-12)

    Y = rng.normal(size=(200, 12)) + 1.0
    raw = gdj.GaussianSource.from_samples(Y, ddof=0, center=False)
    np.testing.assert_allclose(np.sort(raw.eigenvalues), np.linalg.eigvalsh(Y.T @ Y / 200), rtol=1e-12)
    assert raw.mean is None
    biased = gdj.GaussianSource.from_samples(Y, ddof=0)
    np.testing.assert_allclose(np.sort(biased.eigenvalues), np.linalg.eigvalsh(np.cov(Y.T, ddof=0)), rtol=1e-12)
    # A mean far larger than the spread (pixels in [0, 255]): the centring round-off scales with the mean
    # and must not leave a tiny positive eigenvalue where the rank n - 1 forces an exact 0.
    near = np.asarray(gdj.GaussianSource.from_samples(X[0]).eigenvalues)
    for far in (X[0] + 1e4, (X[0] + 1e2).astype(np.float32)):
        far_lam = np.asarray(gdj.GaussianSource.from_samples(far).eigenvalues)
        assert np.sum(far_lam == 0) == 15 - 5
        np.testing.assert_allclose(far_lam[:5], near[:5], rtol=1e-4 if far.dtype == np.float32 else 1e-8)
    # n < d without centring: rank n, not n - 1
    assert np.sum(np.asarray(gdj.GaussianSource.from_samples(X[0], center=False).eigenvalues) == 0) == 15 - 6

    with pytest.raises(ValueError, match="n - ddof >= 1"):
        gdj.GaussianSource.from_samples(Y[:1])
    with pytest.raises(ValueError, match="ddof >= 0"):
        gdj.GaussianSource.from_samples(Y, ddof=-1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.GaussianSource.from_samples(np.where(Y > 2, np.inf, Y))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.GaussianSource.from_samples(np.where(Y > 2, np.nan, Y))
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_samples(np.ones(5))


# --- from_image (ADSN) ---


def _adsn_covariance(image):
    """Explicit covariance of X_c = ubar_c + t_c * W (circular convolution, one white noise W on the torus).

    Built from the definition, pixel by pixel: (t_c * W)(x) = sum_z t_c(x - z) W(z), so X = mean + K W with
    K[(c, x), z] = t_c(x - z), and Cov = K K^T. Layout: channel-major, row-major pixels.
    """
    u = image[:, :, None] if image.ndim == 2 else image
    M, N, C = u.shape
    t = (u - u.mean(axis=(0, 1))) / np.sqrt(M * N)
    K = np.zeros((C, M, N, M, N))
    for x0 in range(M):
        for x1 in range(N):
            for z0 in range(M):
                for z1 in range(N):
                    K[:, x0, x1, z0, z1] = t[(x0 - z0) % M, (x1 - z1) % N, :]
    K = K.reshape(C * M * N, M * N)
    mean = np.broadcast_to(u.mean(axis=(0, 1)), u.shape).transpose(2, 0, 1).reshape(-1)
    return K @ K.T, mean


@pytest.mark.parametrize("shape", [(4, 6), (4, 5, 3)])
def test_from_image_matches_explicit_circulant_covariance(shape):
    rng = np.random.default_rng(7)
    trend = np.linspace(0, 1, shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    image = rng.uniform(size=shape) + trend  # nonzero mean, not white
    M, N = shape[:2]
    C = 1 if len(shape) == 2 else shape[2]
    src = gdj.GaussianSource.from_image(image)
    lam, m = np.asarray(src.eigenvalues), np.asarray(src.mean)
    cov, mean = _adsn_covariance(image)

    # documented layout: MN per-frequency values (frequency 0 exactly 0) then MN(C - 1) zeros
    assert lam.shape == m.shape == (M * N * C,)
    assert lam[0] == 0.0 and np.all(lam[M * N :] == 0.0) and np.all(lam[1 : M * N] > 0)
    # the whole law: eigh of the explicit covariance, with the mean image's energy per eigenspace
    w, U = np.linalg.eigh(cov)
    _assert_same_law(lam, m, np.maximum(w, 0.0), U.T @ mean, rtol=1e-9)
    assert np.count_nonzero(m) == 1 and m[0] ** 2 == pytest.approx(mean @ mean, rel=1e-12)

    # frequency order (numpy.fft.fft2, row-major): the C x C block of Cov on the Fourier mode xi has
    # rank one and trace lam[xi]; blocks of different frequencies do not couple (Fourier diagonalizes Cov).
    k0, k1 = np.meshgrid(np.arange(M), np.arange(N), indexing="ij")
    x0, x1 = k0.reshape(-1), k1.reshape(-1)
    F = np.exp(-2j * np.pi * (np.outer(x0, x0) / M + np.outer(x1, x1) / N)) / np.sqrt(M * N)  # (pixel, xi)
    Fc = np.kron(np.eye(C), F)  # channel-major, like cov
    B = (Fc.conj().T @ cov @ Fc).reshape(C, M * N, C, M * N)
    diag = np.einsum("cxdx->xcd", B)
    np.testing.assert_allclose(np.einsum("xcc->x", diag).real, lam[: M * N], atol=1e-12)
    top = np.linalg.eigvalsh(diag)[:, -1]
    np.testing.assert_allclose(top, lam[: M * N], atol=1e-12)  # rank one: top eigenvalue = trace
    off = B.copy()
    off[:, np.arange(M * N), :, np.arange(M * N)] = 0
    assert np.max(np.abs(off)) < 1e-12

    no_mean = gdj.GaussianSource.from_image(image, mean=False)
    assert no_mean.mean is None and np.array_equal(no_mean.eigenvalues, src.eigenvalues)


def test_from_image_monte_carlo():
    """ADSN realizations by FFT convolution with white noise have the explicit covariance (z-scores)."""
    rng = np.random.default_rng(11)
    M, N, C = 3, 4, 2
    image = rng.uniform(size=(M, N, C)) ** 2
    cov, mean = _adsn_covariance(image)
    t = (image - image.mean(axis=(0, 1))) / np.sqrt(M * N)
    n = 40_000
    W = rng.normal(size=(n, M, N))
    fw = np.fft.fft2(W)
    X = np.stack([np.real(np.fft.ifft2(fw * np.fft.fft2(t[:, :, c]))) for c in range(C)], axis=1)
    X = X.reshape(n, -1) + mean
    emp = np.cov(X.T)
    # standard error of a Gaussian covariance estimate: sqrt((S_ii S_jj + S_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.max(np.abs(emp - cov) / se) < 5.0
    assert np.max(np.abs(X.mean(0) - mean) / np.sqrt(np.diag(cov) / n)) < 5.0
    # and the spectrum of the sampled covariance is that of from_image, within sampling error
    lam = np.sort(np.asarray(gdj.GaussianSource.from_image(image).eigenvalues))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(emp)), lam, atol=10 * lam.max() / np.sqrt(n))


def test_from_image_dtypes_and_errors():
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    src = gdj.GaussianSource.from_image(grey)
    assert src.eigenvalues.dtype == jnp.float64  # integer image: default float dtype
    np.testing.assert_allclose(src.eigenvalues, gdj.GaussianSource.from_image(grey.astype(np.float64)).eigenvalues)
    # a constant image: every eigenvalue 0, all of the mean at frequency 0
    flat = gdj.GaussianSource.from_image(np.full((3, 3, 2), 0.5))
    assert np.all(np.asarray(flat.eigenvalues) == 0.0) and float(flat.mean[0]) == pytest.approx(np.sqrt(9 * 0.5))
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_image(np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_image(np.ones((0, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.GaussianSource.from_image(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(gdj.GaussianSource.from_image)(jnp.ones((3, 3)))


# --- power law ---


def test_power_law():
    src = gdj.GaussianSource.power_law(5, exponent=2.0, scale=3.0)
    np.testing.assert_allclose(src.eigenvalues, 3.0 / np.arange(1, 6) ** 2.0, rtol=1e-15)
    assert src.mean is None and src.eigenvalues.dtype == jnp.float64
    np.testing.assert_array_equal(gdj.GaussianSource.power_law(4, exponent=0.0).eigenvalues, np.ones(4))
    np.testing.assert_allclose(gdj.GaussianSource.power_law(3).eigenvalues, [1.0, 0.5, 1 / 3], rtol=1e-15)
    for kwargs, match in [
        ({"dim": 0}, "dim"),
        ({"dim": 3, "exponent": -1.0}, "exponent"),
        ({"dim": 3, "exponent": np.nan}, "exponent"),
        ({"dim": 3, "scale": 0.0}, "scale"),
        ({"dim": 3, "scale": np.inf}, "scale"),
        ({"dim": 3, "dtype": jnp.int32}, "dtype"),
    ]:
        with pytest.raises(ValueError, match=match):
            gdj.GaussianSource.power_law(**kwargs)


# --- float32 ---


def test_float32_inputs():
    rng = np.random.default_rng(5)
    # (shapes shared with the float64 tests above: only the float32 versions compile here)
    B = rng.normal(size=(7, 7))
    cov, mu = B @ B.T, rng.normal(size=7)
    X = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) + 2.0
    Z = rng.normal(size=(6, 15)) @ rng.normal(size=(15, 15)) + 2.0
    image = rng.uniform(size=(4, 5, 3))
    f32 = np.float32
    S = gdj.GaussianSource
    pairs = [
        (S.from_covariance(cov.astype(f32), mu.astype(f32)), S.from_covariance(cov, mu)),
        (S.from_samples(X.astype(f32)), S.from_samples(X)),
        (S.from_samples(Z.astype(f32)), S.from_samples(Z)),  # n < d
        (S.from_image(image.astype(f32)), S.from_image(image)),
        (S.power_law(50, exponent=1.5, dtype=jnp.float32), S.power_law(50, exponent=1.5)),
        (gdj.spectra.source("digits", dtype=jnp.float32), gdj.spectra.source("digits")),
    ]
    for lo, hi in pairs:
        assert lo.eigenvalues.dtype == jnp.float32 and hi.eigenvalues.dtype == jnp.float64
        top = float(jnp.max(hi.eigenvalues))
        np.testing.assert_allclose(lo.eigenvalues, hi.eigenvalues, rtol=0, atol=1e-5 * top)
        assert np.all(np.asarray(lo.eigenvalues) >= 0)
        if hi.mean is not None:
            assert lo.mean.dtype == jnp.float32
            e_lo, e_hi = float(jnp.sum(lo.mean**2)), float(jnp.sum(hi.mean**2))
            assert e_lo == pytest.approx(e_hi, rel=1e-5)


# --- bundled spectra ---


def _readme_row(filename):
    """(d, sum, half a unit in the sum's last printed digit, max) from the file's row of data/README.md."""
    lines = (DATA / "README.md").read_text().splitlines()
    row = next(line for line in lines if line.startswith(f"| `{filename}`"))
    total = re.search(r"sum = ([0-9]+)\.([0-9]+)", row)
    top = float(re.search(r"max = ([0-9.]+)", row).group(1))
    return int(row.split("|")[2]), float(total.group(0)[6:]), 0.5 * 10.0 ** -len(total.group(2)), top


@pytest.mark.parametrize(
    "name, filename, zeros",
    [
        ("digits", "digits.npy", 3),
        ("adsn_china", "adsn_china.npy", 32769),
        ("adsn_fabric", "adsn_fabric.npy", 131072),
        ("cifar10", "cifar10_icml2025.npy", 9),
    ],
)
def test_bundled_spectra(name, filename, zeros):
    lam = gdj.spectra.load(name)
    d, total, half_unit, top = _readme_row(filename)
    assert lam.shape == (d,) and lam.dtype == np.float64
    assert np.all(lam >= 0) and np.sum(lam == 0) == zeros
    assert abs(lam.sum() - total) <= 1.01 * half_unit  # the sum as printed in the README
    assert lam.max() == pytest.approx(top, rel=1e-6)
    if name == "digits":
        assert np.all(np.diff(lam) <= 0)  # decreasing
    if name == "adsn_china":
        spec = lam[: 128 * 128].reshape(128, 128)
        assert spec[0, 0] == 0.0 and np.all(lam[128 * 128 :] == 0) and np.all(spec.reshape(-1)[1:] > 0)
        # a real image's spectrum is symmetric under xi -> -xi
        np.testing.assert_allclose(spec, np.roll(spec[::-1, ::-1], 1, axis=(0, 1)), rtol=1e-10)
    src = gdj.spectra.source(name)
    assert isinstance(src, gdj.GaussianSource) and src.dim == d and src.mean is None
    assert name in gdj.spectra.available()


def test_bundled_files_match_checksums():
    sums = dict(line.split()[::-1] for line in (DATA / "SHA256SUMS").read_text().splitlines() if line.strip())
    assert {"digits.npy", "adsn_china.npy"} <= set(sums)
    for filename, digest in sums.items():
        assert hashlib.sha256((DATA / filename).read_bytes()).hexdigest() == digest, filename
    with pytest.raises(ValueError, match="unknown spectrum"):
        gdj.spectra.load("imagenet")


def test_bundled_spectra_recomputed_from_scikit_learn():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("make_spectra", DATA / "make_spectra.py")
    make_spectra = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_spectra)

    digits = gdj.spectra.load("digits")
    np.testing.assert_allclose(make_spectra.digits_spectrum(), digits, rtol=1e-10, atol=1e-13 * digits.max())
    # independently of the script: the dense route on the raw covariance, round-off clamped
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    dense = np.sort(np.linalg.eigvalsh(np.cov(X.T)))[::-1]
    np.testing.assert_allclose(digits, np.maximum(dense, 0), rtol=1e-10, atol=1e-13 * digits.max())
    china = gdj.spectra.load("adsn_china")
    np.testing.assert_allclose(make_spectra.china_adsn_spectrum(), china, rtol=1e-12, atol=1e-12 * china.max())
