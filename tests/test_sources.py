"""Sources from data: covariance, samples (PCA), images (ADSN via FFT), power laws — against dense eigh."""

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

GRID = jnp.linspace(1.0, 1e-3, 11)


def _energy_per_eigenspace(lam, coords, decimals=9):
    """Mean energy summed over each eigenspace (the eigenbasis inside one is arbitrary)."""
    lam, coords = np.asarray(lam), np.asarray(coords)
    scale = max(float(np.max(np.abs(lam))), 1e-300)
    keys = np.round(lam / scale, decimals)
    return {k: float(np.sum(coords[keys == k] ** 2)) for k in np.unique(keys)}


def _assert_same_law(a: gdj.GaussianSource, b: gdj.GaussianSource, rtol=1e-9):
    np.testing.assert_allclose(
        np.sort(a.eigenvalues), np.sort(b.eigenvalues), rtol=rtol, atol=rtol * float(np.max(b.eigenvalues))
    )
    ea, eb = (
        _energy_per_eigenspace(a.eigenvalues, a.mean_or_zero),
        _energy_per_eigenspace(b.eigenvalues, b.mean_or_zero),
    )
    assert ea.keys() == eb.keys()
    total = sum(eb.values()) + 1e-300
    for k in ea:
        assert abs(ea[k] - eb[k]) <= rtol * total + 1e-12, (k, ea[k], eb[k])


def _divergences(src):
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(), GRID)
    # target "truncated": W2 to the data would take sqrt of the dense route's ~1e-15 round-off eigenvalues
    return np.array([gdj.kl(src, law, target="truncated"), gdj.w2(src, law, target="truncated")])


def test_from_covariance_matches_eigh():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(7, 7))
    cov = B @ B.T
    mu = rng.normal(size=7)
    src = gdj.GaussianSource.from_covariance(cov, mu)
    lam, U = np.linalg.eigh(cov)
    np.testing.assert_allclose(src.eigenvalues, lam[::-1], rtol=1e-12)
    assert np.all(np.diff(np.asarray(src.eigenvalues)) <= 0)
    _assert_same_law(src, gdj.GaussianSource(lam, U.T @ mu))
    # batched
    covs = np.stack([cov, 2 * cov + np.eye(7)])
    batch = gdj.GaussianSource.from_covariance(covs, np.stack([mu, -mu]))
    assert batch.eigenvalues.shape == (2, 7)
    np.testing.assert_allclose(batch.eigenvalues[1], 2 * lam[::-1] + 1, rtol=1e-12)
    # singular covariance: round-off negatives clamped to exactly 0
    low = B[:, :3] @ B[:, :3].T
    single = gdj.GaussianSource.from_covariance(low)
    assert np.all(np.asarray(single.eigenvalues) >= 0) and np.sum(np.asarray(single.eigenvalues) < 1e-12) == 4


def test_from_covariance_errors():
    with pytest.raises(ValueError, match="not symmetric"):
        gdj.GaussianSource.from_covariance(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive semi-definite"):
        gdj.GaussianSource.from_covariance(np.array([[1.0, 0.0], [0.0, -0.5]]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.GaussianSource.from_covariance(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_covariance(np.ones((2, 3)))
    with pytest.raises(ValueError, match="mean must have shape"):
        gdj.GaussianSource.from_covariance(np.eye(3), np.ones(4))


@pytest.mark.parametrize("n, d", [(200, 12), (6, 15)])
def test_from_samples_matches_eigh_of_sample_covariance(n, d):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    src = gdj.GaussianSource.from_samples(X)
    cov, mu = np.cov(X.T), X.mean(axis=0)
    lam = np.linalg.eigvalsh(cov)
    lam = np.maximum(lam, 0.0)
    assert src.eigenvalues.shape == (d,)
    np.testing.assert_allclose(np.sort(src.eigenvalues), lam, rtol=1e-10, atol=1e-10 * lam.max())
    np.testing.assert_allclose(np.sum(np.asarray(src.mean) ** 2), mu @ mu, rtol=1e-12)
    if n <= d:  # rank n - 1: the rest is exactly zero
        assert np.sum(np.asarray(src.eigenvalues) == 0) == d - (n - 1)
    # Same law as the dense route, including the mean's part in the null space.
    dense = gdj.GaussianSource.from_covariance(cov, mu)
    np.testing.assert_allclose(_divergences(src), _divergences(dense), rtol=1e-9)


def test_from_samples_options_and_errors():
    X = np.random.default_rng(1).normal(size=(50, 4))
    src = gdj.GaussianSource.from_samples(X, ddof=0, center=False)
    np.testing.assert_allclose(np.sort(src.eigenvalues), np.linalg.eigvalsh(X.T @ X / 50), rtol=1e-12)
    assert src.mean is None
    with pytest.raises(ValueError, match="n - ddof >= 1"):
        gdj.GaussianSource.from_samples(X[:1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        gdj.GaussianSource.from_samples(np.where(X > 2, np.inf, X))
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_samples(np.ones(5))


def _adsn_covariance(image):
    """Explicit covariance of X_c = ubar_c + t_c * W (circular convolution, one white noise W)."""
    u = image[:, :, None] if image.ndim == 2 else image
    M, N, C = u.shape
    t = (u - u.mean(axis=(0, 1))) / np.sqrt(M * N)
    # Column (z) of the convolution operator: (t_c * W)(x) = sum_z t_c(x - z) W(z).
    K = np.zeros((M * N * C, M * N))
    for zi in range(M):
        for zj in range(N):
            shifted = np.roll(np.roll(t, zi, axis=0), zj, axis=1)  # x -> t(x - z)
            K[:, zi * N + zj] = shifted.transpose(2, 0, 1).reshape(-1)  # channel-major layout
    mean = np.broadcast_to(u.mean(axis=(0, 1)), u.shape).transpose(2, 0, 1).reshape(-1)
    return K @ K.T, mean, K


@pytest.mark.parametrize("shape", [(4, 6), (4, 5, 3)])
def test_from_image_matches_explicit_circulant_covariance(shape):
    rng = np.random.default_rng(7)
    trend = np.linspace(0, 1, shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    image = rng.uniform(size=shape) + trend  # a nonzero mean, not white
    src = gdj.GaussianSource.from_image(image)
    cov, mean, _ = _adsn_covariance(image)
    M, N = shape[:2]
    C = 1 if len(shape) == 2 else shape[2]
    assert src.eigenvalues.shape == (M * N * C,)
    assert float(src.eigenvalues[0]) == 0.0  # frequency 0 of a zero-mean texton
    assert np.all(np.asarray(src.eigenvalues[M * N :]) == 0.0)
    lam, U = np.linalg.eigh(cov)
    _assert_same_law(src, gdj.GaussianSource(np.maximum(lam, 0.0), U.T @ mean), rtol=1e-9)


def test_from_image_monte_carlo():
    """ADSN realizations by FFT convolution have the explicit covariance (z-score on each entry)."""
    rng = np.random.default_rng(11)
    image = rng.uniform(size=(3, 4, 2))
    cov, mean, _ = _adsn_covariance(image)
    u = image
    t = (u - u.mean(axis=(0, 1))) / np.sqrt(12)
    n = 40_000
    W = rng.normal(size=(n, 3, 4))
    fw = np.fft.fft2(W)
    X = np.stack([np.real(np.fft.ifft2(fw * np.fft.fft2(t[:, :, c]))) for c in range(2)], axis=1)
    X = X.reshape(n, -1) + mean
    emp = np.cov(X.T)
    # standard error of a covariance entry: sqrt((S_ii S_jj + S_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.max(np.abs(emp - cov) / np.maximum(se, 1e-12)) < 5.0
    assert np.max(np.abs(X.mean(0) - mean) / np.sqrt(np.diag(cov) / n + 1e-30)) < 5.0


def test_from_image_errors():
    with pytest.raises(ValueError, match="shape"):
        gdj.GaussianSource.from_image(np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        gdj.GaussianSource.from_image(np.full((3, 3), np.nan))


def test_power_law():
    src = gdj.GaussianSource.power_law(5, exponent=2.0, scale=3.0)
    np.testing.assert_allclose(src.eigenvalues, 3.0 / np.arange(1, 6) ** 2.0, rtol=1e-15)
    with pytest.raises(ValueError, match="dim"):
        gdj.GaussianSource.power_law(0)
    with pytest.raises(ValueError, match="exponent"):
        gdj.GaussianSource.power_law(3, exponent=-1.0)
    with pytest.raises(ValueError, match="scale"):
        gdj.GaussianSource.power_law(3, scale=0.0)


def test_float32_inputs():
    rng = np.random.default_rng(5)
    B = rng.normal(size=(6, 6))
    cov = B @ B.T
    X = rng.normal(size=(30, 6))
    image = rng.uniform(size=(4, 4, 3))
    pairs = [
        (gdj.GaussianSource.from_covariance(cov.astype(np.float32)), gdj.GaussianSource.from_covariance(cov)),
        (gdj.GaussianSource.from_samples(X.astype(np.float32)), gdj.GaussianSource.from_samples(X)),
    ]
    for f32, f64 in pairs:
        assert f32.eigenvalues.dtype == jnp.float32
        np.testing.assert_allclose(f32.eigenvalues, f64.eigenvalues, atol=1e-5 * float(f64.eigenvalues[0]))
    img = gdj.GaussianSource.from_image(image)  # computed in float64 numpy, cast on request
    img32 = gdj.cast(img, jnp.float32)
    np.testing.assert_allclose(img32.eigenvalues, img.eigenvalues, rtol=1e-6)


@pytest.mark.parametrize(
    "name, d, zeros, total",
    [
        ("digits", 64, 2, 4.695890),
        ("adsn_china", 49152, 32769, 3517.878167),
        ("adsn_fabric", 196608, 131072, 1805.14448),
        ("cifar10", 3072, 9, 761.61955),
    ],
)
def test_bundled_spectra(name, d, zeros, total):
    lam = gdj.spectra.load(name)
    assert lam.shape == (d,) and lam.dtype == np.float64
    assert np.all(lam >= 0) and np.sum(lam == 0) == zeros
    np.testing.assert_allclose(lam.sum(), total, rtol=1e-6)
    src = gdj.spectra.source(name)
    assert isinstance(src, gdj.GaussianSource) and src.dim == d
    assert name in gdj.spectra.available()
    with pytest.raises(ValueError, match="unknown spectrum"):
        gdj.spectra.load("imagenet")


def test_bundled_spectra_recomputed_from_scikit_learn():
    pytest.importorskip("sklearn")
    import importlib.util
    from pathlib import Path

    script = Path(gdj.__file__).parent / "data" / "make_spectra.py"
    spec = importlib.util.spec_from_file_location("make_spectra", script)
    make_spectra = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_spectra)

    np.testing.assert_allclose(make_spectra.digits_spectrum(), gdj.spectra.load("digits"), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        make_spectra.china_adsn_spectrum(), gdj.spectra.load("adsn_china"), rtol=1e-12, atol=1e-12
    )
