r"""Gaussian mixture data and their diffused laws ([LSSZ]; MATH.md section 5).

A mixture $p_0 = \sum_i \alpha_i\,\mathcal N(\mu_i, \Sigma_i)$ stays a mixture under the VP forward process:
$p_t = \sum_i \alpha_i\,\mathcal N(a_t\mu_i,\ a_t^2\Sigma_i + b_t^2 I)$ with $a_t = \sqrt{\bar\alpha}$,
$b_t^2 = 1 - \bar\alpha$, and the weights do not change. Everything below is closed form: densities through
Cholesky factors and `logsumexp` responsibilities, the score $-\sum_i w_i v_i$ and the Hessian
$-\sum_i w_i\Sigma_i^{-1} + \mathrm{Cov}_w(v)$ with $v_i = \Sigma_i^{-1}(x - \mu_i)$.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._core._dtype import cast
from .._core._errors import check, is_concrete
from .._schedule import AbstractSchedule
from .._core._source import GaussianSource

_LOG_2PI = float(np.log(2 * np.pi))


class GaussianMixture(eqx.Module):
    r"""A Gaussian mixture $\sum_i \alpha_i\,\mathcal N(\mu_i, \Sigma_i)$ in $\mathbb R^d$ with $k$ components.

    **Arguments:**

    - `weights`: mixture weights $\alpha$, shape `(k,)`, positive; normalized to sum to 1.
    - `means`: component means $\mu_i$, shape `(k, d)`.
    - `covariances`: full covariances `(k, d, d)` (symmetric positive definite) or diagonal ones `(k, d)`
      (the variances). Diagonal mixtures stay diagonal under `diffuse` and skip all matrix factorizations.

    Points `x` passed to the methods have shape `(*batch, d)`; results have shape `(*batch,)` (log-density),
    `(*batch, d)` (score) or `(*batch, d, d)` (Hessian).
    """

    weights: Float[Array, " k"]
    means: Float[Array, "k d"]
    covariances: Float[Array, "k d d"] | Float[Array, "k d"]
    diagonal: bool = eqx.field(static=True)

    def __init__(
        self,
        weights: Float[ArrayLike, " k"],
        means: Float[ArrayLike, "k d"],
        covariances: Float[ArrayLike, "k d d"] | Float[ArrayLike, "k d"],
    ):
        means = jnp.asarray(means)
        if not jnp.issubdtype(means.dtype, jnp.floating):
            means = means.astype(jnp.result_type(float))
        dtype = means.dtype
        weights = jnp.asarray(weights, dtype=dtype)
        covariances = jnp.asarray(covariances, dtype=dtype)
        if means.ndim != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(
                f"GaussianMixture: means must have shape (k, d) with k, d >= 1; got {means.shape}. "
                "For one component in d dimensions pass means[None]."
            )
        k, d = means.shape
        if weights.shape != (k,):
            raise ValueError(f"GaussianMixture: weights must have shape (k,) = ({k},); got {weights.shape}.")
        if covariances.shape == (k, d, d):
            diagonal = False
        elif covariances.shape == (k, d):
            diagonal = True
        else:
            raise ValueError(
                f"GaussianMixture: covariances must have shape (k, d, d) = ({k}, {d}, {d}) (full) or (k, d) = "
                f"({k}, {d}) (diagonal variances); got {covariances.shape}."
            )
        weights = check(
            weights,
            ~(weights > 0) | jnp.isinf(weights),
            "GaussianMixture: weights must be finite and > 0 (drop empty components instead of giving weight 0).",
        )
        means = check(means, ~jnp.isfinite(means), "GaussianMixture: means must be finite; found NaN or inf.")
        if diagonal:
            covariances = check(
                covariances,
                ~(covariances > 0) | jnp.isinf(covariances),
                "GaussianMixture: diagonal covariances (variances) must be finite and > 0.",
            )
        else:
            covariances = check(
                covariances,
                ~jnp.isfinite(covariances),
                "GaussianMixture: covariances must be finite; found NaN or inf.",
            )
            asym = jnp.abs(covariances - jnp.swapaxes(covariances, -1, -2))
            scale = jnp.max(jnp.abs(covariances), axis=(-1, -2), keepdims=True)
            covariances = check(
                covariances,
                asym > 1e-6 * scale,
                "GaussianMixture: covariances must be symmetric; symmetrize with 0.5 * (S + S.T).",
            )
            covariances = 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))
            chol = jnp.linalg.cholesky(covariances)
            covariances = check(
                covariances,
                ~jnp.isfinite(chol),
                "GaussianMixture: a covariance is not positive definite (Cholesky failed). Add a small "
                "multiple of the identity, or use a GaussianSource for degenerate Gaussians.",
            )
        self.weights = weights / jnp.sum(weights)
        self.means = means
        self.covariances = covariances
        self.diagonal = diagonal

    # ------------------------------------------------------------------ structure
    @property
    def num_components(self) -> int:
        """Number of components `k`."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Dimension `d`."""
        return self.means.shape[1]

    def full_covariances(self) -> Float[Array, "k d d"]:
        """The covariances as `(k, d, d)` matrices (diagonal ones expanded)."""
        if self.diagonal:
            return jax.vmap(jnp.diag)(self.covariances)
        return self.covariances

    def precisions(self, factors=None) -> Float[Array, "k d d"]:
        r"""The precision matrices $\Sigma_i^{-1}$, `(k, d, d)` (Cholesky solves, not inverses)."""
        precision = (self._factors() if factors is None else factors)[1]
        if self.diagonal:
            return jax.vmap(jnp.diag)(precision)
        return precision

    # ------------------------------------------------------------------ moments
    def mean(self) -> Float[Array, " d"]:
        r"""The mixture mean $\sum_i\alpha_i\mu_i$."""
        return self.weights @ self.means

    def covariance(self) -> Float[Array, "d d"]:
        r"""The mixture covariance $\sum_i\alpha_i(\Sigma_i + \mu_i\mu_i^\top) - \bar\mu\bar\mu^\top$."""
        centred = self.means - self.mean()
        within = jnp.einsum("k,kij->ij", self.weights, self.full_covariances())
        between = jnp.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return within + between

    def second_moment(self) -> Float[Array, ""]:
        r"""$\mathbb E\|x\|^2 = \sum_i\alpha_i(\|\mu_i\|^2 + \mathrm{tr}\,\Sigma_i)$."""
        if self.diagonal:
            traces = jnp.sum(self.covariances, axis=-1)
        else:
            traces = jnp.trace(self.covariances, axis1=-2, axis2=-1)
        return self.weights @ (jnp.sum(self.means**2, axis=-1) + traces)

    def moment_matched(self) -> tuple[GaussianSource, Float[Array, "d d"]]:
        r"""The Gaussian $\mathcal N(\bar\mu, \Sigma)$ with the mixture's mean and covariance, as a source.

        **Returns:** `(source, basis)`: a `GaussianSource` with the covariance's eigenvalues and the mean in
        eigen-coordinates $m = U^\top\bar\mu$, and the eigenbasis $U$ `(d, d)` (columns), so that a law
        $\mathcal N(g\,m, v)$ in eigen-coordinates is $\mathcal N(U(g\,m), U\mathrm{diag}(v)U^\top)$ in full ones.
        """
        lam, basis = jnp.linalg.eigh(self.covariance())
        lam = jnp.maximum(lam, 0.0)  # round-off negatives of a PSD matrix
        return GaussianSource(lam, mean=basis.T @ self.mean()), basis

    # ------------------------------------------------------------------ diffusion
    def at_alpha_bar(self, alpha_bar: Float[ArrayLike, ""]) -> GaussianMixture:
        r"""The law of $x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,z$ for a given $\bar\alpha \in [0, 1]$ (scalar)."""
        ab = jnp.asarray(alpha_bar, dtype=self.means.dtype)
        ab = check(ab, ~((ab >= 0) & (ab <= 1)), "GaussianMixture: alpha_bar must lie in [0, 1].")
        return self._diffused(ab, 1 - ab)

    def diffuse(self, schedule: AbstractSchedule, t: Float[ArrayLike, ""]) -> GaussianMixture:
        r"""The diffused law $p_t = \sum_i\alpha_i\mathcal N(a_t\mu_i,\ a_t^2\Sigma_i + b_t^2I)$ at forward time `t` (scalar).

        Uses the schedule's accurate $1-\bar\alpha$ (so $p_t$ near $t = 0$ keeps full precision).
        """
        dtype = self.means.dtype
        schedule = cast(schedule, dtype)  # evaluate the schedule in the mixture's precision
        t = jnp.asarray(t, dtype=dtype)
        if t.ndim != 0:
            raise ValueError(f"GaussianMixture.diffuse: t must be a scalar time; got shape {t.shape}. Use jax.vmap.")
        t = check(t, ~((t >= 0) & (t <= 1)), "GaussianMixture.diffuse: t must lie in [0, 1].")
        ab = jnp.asarray(schedule.alpha_bar(t), dtype=dtype)
        omab = jnp.asarray(schedule.one_minus_alpha_bar(t), dtype=dtype)
        return self._diffused(ab, omab)

    def _diffused(self, ab, omab) -> GaussianMixture:
        a = jnp.sqrt(ab)
        if self.diagonal:
            covs = ab * self.covariances + omab
        else:
            covs = ab * self.covariances + omab * jnp.eye(self.dim, dtype=self.means.dtype)
        # Swap the leaves without re-validating (the inputs were validated; this also runs inside jit).
        return eqx.tree_at(lambda m: (m.means, m.covariances), self, (a * self.means, covs))

    # ------------------------------------------------------------------ densities
    def _factors(self):
        r"""Per component: $\tfrac12\log\det\Sigma_i$ (from the Cholesky factor) and $\Sigma_i^{-1}$ (Cholesky solve).

        Computed once per call, outside the per-point maps, so that each point costs only matrix-vector products.
        """
        if self.diagonal:
            return 0.5 * jnp.sum(jnp.log(self.covariances), axis=-1), 1 / self.covariances
        chol = jnp.linalg.cholesky(self.covariances)
        half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        precision = jax.vmap(lambda c: jsl.cho_solve((c, True), eye))(chol)
        return half_logdet, 0.5 * (precision + jnp.swapaxes(precision, -1, -2))

    def _solve(self, precision, r):
        r"""$\Sigma_i^{-1} r_i$ for residuals r (k, d)."""
        if self.diagonal:
            return precision * r
        return jnp.einsum("kij,kj->ki", precision, r)

    def _component_log_probs(self, factors, x):
        half_logdet, precision = factors
        r = x[None, :] - self.means
        quad = jnp.sum(r * self._solve(precision, r), axis=-1)
        return jnp.log(self.weights) - 0.5 * quad - half_logdet - 0.5 * self.dim * _LOG_2PI

    def _score_terms(self, factors, y):
        """Responsibilities w (k,) and v_i = Sigma_i^{-1}(y - mu_i) (k, d) at one point y (d,)."""
        w = jax.nn.softmax(self._component_log_probs(factors, y))
        v = self._solve(factors[1], y[None, :] - self.means)
        return w, v

    def _point(self, what, x, extra=None):
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"GaussianMixture: points must have shape (*batch, d) with d = {self.dim}; got {x.shape}.")
        x = x.astype(self.means.dtype)
        out = _evaluate(self, what, x.reshape(-1, self.dim), extra)
        return out.reshape(x.shape[:-1] + out.shape[1:])

    def component_log_probs(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch k"]:
        r"""$\log\alpha_i + \log\mathcal N(x;\mu_i,\Sigma_i)$ per component."""
        return self._point("components", x)

    def log_prob(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch"]:
        r"""$\log p(x)$ by `logsumexp` over components (no underflow far from the data)."""
        return self._point("log_prob", x)

    def responsibilities(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch k"]:
        r"""Posterior component probabilities $w_i(x) = \alpha_i\mathcal N_i(x)/p(x)$."""
        return self._point("responsibilities", x)

    def score(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d"]:
        r"""$\nabla\log p(x) = -\sum_i w_i(x)\,\Sigma_i^{-1}(x - \mu_i)$."""
        return self._point("score", x)

    def hessian(self, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d d"]:
        r"""$\nabla^2\log p(x) = -\sum_i w_i\Sigma_i^{-1} + \sum_i w_i v_iv_i^\top - \bar v\bar v^\top$, $\bar v = \sum_i w_iv_i$."""
        return self._point("hessian", x)

    def posterior_mean(
        self, x: Float[ArrayLike, "*batch d"], alpha_bar: Float[ArrayLike, ""]
    ) -> Float[Array, "*batch d"]:
        r"""The denoiser $\mathbb E[x_0 \mid x_t = x]$ when `self` is the clean law and $x_t$ has signal level `alpha_bar`.

        $\sum_i w_i(x)\big(\mu_i + a\Sigma_i(a^2\Sigma_i + b^2I)^{-1}(x - a\mu_i)\big)$ with the responsibilities of
        $p_t$; well defined at $\bar\alpha = 0$ (it is then the mixture mean), where Tweedie's formula
        $(x + b^2\nabla\log p_t)/a$ is $0/0$.
        """
        return self._point("posterior_mean", x, jnp.asarray(alpha_bar, dtype=self.means.dtype))

    # ------------------------------------------------------------------ sampling
    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """`n` exact samples: a component by its weight, then $\\mu_i + L_i z$ with $L_i$ the Cholesky factor."""
        return _sample(self, key, int(n))


@eqx.filter_jit
def _sample(mixture: GaussianMixture, key, n: int):
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, jnp.log(mixture.weights), shape=(n,))
    z = jax.random.normal(k_noise, (n, mixture.dim), dtype=mixture.means.dtype)
    if mixture.diagonal:
        return mixture.means[comp] + jnp.sqrt(mixture.covariances[comp]) * z
    chol = jnp.linalg.cholesky(mixture.covariances)
    return mixture.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)


def covariance_crossings(mixture: GaussianMixture, *, rtol: float = 1e-9) -> list[tuple[int, int]]:
    r"""Pairs $(i, j)$, $i < j$, whose covariance difference $\Sigma_i - \Sigma_j$ is indefinite ("crossing").

    Indefinite means eigenvalues of both signs beyond `rtol` times the largest covariance eigenvalue. The
    property is invariant under diffusion ($\Sigma_i(t) - \Sigma_j(t) = a_t^2(\Sigma_i - \Sigma_j)$), so it
    holds at every $t < 1$. Needs concrete (non-traced) arrays.
    """
    if not is_concrete(mixture.covariances):
        raise ValueError("covariance_crossings inspects values: call it outside jax.jit.")
    covs = np.asarray(mixture.full_covariances(), dtype=float)
    scale = float(np.max(np.abs(np.linalg.eigvalsh(covs))))
    pairs = []
    for i in range(covs.shape[0]):
        for j in range(i + 1, covs.shape[0]):
            ev = np.linalg.eigvalsh(covs[i] - covs[j])
            if ev.max() > rtol * scale and ev.min() < -rtol * scale:
                pairs.append((i, j))
    return pairs


@eqx.filter_jit
def _evaluate(mixture: GaussianMixture, what: str, flat, extra):
    """One compiled evaluation per (mixture structure, quantity, batch shape): factors once, then vmap over points."""
    if what == "posterior_mean":
        ab = extra
        noisy = mixture._diffused(ab, 1 - ab)
        factors = noisy._factors()
        a = jnp.sqrt(ab)

        def one(y):
            w, v = noisy._score_terms(factors, y)  # v_i = Sigma_i(t)^{-1}(y - a mu_i)
            if mixture.diagonal:
                gain = mixture.covariances * v
            else:
                gain = jnp.einsum("kij,kj->ki", mixture.covariances, v)
            return w @ (mixture.means + a * gain)

        return jax.vmap(one)(flat)
    factors = mixture._factors()
    if what == "components":
        one = lambda y: mixture._component_log_probs(factors, y)
    elif what == "log_prob":
        one = lambda y: jax.nn.logsumexp(mixture._component_log_probs(factors, y))
    elif what == "responsibilities":
        one = lambda y: jax.nn.softmax(mixture._component_log_probs(factors, y))
    elif what == "score":

        def one(y):
            w, v = mixture._score_terms(factors, y)
            return -(w @ v)

    elif what == "hessian":
        precisions = mixture.precisions(factors)

        def one(y):
            w, v = mixture._score_terms(factors, y)
            centred = v - w @ v
            return -jnp.einsum("k,kij->ij", w, precisions) + jnp.einsum("k,ki,kj->ij", w, centred, centred)

    else:  # pragma: no cover - internal
        raise ValueError(what)
    return jax.vmap(one)(flat)
