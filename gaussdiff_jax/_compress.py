r"""Weighted spectra: exact deduplication, and quadrature compression of huge spectra with an error estimate.

Every divergence is a sum over modes of per-mode terms, and (for a fixed schedule, sampler and grid)
the term of a mode is a function of its eigenvalue and of its mean energy only:
$w_i[F(\lambda_i) + G(\lambda_i)\,m_i^2]$ (MATH.md section 3: the mean enters through $e_i^2 = \text{gap}^2 m_i^2$).
So a spectrum is a pair of measures on the eigenvalue axis: the counting measure $\sum_i w_i\delta_{\lambda_i}$
and the mean-energy measure $\sum_i w_im_i^2\delta_{\lambda_i}$.

- **Deduplication** merges modes with equal eigenvalues into one weighted mode (weight $\sum w$, mean
  $\sqrt{\sum wm^2/\sum w}$). This is exact for every additive divergence (KL, $W_2^2$).
- **Compression** replaces each measure, bin by bin on a uniform grid in $x = \log\lambda$, by its
  Gauss quadrature rule: $q$ nodes per bin, exact for polynomials in $x$ of degree $2q - 1$, with
  positive weights that sum to the bin's exact total. $F$ and $G$ are smooth in $\log\lambda$ (they are
  rational functions of $R^2(t_k) = 1 + \bar\alpha_k(\lambda - 1)$ at the grid times), so a few hundred
  nodes reproduce a spectrum of any size. Exact zeros and sparse bins ($\le q$ distinct eigenvalues)
  are kept exactly.
- **Limitation: stiff explicit ODE steps.** When a step of an explicit ODE solver (Euler, Heun, RK4) is
  unstable for part of the spectrum, its gain $A(\lambda)$ crosses 0 at some $\lambda^*$ inside it; the
  output variance then vanishes like $(\lambda - \lambda^*)^2$ and KL(target ‖ sample) has a pole there.
  No quadrature in $\lambda$ resolves a pole, and the estimate below cannot see one that falls between
  nodes: measured on CIFAR-10 with Heun at $N = 10$ or 100 (t_min = 1e-3), the compressed KL is off by
  90-99% with an estimate of a few %. SDE samplers, DDIM, and ODE solvers on grids fine enough to be
  stable (e.g. $N = 1000$) have smooth terms and are compressed to round-off. Evaluate stiff cases uncompressed.
- **Error estimate** from two coarser resolutions: the same bins with $q - 1$ and $q - 2$ nodes. Per
  bin, $d_1 = |Q_q - Q_{q-1}|$ estimates the $(q-1)$-node error and $d_1/d_2$ the factor gained per
  added node, so the returned $q$-node total's error is estimated as $d_1\min(1, 10\,d_1/d_2)$ (a
  safety factor of 10 on a geometric extrapolation) where the rules converge ($d_1 \le d_2/2$), and as
  $10\max(d_1, d_2)$ where they do not yet; summed over bins in absolute value.

The Gauss rules come from modified moments against Legendre polynomials on each bin's range
(the modified Chebyshev algorithm, Gautschi 2004, section 2.1.7) followed by Golub–Welsch; one pass
over the eigenvalues, $O(dq)$ work in float64 numpy, done once per spectrum.

The mean-energy measure is folded in exactly: with $c = 1/\max_i m_i^2$, each atom's weight splits into
$w_i(1 - cm_i^2) \ge 0$ with mean 0 and $cw_im_i^2$ with mean $1/\sqrt c$, since
$w[F + Gm^2] = w(1 - cm^2)F + cwm^2[F + G/c]$. Both parts are positive measures, compressed separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._source import GaussianSource


class Compression(eqx.Module):
    r"""A compressed spectrum: a weighted `GaussianSource` plus what is needed to estimate its error.

    **Fields:**

    - `source`: the compressed spectrum (exact atoms and $q$-node rules), a `GaussianSource` with
      weights; use it anywhere a source is accepted (`sample_law`, `sweep`, `optimize`).
    - `coarse`, `coarser`: the same bins with $(q-1)$- and $(q-2)$-node rules (for the error estimate).
    - `source_segments`, `coarse_segments`, `coarser_segments`: the bin of each node (exact atoms
      included, identical in all three).
    - `num_segments`: number of bins (static). `dim`: number of modes represented, $\sum w$ (static).
    - `safety`: factor applied to the extrapolated error (static, default 10).
    """

    source: GaussianSource
    coarse: GaussianSource
    coarser: GaussianSource
    source_segments: Int[Array, " n"]
    coarse_segments: Int[Array, " m"]
    coarser_segments: Int[Array, " k"]
    num_segments: int = eqx.field(static=True)
    dim: float = eqx.field(static=True)
    safety: float = eqx.field(static=True, default=10.0)

    def evaluate(
        self, per_mode: Callable[[GaussianSource], Float[Array, "*batch n"]]
    ) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"]]:
        r"""Sum of an additive per-mode quantity over the spectrum, with an error estimate.

        **Arguments:**

        - `per_mode`: maps a (weighted) source to its per-mode contributions, weights already applied,
          last axis = modes; e.g. `lambda s: gdj.w2_squared(s, gdj.sample_law(s, sch, smp, ts), reduce=False)`
          or `gdj.kl(..., reduce=False)`. It must be additive: not `w2` (take the square root of the
          `w2_squared` total instead; its relative error is half as large).

        **Returns:** `(value, error)`, the $q$-node total and its estimated absolute error. Per bin, with
        $d_1 = |Q_q - Q_{q-1}|$ and $d_2 = |Q_{q-1} - Q_{q-2}|$, the Gauss error is taken to shrink
        geometrically with the number of nodes: bin error $\approx d_1\min(1,\ \text{safety}\cdot d_1/d_2)$
        if $d_1 \le d_2/2$, else $\text{safety}\cdot\max(d_1, d_2)$ (not converging yet).
        The estimate sums the bins' estimates in absolute value and adds a round-off floor of
        $100\,\epsilon\sum|\text{terms}|$ (the terms themselves carry the round-off of $N$ steps). Jit-able; costs three evaluations of `per_mode` on small sources.
        """
        levels = [
            (per_mode(self.source), self.source_segments),
            (per_mode(self.coarse), self.coarse_segments),
            (per_mode(self.coarser), self.coarser_segments),
        ]
        fine = levels[0][0]
        sums = [jax.ops.segment_sum(jnp.moveaxis(x, -1, 0), ids, self.num_segments) for x, ids in levels]
        d1, d2 = jnp.abs(sums[0] - sums[1]), jnp.abs(sums[1] - sums[2])
        ratio = jnp.where(d2 > 0, d1 / jnp.where(d2 > 0, d2, 1.0), 1.0)
        # Converging (d1 <= d2 / 2): geometric extrapolation with a safety factor. Otherwise the rules are
        # not yet in their asymptotic regime and nothing predicts the error: charge safety * max(d1, d2).
        per_bin = jnp.where(
            ratio <= 0.5, d1 * jnp.minimum(1.0, self.safety * ratio), self.safety * jnp.maximum(d1, d2)
        )
        floor = 100 * jnp.finfo(fine.dtype).eps * jnp.sum(jnp.abs(fine), axis=-1)
        return jnp.sum(fine, axis=-1), jnp.sum(per_bin, axis=0) + floor

    @property
    def num_nodes(self) -> int:
        """Number of weighted modes in `source`."""
        return self.source.dim


# ----------------------------------------------------------------------------------------------------
# Exact deduplication


def _concrete_1d(source: GaussianSource, what: str):
    if not isinstance(source, GaussianSource):
        raise ValueError(f"{what}: expected a GaussianSource; got {type(source).__name__}.")
    if source.eigenvalues.ndim != 1:
        raise ValueError(
            f"{what}: needs a single spectrum (eigenvalues of shape (d,)); got shape {source.eigenvalues.shape}. "
            "Deduplicate or compress each spectrum of a batch separately."
        )
    try:
        lam = np.asarray(source.eigenvalues, dtype=np.float64)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(f"{what}: works on concrete spectra, outside jax.jit.") from None
    w = np.ones_like(lam) if source.weights is None else np.asarray(source.weights, dtype=np.float64)
    m = np.zeros_like(lam) if source.mean is None else np.asarray(source.mean, dtype=np.float64)
    return lam, w, m


def _merge(lam, w, m):
    """Unique eigenvalues (ascending) with summed weights and summed mean energies; zero-weight modes dropped."""
    keep = w > 0
    lam, w, m = lam[keep], w[keep], m[keep]
    values, inverse = np.unique(lam, return_inverse=True)
    weight = np.bincount(inverse, weights=w, minlength=values.size)
    energy = np.bincount(inverse, weights=w * m * m, minlength=values.size)
    return values, weight, energy


def _make_source(lam, weight, energy, dtype=None) -> GaussianSource:
    dtype = jnp.result_type(float) if dtype is None else dtype
    mean = None
    if np.any(energy > 0):
        mean = jnp.asarray(np.sqrt(energy / weight), dtype=dtype)
    return GaussianSource(jnp.asarray(lam, dtype=dtype), mean, jnp.asarray(weight, dtype=dtype))


def deduplicate(source: GaussianSource) -> GaussianSource:
    r"""Merge modes with equal eigenvalues into weighted modes. Exact for KL and $W_2^2$ (and so $W_2$).

    A group of modes with eigenvalue $\lambda$, weights $w_i$ and means $m_i$ becomes one mode with
    weight $\sum_i w_i$ and mean $\sqrt{\sum_iw_im_i^2/\sum_iw_i}$: every additive divergence depends
    on the group only through these two sums. Modes of weight 0 are dropped.

    **Arguments:** `source`: a single spectrum (eigenvalues `(d,)`), concrete (outside jit).

    **Returns:** a weighted `GaussianSource`, eigenvalues increasing. The bundled ADSN spectrum's
    131 072 zeros become one mode of weight 131 072.
    """
    lam, w, m = _concrete_1d(source, "deduplicate")
    values, weight, energy = _merge(lam, w, m)
    return _make_source(values, weight, energy, source.eigenvalues.dtype)


# ----------------------------------------------------------------------------------------------------
# Gauss rules of discrete measures, bin by bin


def _monic_legendre_b(num: int) -> np.ndarray:
    k = np.arange(num, dtype=np.float64)
    b = k * k / (4 * k * k - 1)
    b[0] = 2.0  # unused
    return b


def _legendre_moments(y: np.ndarray, w: np.ndarray, seg: np.ndarray, num_seg: int, num: int) -> np.ndarray:
    """Modified moments sum_i w_i p_l(y_i) per segment for monic Legendre p_l, l < num. Shape (num_seg, num)."""
    b = _monic_legendre_b(num)
    out = np.empty((num_seg, num))
    p_prev, p = np.zeros_like(y), np.ones_like(y)
    for l in range(num):
        out[:, l] = np.bincount(seg, weights=w * p, minlength=num_seg)
        p_prev, p = p, y * p - (b[l] * p_prev if l > 0 else 0.0)
    return out


def _recurrence_from_moments(mom: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Modified Chebyshev algorithm (Gautschi): recurrence coefficients (alpha, beta) of the measure,
    vectorized over rows, from 2*order modified moments w.r.t. monic Legendre polynomials.

    Returns alpha (rows, order), beta (rows, order) and the number of trustworthy coefficients per row
    (a degenerate measure stops the recurrence where beta would be <= 0)."""
    rows = mom.shape[0]
    n2 = 2 * order
    b = _monic_legendre_b(n2)
    alpha = np.zeros((rows, order))
    beta = np.zeros((rows, order))
    sig_prev = np.zeros((rows, n2))
    sig = mom.copy()
    alpha[:, 0] = mom[:, 1] / mom[:, 0]
    beta[:, 0] = mom[:, 0]
    valid = np.full(rows, order)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(1, order):
            new = np.zeros((rows, n2))
            for l in range(k, n2 - k):
                new[:, l] = (
                    sig[:, l + 1]
                    - alpha[:, k - 1] * sig[:, l]
                    - beta[:, k - 1] * sig_prev[:, l]
                    + b[l] * sig[:, l - 1]
                )
            alpha[:, k] = new[:, k + 1] / new[:, k] - sig[:, k] / sig[:, k - 1]
            beta[:, k] = new[:, k] / sig[:, k - 1]
            # beta_k is the squared norm ratio of consecutive orthogonal polynomials; on [-1, 1] it is
            # at most 1. A tiny or non-positive value means the measure is (numerically) supported on
            # k points: keep only the first k coefficients for that row.
            bad = ~(beta[:, k] > 1e-13) | ~np.isfinite(alpha[:, k])
            valid = np.where(bad & (valid > k), k, valid)
            sig_prev, sig = sig, new
    return alpha, beta, valid


def _gauss_from_recurrence(alpha: np.ndarray, beta: np.ndarray, order: np.ndarray):
    """Golub–Welsch, vectorized: nodes (rows, q) and weights (rows, q); rows use their first order[r] terms."""
    rows, q = alpha.shape
    idx = np.arange(q)
    active = idx[None, :] < order[:, None]
    diag = np.where(active, alpha, 10.0 + idx[None, :])  # inactive entries: decoupled dummy eigenvalues
    off = np.where(active[:, 1:], np.sqrt(np.maximum(beta[:, 1:], 0.0)), 0.0)
    jac = np.zeros((rows, q, q))
    jac[:, idx, idx] = diag
    jac[:, idx[:-1], idx[1:]] = off
    jac[:, idx[1:], idx[:-1]] = off
    nodes, vecs = np.linalg.eigh(jac)
    weights = beta[:, :1] * vecs[:, 0, :] ** 2
    weights = np.where(np.abs(nodes) <= 1.0 + 1e-9, weights, 0.0)  # drop the dummies
    return np.clip(nodes, -1.0, 1.0), weights


class _Rules:
    """Nodes (x = log lambda), weights and segment ids of one quadrature level."""

    def __init__(self):
        self.x, self.w, self.seg = [], [], []

    def add(self, x, w, seg):
        keep = w > 0
        self.x.append(np.asarray(x)[keep])
        self.w.append(np.asarray(w)[keep])
        self.seg.append(np.asarray(seg)[keep])

    def arrays(self):
        if not self.x:
            return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
        return np.concatenate(self.x), np.concatenate(self.w), np.concatenate(self.seg).astype(np.int64)


def _bin_gauss(lo: np.ndarray, hi: np.ndarray, mom: np.ndarray, order: int, seg_ids: np.ndarray, levels):
    """Gauss rules with `order`, `order - 1`, ... nodes from per-bin modified moments on [lo, hi] (in x)."""
    alpha, beta, valid = _recurrence_from_moments(mom, order)
    for i, out in enumerate(levels):
        q = order - i
        use = np.minimum(valid, q)
        y, w = _gauss_from_recurrence(alpha[:, :q], beta[:, :q], use)
        # Renormalize: the weights of each bin sum to its exact total (round-off only).
        total = mom[:, :1]
        w = w * (total / np.where(w.sum(axis=1, keepdims=True) > 0, w.sum(axis=1, keepdims=True), 1.0))
        x = lo[:, None] + 0.5 * (y + 1.0) * (hi - lo)[:, None]
        out.add(x.ravel(), w.ravel(), np.repeat(seg_ids, q))


def _compress_atoms(x, w, edges, order, seg0, levels) -> int:
    """Compress the discrete measure sum_i w_i delta(x_i) (x ascending, distinct) bin by bin.

    Bins with at most `order` atoms keep their atoms exactly (in both rules). Returns segments used."""
    keep = w > 0
    x, w = x[keep], w[keep]
    nb = edges.size - 1
    if x.size == 0:
        return nb
    b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    count = np.bincount(b, minlength=nb)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    exact = count <= order
    atom_exact = exact[b]
    for out in levels:
        out.add(x[atom_exact], w[atom_exact], seg0 + b[atom_exact])
    gb = np.nonzero(~exact & (count > 0))[0]
    if gb.size == 0:
        return nb
    lo = x[starts[gb]]
    hi = x[starts[gb] + count[gb] - 1]
    sel = ~atom_exact
    xs, ws, bs = x[sel], w[sel], b[sel]
    row = np.full(nb, -1)
    row[gb] = np.arange(gb.size)
    r = row[bs]
    y = 2.0 * (xs - lo[r]) / (hi[r] - lo[r]) - 1.0
    mom = _legendre_moments(y, ws, r, gb.size, 2 * order)
    _bin_gauss(lo, hi, mom, order, seg0 + gb, levels)
    return nb


def _edges(xmin: float, xmax: float, num_bins: int | None, bin_width: float) -> np.ndarray:
    span = xmax - xmin
    if num_bins is None:
        num_bins = max(1, int(math.ceil(span / bin_width)))
    if span <= 0:
        return np.array([xmin - 0.5, xmax + 0.5])
    edges = np.linspace(xmin, xmax, num_bins + 1)
    edges[-1] = np.nextafter(xmax, np.inf)
    return edges


def _finish(levels, zero_weight, zero_energy, mean_value, num_seg, dim, dtype) -> Compression:
    """Assemble the weighted sources: exact zero atom, count nodes (mean 0), energy nodes (mean `mean_value`)."""
    parts = []
    for rules in levels:
        x, w, seg = rules.arrays()
        is_energy = seg >= num_seg[0]  # energy-measure segments come after the count-measure ones
        lam = np.exp(x)
        mean = np.where(is_energy, mean_value, 0.0)
        if zero_weight > 0:
            zero_mean = math.sqrt(zero_energy / zero_weight)
            lam = np.concatenate([[0.0], lam])
            w = np.concatenate([[zero_weight], w])
            mean = np.concatenate([[zero_mean], mean])
            seg = np.concatenate([[num_seg[1]], seg])
        has_mean = bool(np.any(mean != 0))
        src = GaussianSource(
            jnp.asarray(lam, dtype=dtype),
            jnp.asarray(mean, dtype=dtype) if has_mean else None,
            jnp.asarray(w, dtype=dtype),
        )
        parts.append((src, jnp.asarray(seg, dtype=jnp.int32)))
    return Compression(
        source=parts[0][0],
        coarse=parts[1][0],
        coarser=parts[2][0],
        source_segments=parts[0][1],
        coarse_segments=parts[1][1],
        coarser_segments=parts[2][1],
        num_segments=int(num_seg[1]) + 1,
        dim=float(dim),
    )


def _check_options(order: int, num_bins: int | None, bin_width: float):
    if int(order) != order or order < 3:
        raise ValueError(f"compress: order (nodes per bin) must be an integer >= 3; got {order}.")
    if num_bins is not None and (int(num_bins) != num_bins or num_bins < 1):
        raise ValueError(f"compress: num_bins must be a positive integer or None; got {num_bins}.")
    if not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"compress: bin_width must be finite and > 0; got {bin_width}.")


def compress(
    source: GaussianSource,
    *,
    order: int = 6,
    num_bins: int | None = None,
    bin_width: float = 0.5,
) -> Compression:
    r"""Compress a spectrum to a few weighted modes per bin of $\log\lambda$, with an error estimate.

    **Arguments:**

    - `source`: a single spectrum (eigenvalues `(d,)`, optional mean and weights), concrete.
    - `order`: Gauss nodes per bin, $q \ge 3$ (the error estimate uses $q - 1$ and $q - 2$).
    - `num_bins`: number of equal bins in $\log\lambda$ between the smallest and largest positive
      eigenvalue; default `ceil(span / bin_width)`.
    - `bin_width`: default bin width in natural-log units (0.5: a factor $e^{0.5} \approx 1.65$).

    **Returns:** a `Compression`; `.source` is the weighted source (at most
    $q\cdot$bins nodes per measure, plus the exact zero mode), `.evaluate(per_mode)` gives a total and
    its error estimate. Zeros and repeated eigenvalues are merged exactly first (`deduplicate`).

    Typical accuracy: relative error $10^{-8}$..$10^{-12}$ on real spectra with the defaults
    (see `benchmarks/README.md`); raise `order` or lower `bin_width` for more.
    """
    _check_options(order, num_bins, bin_width)
    lam, w, m = _concrete_1d(source, "compress")
    values, weight, energy = _merge(lam, w, m)
    dim = float(weight.sum())
    zero = values == 0
    zero_weight, zero_energy = float(weight[zero].sum()), float(energy[zero].sum())
    values, weight, energy = values[~zero], weight[~zero], energy[~zero]
    levels = [_Rules(), _Rules(), _Rules()]
    num_seg = [0, 0]
    mean_value = 0.0
    if values.size:
        x = np.log(values)
        edges = _edges(float(x[0]), float(x[-1]), num_bins, bin_width)
        nb = edges.size - 1
        if np.any(energy > 0):
            c = float(np.max(energy / weight))  # = max m^2 = 1/c in the module docstring
            count = np.maximum(weight - energy / c, 0.0)
            mean_value = math.sqrt(c)
            _compress_atoms(x, count, edges, order, 0, levels)
            _compress_atoms(x, energy / c, edges, order, nb, levels)
            num_seg = [nb, 2 * nb]
        else:
            _compress_atoms(x, weight, edges, order, 0, levels)
            num_seg = [nb, nb]
    return _finish(levels, zero_weight, zero_energy, mean_value, num_seg, dim, source.eigenvalues.dtype)


def compress_power_law(
    dim: int | float,
    *,
    exponent: float = 1.0,
    scale: float = 1.0,
    order: int = 6,
    bin_width: float = 0.5,
    head: int = 65536,
) -> Compression:
    r"""Compressed power-law spectrum $\lambda_j = \text{scale}\cdot j^{-\text{exponent}}$, $j = 1..d$, never formed.

    For $d$ up to $10^{15}$ at the cost of $d = 10^5$. The first `head` eigenvalues are treated as
    atoms (as `compress(GaussianSource.power_law(head))`); for the tail $j >$ `head` the bin moments
    $\sum_j p_l(y(\lambda_j))$ are computed as integrals over $j$ (Euler–Maclaurin, midpoint form,
    relative error $O(1/\text{head}^2)$ per bin) by 64-point Gauss–Legendre in $\log j$. Each bin's total
    weight is its exact integer count of modes. Zero mean.
    """
    _check_options(order, None, bin_width)
    d = int(dim)
    if d < 1:
        raise ValueError(f"compress_power_law: dim must be >= 1; got {dim}.")
    if not (math.isfinite(exponent) and exponent >= 0) or not (math.isfinite(scale) and scale > 0):
        raise ValueError("compress_power_law: need exponent >= 0 and scale > 0, both finite.")
    dtype = jnp.result_type(float)
    if exponent == 0:
        return _flat(d, scale, dtype)
    levels = [_Rules(), _Rules(), _Rules()]
    h = min(d, int(head))
    j = np.arange(1, h + 1, dtype=np.float64)
    x_head = np.log(scale) - exponent * np.log(j)
    x_min = np.log(scale) - exponent * np.log(float(d))
    edges = _edges(x_min, float(x_head[0]), None, bin_width)
    nb = edges.size - 1
    # Head: atoms (ascending x for the binning).
    _compress_atoms(x_head[::-1].copy(), np.ones(h), edges, order, 0, levels)
    if d > h:
        # Tail j in [h + 1, d]: its x range lies below the head's; split it at the bin edges into integer
        # ranges [J_k, J_{k+1}) and take moments of the continuous measure dj on [J_k - 1/2, J_{k+1} - 1/2].
        j_of_x = lambda xx: np.exp((np.log(scale) - xx) / exponent)
        inner = edges[(edges > x_min) & (edges < np.log(scale) - exponent * np.log(h + 1.0))]
        cuts = np.unique(np.clip(np.floor(j_of_x(inner)) + 1, h + 1, d + 1).astype(np.int64))
        bounds = np.unique(np.concatenate([[h + 1], cuts, [d + 1]]))
        a_int, b_int = bounds[:-1].astype(np.float64), bounds[1:].astype(np.float64)  # [a, b) integers
        u0, u1 = np.log(a_int - 0.5), np.log(b_int - 0.5)
        gx, gw = np.polynomial.legendre.leggauss(64)
        u = 0.5 * (u0 + u1)[:, None] + 0.5 * (u1 - u0)[:, None] * gx[None, :]
        wu = 0.5 * (u1 - u0)[:, None] * gw[None, :] * np.exp(u)  # dj = e^u du
        xs = np.log(scale) - exponent * u  # decreasing in u
        lo, hi = np.log(scale) - exponent * u1, np.log(scale) - exponent * u0
        y = 2.0 * (xs - lo[:, None]) / (hi - lo)[:, None] - 1.0
        rows = np.repeat(np.arange(a_int.size), gx.size)
        mom = _legendre_moments(y.ravel(), wu.ravel(), rows, a_int.size, 2 * order)
        # Exact integer counts: rescale the moments so that each bin's weight is b - a.
        mom *= ((b_int - a_int) / mom[:, 0])[:, None]
        seg = nb + np.arange(a_int.size)
        _bin_gauss(lo, hi, mom, order, seg, levels)
        nseg = nb + a_int.size
    else:
        nseg = nb
    return _finish(levels, 0.0, 0.0, 0.0, [nseg, nseg], d, dtype)


def _flat(d: int, scale: float, dtype) -> Compression:
    src = GaussianSource(jnp.asarray([scale], dtype=dtype), None, jnp.asarray([float(d)], dtype=dtype))
    seg = jnp.zeros(1, dtype=jnp.int32)
    return Compression(src, src, src, seg, seg, seg, 1, float(d))
