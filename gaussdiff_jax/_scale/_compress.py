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
  positive weights that sum to the bin's exact total. $F$ and $G$ are smooth in $\log\lambda$ when the
  sampler is stable on the spectrum (they are rational functions of $R^2(t_k) = 1 + \bar\alpha_k(\lambda - 1)$,
  analytic in a strip $|\mathrm{Im}\,x| < \pi$), so a few hundred nodes reproduce a spectrum of any
  size. Exact zeros and sparse bins ($\le q$ distinct eigenvalues) are kept exactly.
- **Error estimate**, per bin, the larger of two independent ones:
  1. *Successive rules*: the same bins with $q - 1$ and $q - 2$ nodes; $d_1 = |Q_q - Q_{q-1}|$ estimates the
     $(q-1)$-node error and $d_1/d_2$ the factor gained per added node, so the $q$-node error is taken as
     $d_1\min(1, 10\,d_1/d_2)$ where the rules converge ($d_1 \le d_2/2$) and as $10\max(d_1, d_2)$ where
     they do not yet.
  2. *Resolution probe*: the per-mode function is evaluated at $M = 2q + 4$ Chebyshev–Lobatto points
     spanning the bin's eigenvalues (its two extreme eigenvalues included). For any polynomial $p$ of
     degree $2q - 1$, both the bin's measure (total $W$) and its Gauss rule integrate $p$ exactly, so the
     error is at most $2W\lVert f - p\rVert_\infty \le 2W\sum_{k \ge 2q}|c_k|$, with $c_k$ the Chebyshev
     coefficients of the interpolant. This sees what successive rules cannot: a kink or a steep front
     near a bin's end, where no Gauss node of any order falls (the rules then agree with each other
     and are all wrong).
  The bins' estimates are summed in absolute value, plus a round-off floor of $100\,\epsilon\sum|\text{terms}|$.
  A bin whose probe has not converged itself (more than $10^{-3}$ of its Chebyshev coefficient mass beyond
  degree $2q - 1$) with more than $\sqrt\epsilon$ of the total at stake is *unresolved*: the estimate is
  $+\infty$ (no finite number would be trustworthy there).
- **Limitation: unstable explicit ODE steps.** When a step of an explicit ODE solver (Euler, Heun,
  RK4) is unstable on part of the spectrum (small eigenvalues at small $t_{\min}$ on coarse grids), its
  gain crosses 0 at some $\lambda^*$: the output variance vanishes like $(\lambda - \lambda^*)^2$, $W_2^2$
  has a kink and KL a pole there. No quadrature in $\lambda$ resolves these; the estimate then is
  $+\infty$ (measured: Heun at $N = 10..100$ and RK4 at $N = 10..50$ steps, $t_{\min} = 10^{-3}$, on the
  CIFAR-10 and ADSN spectra), or a finite value above the error where the probe still converges. It
  flags, it does not prove: a pole squeezed between two probe points could escape it. Evaluate such
  cases uncompressed (or deduplicated, which is exact).

The Gauss rules come from modified moments against Legendre polynomials on each bin's range
(the modified Chebyshev algorithm, Gautschi 2004, section 2.1.7) followed by Golub–Welsch; one pass
over the eigenvalues, $O(dq)$ work in float64 numpy, done once per spectrum.

The mean-energy measure is folded in exactly: with $c = 1/\max_i m_i^2$, each atom's weight splits into
$w_i(1 - cm_i^2) \ge 0$ with mean 0 and $cw_im_i^2$ with mean $1/\sqrt c$, since
$w[F + Gm^2] = w(1 - cm^2)F + cwm^2[F + G/c]$. Both parts are positive measures, compressed separately.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._core._source import GaussianSource


_UNRESOLVED = 1e-3  # tail fraction of the probe's Chebyshev coefficients beyond which a bin is unresolved


def _num_probe(order: int) -> int:
    """Chebyshev–Lobatto probe points per bin: the exactness degree 2q - 1 plus a tail of 4 coefficients."""
    return 2 * order + 4


def _chebyshev_matrix(num: int) -> np.ndarray:
    """`(num, num)` matrix mapping values at Lobatto points cos(pi j / (num - 1)) to Chebyshev coefficients."""
    n = num - 1
    j = np.arange(num)
    mat = (2.0 / n) * np.cos(np.pi * np.outer(j, j) / n)
    mat[:, 0] *= 0.5
    mat[:, -1] *= 0.5
    mat[0, :] *= 0.5
    mat[-1, :] *= 0.5
    return mat


class Compression(eqx.Module):
    r"""A compressed spectrum: a weighted `GaussianSource` plus what is needed to estimate its error.

    **Fields:**

    - `source`: the compressed spectrum (exact atoms and $q$-node rules), a `GaussianSource` with
      weights; use it anywhere a source is accepted (`sample_law`, `sweep`, `optimize`).
    - `nodes`: everything `evaluate` needs in one weighted source: `source`, then the $(q-1)$- and
      $(q-2)$-node rules, then the probe points (weight 1), so that `per_mode` runs once.
    - `segments`: the bin of each quadrature node of the three rules (exact atoms included).
    - `probe_segments`, `probe_mass`, `probe_em`: per probed bin, its bin, its total weight $W$, and the
      coefficients of the Euler–Maclaurin term of `compress_power_law`'s integrated tail (0 elsewhere).
    - `sizes`: (nodes of the three rules, probed bins, points per probe) (static).
    - `order`: $q$ (static). `num_segments`: number of bins (static). `dim`: number of modes
      represented, $\sum w$ (static). `safety`: factor of the successive-rules estimate (static).
    """

    source: GaussianSource
    nodes: GaussianSource
    segments: Int[Array, " n"]
    probe_segments: Int[Array, " p"]
    probe_mass: Float[Array, " p"]
    probe_em: Float[Array, "p 2"]
    sizes: tuple[int, int, int, int, int] = eqx.field(static=True)
    order: int = eqx.field(static=True)
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
          `w2_squared` total instead; its relative error is half as large). It is called once, on `nodes`.

        **Returns:** `(value, error)`: the total over `source` and its estimated absolute error (the
        larger of the successive-rules and resolution-probe estimates per bin, see the module
        docstring, summed over bins, plus a round-off floor $100\,\epsilon\sum|\text{terms}|$); `+inf`
        where a bin is unresolved (the per-mode function has a kink or pole there: evaluate uncompressed).
        Jit-able; `value` equals `per_mode(source)` summed.
        """
        out = jnp.asarray(per_mode(self.nodes))
        n0, n1, n2, num_probe, points = self.sizes
        if out.ndim < 1 or out.shape[-1] != self.nodes.dim:
            raise ValueError(
                f"Compression.evaluate: per_mode must return per-mode values with the modes on the last axis "
                f"({self.nodes.dim} for this compression's nodes); got shape {out.shape}. Use reduce=False."
            )
        fine = out[..., :n0]
        levels = jnp.moveaxis(out[..., : n0 + n1 + n2], -1, 0)
        level = jnp.asarray(np.repeat(np.arange(3), [n0, n1, n2]), dtype=self.segments.dtype)
        sums = jax.ops.segment_sum(levels, level * self.num_segments + self.segments, 3 * self.num_segments)
        sums = sums.reshape((3, self.num_segments) + levels.shape[1:])
        d1, d2 = jnp.abs(sums[0] - sums[1]), jnp.abs(sums[1] - sums[2])
        ratio = jnp.where(d2 > 0, d1 / jnp.where(d2 > 0, d2, 1.0), 1.0)
        # Converging (d1 <= d2 / 2): geometric extrapolation with a safety factor. Otherwise the rules are
        # not yet in their asymptotic regime and nothing predicts the error: charge safety * max(d1, d2).
        per_bin = jnp.where(ratio <= 0.5, d1 * jnp.minimum(1.0, self.safety * ratio), self.safety * jnp.maximum(d1, d2))
        floor = 100 * jnp.finfo(fine.dtype).eps * jnp.sum(jnp.abs(fine), axis=-1)
        if num_probe:
            values = out[..., n0 + n1 + n2 :].reshape(out.shape[:-1] + (num_probe, points))
            coef = jnp.abs(values @ jnp.asarray(_chebyshev_matrix(points).T, dtype=values.dtype))
            k2 = np.arange(points, dtype=np.float64) ** 2
            tail = jnp.sum(coef[..., 2 * self.order :], axis=-1)
            slope = coef @ jnp.asarray(k2, dtype=coef.dtype)  # Markov: |T_k'| <= k^2 on [-1, 1]
            curvature = coef @ jnp.asarray(k2 * (k2 - 1) / 3, dtype=coef.dtype)  # |T_k''| <= k^2(k^2 - 1)/3
            mass, em = self.probe_mass.astype(coef.dtype), self.probe_em.astype(coef.dtype)
            bound = 2 * mass * tail + em[:, 0] * slope + em[:, 1] * curvature
            # Unresolved: the probe's own interpolant has not converged (a kink or pole at the probe's
            # scale), so neither estimate means anything there: say so (+inf). Unless what is at stake is
            # below sqrt(eps) of the total: terms with round-off noise (KL terms in float32 are noisy at
            # 1e-3 relative) have unconverged coefficients too, and there the finite bound is honest.
            stake = jnp.sqrt(jnp.finfo(fine.dtype).eps) * jnp.sum(jnp.abs(fine), axis=-1)
            unresolved = (tail > _UNRESOLVED * jnp.sum(coef, axis=-1)) & (bound > stake[..., None])
            bound = jnp.where(unresolved, jnp.inf, bound)
            probe = jax.ops.segment_sum(jnp.moveaxis(bound, -1, 0), self.probe_segments, self.num_segments)
            per_bin = jnp.maximum(per_bin, probe)
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
        w = np.ones_like(lam) if source.weights is None else np.asarray(source.weights, dtype=np.float64)
        m = np.zeros_like(lam) if source.mean is None else np.asarray(source.mean, dtype=np.float64)
    except jax.errors.TracerArrayConversionError:
        raise ValueError(f"{what}: works on concrete spectra, outside jax.jit.") from None
    if not np.any(w > 0):
        raise ValueError(f"{what}: every weight is 0; the spectrum represents no mode.")
    return lam, w, m


def _merge(lam, w, m):
    """Unique eigenvalues (ascending) with summed weights and summed mean energies; zero-weight modes dropped."""
    keep = w > 0
    lam, w, m = lam[keep], w[keep], m[keep]
    values, inverse = np.unique(lam, return_inverse=True)
    weight = np.bincount(inverse, weights=w, minlength=values.size)
    energy = np.bincount(inverse, weights=w * m * m, minlength=values.size)
    return values, weight, energy


def deduplicate(source: GaussianSource) -> GaussianSource:
    r"""Merge modes with equal eigenvalues into weighted modes. Exact for KL and $W_2^2$ (and so $W_2$).

    A group of modes with eigenvalue $\lambda$, weights $w_i$ and means $m_i$ becomes one mode with
    weight $\sum_i w_i$ and mean $\sqrt{\sum_iw_im_i^2/\sum_iw_i}$: every additive divergence depends
    on the group only through these two sums. Modes of weight 0 are dropped.

    **Arguments:** `source`: a single spectrum (eigenvalues `(d,)`), concrete (outside jit).

    **Returns:** a weighted `GaussianSource`, eigenvalues increasing, in the source's dtype. The
    bundled ADSN spectrum's 131 072 zeros become one mode of weight 131 072 (196 608 modes -> 65 511).
    """
    lam, w, m = _concrete_1d(source, "deduplicate")
    values, weight, energy = _merge(lam, w, m)
    dtype = source.eigenvalues.dtype
    mean = jnp.asarray(np.sqrt(energy / weight), dtype=dtype) if np.any(energy > 0) else None
    return GaussianSource(jnp.asarray(values, dtype=dtype), mean, jnp.asarray(weight, dtype=dtype))


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
                    sig[:, l + 1] - alpha[:, k - 1] * sig[:, l] - beta[:, k - 1] * sig_prev[:, l] + b[l] * sig[:, l - 1]
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


class _Builder:
    """Collects the three rules (q, q-1, q-2 nodes), the probes, and one mean per segment (bin)."""

    def __init__(self, order: int):
        self.order = order
        self.rules = [([], [], []) for _ in range(3)]  # x = log lambda, weight, segment
        self.probe = ([], [], [], [])  # x (bins, M), segment, mass, em coefficients (bins, 2)
        self.seg_mean: list[float] = []

    def new_segments(self, num: int, mean: float) -> int:
        first = len(self.seg_mean)
        self.seg_mean.extend([mean] * num)
        return first

    def atoms(self, x, w, seg):
        """Exact atoms: identical in the three rules."""
        for xs, ws, ss in self.rules:
            xs.append(np.asarray(x, dtype=np.float64))
            ws.append(np.asarray(w, dtype=np.float64))
            ss.append(np.asarray(seg, dtype=np.int64))

    def gauss(self, lo, hi, mom, seg, em=None):
        """Gauss rules with q, q-1, q-2 nodes from per-bin modified moments on [lo, hi] (in x); probes there."""
        q = self.order
        alpha, beta, valid = _recurrence_from_moments(mom, q)
        total = mom[:, :1]
        for i, (xs, ws, ss) in enumerate(self.rules):
            y, w = _gauss_from_recurrence(alpha[:, : q - i], beta[:, : q - i], np.minimum(valid, q - i))
            # Renormalize: the weights of each bin sum to its exact total (round-off only).
            wsum = w.sum(axis=1, keepdims=True)
            w = w * (total / np.where(wsum > 0, wsum, 1.0))
            x = lo[:, None] + 0.5 * (y + 1.0) * (hi - lo)[:, None]
            keep = (w > 0).ravel()
            xs.append(x.ravel()[keep])
            ws.append(w.ravel()[keep])
            ss.append(np.repeat(seg, q - i)[keep])
        m = _num_probe(q)
        lobatto = np.cos(np.pi * np.arange(m) / (m - 1))
        self.probe[0].append(lo[:, None] + 0.5 * (lobatto[None, :] + 1.0) * (hi - lo)[:, None])
        self.probe[1].append(np.asarray(seg, dtype=np.int64))
        self.probe[2].append(total[:, 0])
        self.probe[3].append(np.zeros((lo.size, 2)) if em is None else em)

    def finish(self, dim: float, dtype) -> Compression:
        seg_mean = np.asarray(self.seg_mean, dtype=np.float64)
        has_mean = bool(np.any(seg_mean != 0))
        cat = lambda parts, empty: np.concatenate(parts) if parts else empty
        levels = [
            (cat(xs, np.zeros(0)), cat(ws, np.zeros(0)), cat(ss, np.zeros(0, dtype=np.int64)))
            for xs, ws, ss in self.rules
        ]
        m = _num_probe(self.order)
        px = cat(self.probe[0], np.zeros((0, m)))
        pseg = cat(self.probe[1], np.zeros(0, dtype=np.int64))
        pmass = cat(self.probe[2], np.zeros(0))
        pem = cat(self.probe[3], np.zeros((0, 2)))
        # exp(-inf) = 0 for the exact zero eigenvalue.
        lam = np.exp(np.concatenate([x for x, _, _ in levels] + [px.ravel()]))
        weight = np.concatenate([w for _, w, _ in levels] + [np.ones(px.size)])
        seg = np.concatenate([s for _, _, s in levels] + [np.repeat(pseg, m)])
        mean = seg_mean[seg]
        as_array = lambda a: jnp.asarray(a, dtype=dtype)
        n0 = levels[0][0].size
        nodes = GaussianSource(as_array(lam), as_array(mean) if has_mean else None, as_array(weight))
        source = GaussianSource(as_array(lam[:n0]), as_array(mean[:n0]) if has_mean else None, as_array(weight[:n0]))
        sizes = (n0, levels[1][0].size, levels[2][0].size, pseg.size, m)
        return Compression(
            source=source,
            nodes=nodes,
            segments=jnp.asarray(np.concatenate([s for _, _, s in levels]), dtype=jnp.int32),
            probe_segments=jnp.asarray(pseg, dtype=jnp.int32),
            probe_mass=as_array(pmass),
            probe_em=as_array(pem),
            sizes=sizes,
            order=self.order,
            num_segments=max(1, seg_mean.size),
            dim=float(dim),
        )


def _compress_atoms(builder: _Builder, x, w, edges, mean: float):
    """Compress the discrete measure sum_i w_i delta(x_i) (x ascending, distinct) bin by bin, each bin a
    new segment with mean `mean`. Bins with at most q atoms keep their atoms exactly (in all three rules)."""
    keep = w > 0
    x, w = x[keep], w[keep]
    nb = edges.size - 1
    seg0 = builder.new_segments(nb, mean)
    if x.size == 0:
        return
    order = builder.order
    b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    count = np.bincount(b, minlength=nb)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    atom_exact = (count <= order)[b]
    builder.atoms(x[atom_exact], w[atom_exact], seg0 + b[atom_exact])
    gb = np.nonzero(count > order)[0]
    if gb.size == 0:
        return
    lo = x[starts[gb]]
    hi = x[starts[gb] + count[gb] - 1]
    sel = ~atom_exact
    row = np.full(nb, -1)
    row[gb] = np.arange(gb.size)
    r = row[b[sel]]
    y = 2.0 * (x[sel] - lo[r]) / (hi[r] - lo[r]) - 1.0
    mom = _legendre_moments(y, w[sel], r, gb.size, 2 * order)
    builder.gauss(lo, hi, mom, seg0 + gb)


def _edges(xmin: float, xmax: float, num_bins: int | None, bin_width: float) -> np.ndarray:
    span = xmax - xmin
    if span <= 0:
        return np.array([xmin - 0.5, xmax + 0.5])
    if num_bins is None:
        num_bins = max(1, int(math.ceil(span / bin_width)))
    edges = np.linspace(xmin, xmax, num_bins + 1)
    edges[-1] = np.nextafter(xmax, np.inf)
    return edges


def _check_order(order, bin_width, what: str):
    if isinstance(order, bool) or int(order) != order or order < 3:
        raise ValueError(f"{what}: order (Gauss nodes per bin) must be an integer >= 3; got {order!r}.")
    if not (isinstance(bin_width, (int, float)) and bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(
            f"{what}: bin_width (in natural-log units of lambda) must be finite and > 0; got {bin_width!r}."
        )


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

    **Returns:** a `Compression`; `.source` is the weighted source (at most $q\cdot$bins nodes per
    measure, plus the exact zero mode; `.source.num_modes` equals the source's), `.evaluate(per_mode)`
    gives a total and its error estimate. Zeros and repeated eigenvalues are merged exactly first
    (`deduplicate`).

    Accuracy with the defaults, measured on the bundled CIFAR-10 and ADSN spectra and power laws
    (`tests/test_compress.py`, `benchmarks/results/compress_cpu.md`): relative error $\le 10^{-11}$
    (of $W_2^2$: $\le 10^{-14}$) for every sampler on grids where it is stable, estimates $\le 10^{-10}$
    (EM, EI, DDPM, DDIM, Euler, Heun, RK4 at 10 to 1000 steps; fewer nodes, `order=4, bin_width=2.0`: 38
    for ADSN, still give $\le 10^{-8}$);
    unstable explicit ODE steps (Heun, RK4 on coarse grids at small $t_{\min}$) get an estimate of `inf`
    (module docstring).
    """
    _check_order(order, bin_width, "compress")
    if num_bins is not None and (isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1):
        raise ValueError(f"compress: num_bins must be a positive integer or None; got {num_bins!r}.")
    lam, w, m = _concrete_1d(source, "compress")
    values, weight, energy = _merge(lam, w, m)
    dim = float(weight.sum())
    builder = _Builder(int(order))
    zero = values == 0
    if np.any(zero):
        zw, ze = float(weight[zero].sum()), float(energy[zero].sum())
        builder.atoms([-np.inf], [zw], [builder.new_segments(1, math.sqrt(ze / zw))])
    values, weight, energy = values[~zero], weight[~zero], energy[~zero]
    if values.size:
        x = np.log(values)
        edges = _edges(float(x[0]), float(x[-1]), num_bins, bin_width)
        if np.any(energy > 0):
            c = float(np.max(energy / weight))  # = max m^2 = 1/c in the module docstring
            _compress_atoms(builder, x, np.maximum(weight - energy / c, 0.0), edges, 0.0)
            _compress_atoms(builder, x, energy / c, edges, math.sqrt(c))
        else:
            _compress_atoms(builder, x, weight, edges, 0.0)
    return builder.finish(dim, source.eigenvalues.dtype)


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

    The same law as `compress(GaussianSource.power_law(dim, ...))`, for $d$ up to $10^{15}$ at the cost
    of $d = $ `head`. The first `head` eigenvalues are atoms (compressed as by `compress`); for the tail
    $j >$ `head` each bin's modified moments $\sum_j p_l(x_j)$ are computed as integrals over $j$ (midpoint
    Euler–Maclaurin, by 64-point Gauss–Legendre in $\log j$), with each bin's weight its exact integer
    count of modes. The error of that step, at most $\frac1{24}\sum_j\max|\partial_j^2 f|$ per bin, is bounded
    in `evaluate` from the probe's Chebyshev coefficients and added to the estimate. Zero mean.

    **Arguments:** `dim` ($d \ge 1$), `exponent` ($\ge 0$), `scale` ($> 0$), `order` and `bin_width` as in
    `compress`, `head` (atoms kept as such, $\ge 1$).
    """
    _check_order(order, bin_width, "compress_power_law")
    if not (isinstance(dim, (int, float, np.integer, np.floating)) and math.isfinite(dim) and dim >= 1):
        raise ValueError(f"compress_power_law: dim must be a finite number >= 1; got {dim!r}.")
    if int(dim) != dim:
        raise ValueError(f"compress_power_law: dim must be a whole number of modes; got {dim!r}.")
    if not (math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"compress_power_law: exponent must be finite and >= 0; got {exponent!r}.")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"compress_power_law: scale must be finite and > 0; got {scale!r}.")
    if isinstance(head, bool) or int(head) != head or head < 1:
        raise ValueError(f"compress_power_law: head must be an integer >= 1; got {head!r}.")
    d, order = int(dim), int(order)
    if d > 2**53:
        raise ValueError(f"compress_power_law: dim must be at most 2**53 (exact float64 counts); got {dim!r}.")
    dtype = jnp.result_type(float)
    builder = _Builder(order)
    if exponent == 0:
        builder.atoms([math.log(scale)], [float(d)], [builder.new_segments(1, 0.0)])
        return builder.finish(d, dtype)
    p = float(exponent)
    h = min(d, int(head))
    x_of_j = lambda j: math.log(scale) - p * np.log(j)
    x_head = x_of_j(np.arange(1, h + 1, dtype=np.float64))
    edges = _edges(float(x_of_j(float(d))), float(x_head[0]), None, bin_width)
    _compress_atoms(builder, x_head[::-1].copy(), np.ones(h), edges, 0.0)
    if d > h:
        # Tail j in [h + 1, d]: its x range lies below the head's; split it at the bin edges into integer
        # ranges [a, b) and take moments of the continuous measure dj on [a - 1/2, b - 1/2].
        j_of_x = lambda xx: np.exp((math.log(scale) - xx) / p)
        inner = edges[(edges > x_of_j(float(d))) & (edges < x_of_j(h + 1.0))]
        cuts = np.clip(np.floor(j_of_x(inner)) + 1, h + 1, d + 1).astype(np.int64)
        bounds = np.unique(np.concatenate([[h + 1], cuts, [d + 1]]))
        a, b = bounds[:-1].astype(np.float64), bounds[1:].astype(np.float64)
        u0, u1 = np.log(a - 0.5), np.log(b - 0.5)
        gx, gw = np.polynomial.legendre.leggauss(64)
        u = 0.5 * (u0 + u1)[:, None] + 0.5 * (u1 - u0)[:, None] * gx[None, :]
        wu = 0.5 * (u1 - u0)[:, None] * gw[None, :] * np.exp(u)  # dj = e^u du
        lo, hi = x_of_j(b - 0.5), x_of_j(a - 0.5)
        y = 2.0 * (x_of_j(np.exp(u)) - lo[:, None]) / (hi - lo)[:, None] - 1.0
        rows = np.repeat(np.arange(a.size), gx.size)
        mom = _legendre_moments(y.ravel(), wu.ravel(), rows, a.size, 2 * order)
        mom *= ((b - a) / mom[:, 0])[:, None]  # exact integer counts (the integral of dj is b - a)
        mom[:, 0] = b - a  # bit for bit: the bin's weights are renormalized to this total
        # Midpoint-rule error of the bin, sum_j f(x_j) - integral: at most (1/24) sum_j max |d^2 f / dj^2|,
        # with d^2 f/dj^2 = (p^2 f_xx + p f_x) / j^2 and sum_{j >= a} (j - 1/2)^-2 <= 1/(a - 1).
        # In the probe's variable y, f_x = f_y * 2/(hi - lo).
        scale_y = 2.0 / (hi - lo)
        c = 1.0 / (24.0 * (a - 1.0))
        em = np.stack([c * p * scale_y, c * p * p * scale_y**2], axis=1)
        builder.gauss(lo, hi, mom, builder.new_segments(a.size, 0.0) + np.arange(a.size), em)
    return builder.finish(d, dtype)


# ---------------------------------------------------------------- compression as a drop-in for repeated evaluations

# Spectra this small are evaluated in full: a compression would not save enough to pay for its own check.
_MIN_MODES_FOR_LOSS = 1024
_MAX_CACHED = 8  # spectra whose compression is kept (the oldest goes first)
_loss_compressions: dict[tuple, GaussianSource | None] = {}


def compression_for_loss(source: GaussianSource) -> GaussianSource | None:
    """`compress(source).source` when it is worth using in place of `source` for a divergence evaluated many
    times (a grid search, an optimization): a concrete 1-D float64 spectrum of at least 1024 modes that compresses
    at least 4x (CIFAR-10: 3072 -> 204 modes). Else `None` (float32 too: its rounding, ~1e-7 relative, cannot pass
    the 1e-9 agreement check, which would only add a wasted run).

    The caller must check the compressed values against exact ones (`agrees`) before trusting it: the quadrature
    mis-represents samplers whose per-mode error is not smooth in the eigenvalue (unstable explicit steps). Cached
    per spectrum (by a digest of its arrays; the last 8) for the process: a compression costs ~2 ms for 3072
    modes, as much as a whole optimization."""
    lam = source.eigenvalues
    arrays = [x for x in (lam, source.mean, source.weights) if x is not None]
    if lam.ndim != 1 or lam.shape[0] < _MIN_MODES_FOR_LOSS or lam.dtype != np.float64:
        return None
    if any(isinstance(x, jax.core.Tracer) for x in arrays):
        return None
    digest = hashlib.blake2b(digest_size=16)
    for x in arrays:
        x = np.asarray(x)
        digest.update(f"{x.dtype}{x.shape}".encode())
        digest.update(x.tobytes())
    key = (digest.hexdigest(), source.mean is None, source.weights is None)
    if key not in _loss_compressions:
        compressed = compress(source).source
        _loss_compressions[key] = compressed if 4 * compressed.eigenvalues.shape[0] <= lam.shape[0] else None
        while len(_loss_compressions) > _MAX_CACHED:
            _loss_compressions.pop(next(iter(_loss_compressions)))
    return _loss_compressions[key]


def agrees(approx, exact, *, rtol: float = 1e-9) -> bool:
    """Whether `approx` reproduces `exact` (arrays of totals) to `rtol`, infinities at the same places."""
    approx, exact = np.asarray(approx, np.float64), np.asarray(exact, np.float64)
    finite = np.isfinite(exact)
    return bool(
        np.array_equal(finite, np.isfinite(approx))
        and np.all(np.abs(approx[finite] - exact[finite]) <= rtol * np.abs(exact[finite]))
    )
