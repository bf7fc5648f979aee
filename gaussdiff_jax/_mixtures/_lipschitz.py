r"""Lipschitz constants of the score of a Gaussian mixture ([LSSZ]; MATH.md section 5).

The score's Lipschitz constant on a region is the supremum there of the spectral norm of the Hessian
$H(x) = -\sum_i w_i\Sigma_i^{-1} + \mathrm{Cov}_w(v)$, $v_i = \Sigma_i^{-1}(x - \mu_i)$. What is known in closed form:

- one Gaussian: $1/\lambda_{\min}(\Sigma)$ exactly (for a diffused law, $1/(a_t^2\lambda_{\min} + b_t^2)$);
- shared covariance: the tight, $k$-free bound
  $\max\{1/\lambda_{\min}(\Sigma),\ \tfrac14\max_{ij}\|\Sigma^{-1}(\mu_i - \mu_j)\|^2 - 1/\lambda_{\max}(\Sigma)\}$,
  attained by a symmetric pair whose mean gap is an eigenvector of $\lambda_{\max}$;
- crossing covariances ($\Sigma_i - \Sigma_j$ indefinite, not hidden at infinity by other components): the
  global constant is infinite. Along the set where the two components balance, $\|v_i - v_j\|$ grows
  linearly, so $\|H\|$ grows quadratically. A finite number then only means something with its region,
  which is what `maximize_hessian_norm` reports.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._core._errors import is_concrete
from .._schedule import AbstractSchedule
from ._mixture import GaussianMixture, covariance_crossings

Kind = Literal["exact", "tight_bound", "unbounded", "no_closed_form"]


class LipschitzConstant(eqx.Module):
    r"""A global Lipschitz constant of $x \mapsto \nabla\log p(x)$ on $\mathbb R^d$, with what kind of number it is.

    **Fields:**

    - `value`: the constant (scalar array): finite for `"exact"` and `"tight_bound"`, `inf` for `"unbounded"`,
      `nan` for `"no_closed_form"`.
    - `kind`: `"exact"` (one Gaussian, or identical components), `"tight_bound"` (shared covariance: an upper
      bound that some symmetric pair attains), `"unbounded"` (crossing covariances), `"no_closed_form"`
      (distinct but nested covariances, or crossings hidden at infinity: finite or not, no formula; use
      `maximize_hessian_norm` on a stated region).
    - `crossing_pairs`: the component pairs with indefinite covariance difference.
    - `message`: one sentence saying what the number means.
    """

    value: Float[Array, ""]
    kind: Kind = eqx.field(static=True)
    crossing_pairs: tuple[tuple[int, int], ...] = eqx.field(static=True)
    message: str = eqx.field(static=True)


def gaussian_score_lipschitz(
    eigenvalues: Float[ArrayLike, "*batch d"], schedule: AbstractSchedule, t: Float[ArrayLike, ""]
) -> Float[Array, "*batch"]:
    r"""Exact Lipschitz constant of the score of $p_t$ for Gaussian data: $1/(a_t^2\lambda_{\min} + b_t^2)$."""
    lam = jnp.asarray(eigenvalues)
    return 1 / (schedule.alpha_bar(t) * jnp.min(lam, axis=-1) + schedule.one_minus_alpha_bar(t))


def score_lipschitz(
    mixture: GaussianMixture,
    schedule: AbstractSchedule | None = None,
    t: Float[ArrayLike, ""] | None = None,
    *,
    rtol: float = 1e-9,
) -> LipschitzConstant:
    r"""The global Lipschitz constant of the score of `mixture` (or of its diffused law at `t`), when one exists.

    **Arguments:**

    - `mixture`: the law whose score is meant ($p_0$, or already diffused).
    - `schedule`, `t`: if given, use $p_t$ = `mixture.diffuse(schedule, t)`.
    - `rtol`: relative tolerance for "equal" and "indefinite" covariance comparisons.

    **Returns:** a `LipschitzConstant`; see its `kind` before using `value`. Never a finite number for
    crossing covariances. Needs concrete arrays (call outside `jax.jit`).
    """
    if (schedule is None) != (t is None):
        raise ValueError("score_lipschitz: give both schedule and t (to diffuse first) or neither.")
    if schedule is not None:
        mixture = mixture.diffuse(schedule, t)
    if not is_concrete(mixture):
        raise ValueError("score_lipschitz inspects covariance structure: call it outside jax.jit.")
    covs = np.asarray(mixture.full_covariances(), dtype=float)
    means = np.asarray(mixture.means, dtype=float)
    k = covs.shape[0]
    dtype = mixture.means.dtype
    scale = float(np.max(np.abs(covs)))
    shared = all(np.max(np.abs(covs[i] - covs[0])) <= rtol * scale for i in range(k))
    if shared:
        lam = np.linalg.eigvalsh(covs[0])
        far = 1 / lam[0]
        if k == 1 or np.max(np.abs(means - means[0])) == 0:
            return LipschitzConstant(
                jnp.asarray(far, dtype), "exact", (), "exact: 1/lambda_min of the (shared) covariance."
            )
        gaps = np.linalg.solve(covs[0], (means[:, None, :] - means[None, :, :]).reshape(-1, means.shape[1]).T)
        spread = 0.25 * float(np.max(np.sum(gaps**2, axis=0)))
        value = max(far, spread - 1 / lam[-1])
        return LipschitzConstant(
            jnp.asarray(value, dtype),
            "tight_bound",
            (),
            "upper bound max{1/lambda_min, max_ij |Sigma^-1 (mu_i - mu_j)|^2 / 4 - 1/lambda_max}; attained when "
            "the extreme mean gap is a top eigenvector of Sigma (a symmetric pair).",
        )
    pairs = tuple(covariance_crossings(mixture, rtol=rtol))
    if pairs and any(_exposed_at_infinity(covs, i, j) for i, j in pairs):
        return LipschitzConstant(
            jnp.asarray(jnp.inf, dtype),
            "unbounded",
            pairs,
            f"unbounded: covariances of components {pairs} cross (Sigma_i - Sigma_j indefinite), so |Hessian| grows "
            "quadratically along the set where they balance. Report a Lipschitz constant only with its region "
            "(maximize_hessian_norm).",
        )
    return LipschitzConstant(
        jnp.asarray(jnp.nan, dtype),
        "no_closed_form",
        pairs,
        "no closed form for distinct covariances (nested, or crossings dominated at infinity by other "
        "components): use maximize_hessian_norm over a stated region.",
    )


def _exposed_at_infinity(covs: np.ndarray, i: int, j: int, num: int = 2048, seed: int = 0) -> bool:
    r"""Whether components i, j tie for dominance in some direction at infinity.

    Far along a unit direction $u$ the log-weight of component $l$ is $-\tfrac12 r^2 u^\top P_l u + O(r)$. A
    crossing pair makes $|H|$ unbounded where $u^\top P_i u = u^\top P_j u$ is also the minimum over all $l$.
    With $k = 2$ this always holds; otherwise directions on the tie cone are sampled (great circles between
    a direction where $P_i - P_j$ is positive and one where it is negative).
    """
    if covs.shape[0] == 2:
        return True
    precisions = np.linalg.inv(covs)
    diff = precisions[i] - precisions[j]
    ev, vecs = np.linalg.eigh(diff)
    rng = np.random.default_rng(seed)
    pos, neg = vecs[:, ev > 0], vecs[:, ev < 0]
    u = pos @ rng.normal(size=(pos.shape[1], num))
    v = neg @ rng.normal(size=(neg.shape[1], num))
    # On the circle cos(th) u + sin(th) v solve a cos^2 + 2 b cos sin + c sin^2 = 0 for tan(th).
    a = np.einsum("in,ij,jn->n", u, diff, u)
    b = np.einsum("in,ij,jn->n", u, diff, v)
    c = np.einsum("in,ij,jn->n", v, diff, v)
    disc = np.sqrt(np.maximum(b * b - a * c, 0.0))
    for sign in (1.0, -1.0):
        tan = (-b + sign * disc) / c
        w = u + tan * v
        w = w / np.linalg.norm(w, axis=0)
        q = np.einsum("in,lij,jn->ln", w, precisions, w)
        if np.any(q[i] <= q.min(axis=0) * (1 + 1e-9)):
            return True
    return False


def hessian_eigenvalue_bounds(
    mixture: GaussianMixture, x: Float[ArrayLike, "*batch d"]
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"]]:
    r"""Pointwise two-sided bounds on the Hessian's eigenvalues at `x`.

    From $-\sum_iw_i\Sigma_i^{-1} \preceq H(x) \preceq -\sum_iw_i\Sigma_i^{-1} + \mathrm{Cov}_w(v)$ (Weyl):
    $\lambda_{\min}(H) \ge -\lambda_{\max}(\bar P)$ and $\lambda_{\max}(H) \le \lambda_{\max}(\mathrm{Cov}_w(v)) - \lambda_{\min}(\bar P)$,
    with $\bar P = \sum_iw_i(x)\Sigma_i^{-1}$. Hence $\|H(x)\| \le \max(\lambda_{\max}(\bar P),\ \text{upper})$.
    Both are equalities for a single Gaussian.

    **Returns:** `(lower, upper)`, each of shape `(*batch,)`.
    """
    x = jnp.asarray(x, dtype=mixture.means.dtype)
    if x.ndim == 0 or x.shape[-1] != mixture.dim:
        raise ValueError(f"hessian_eigenvalue_bounds: points must have shape (*batch, {mixture.dim}); got {x.shape}.")
    lo, hi = _eigenvalue_bounds(mixture, x.reshape(-1, mixture.dim))
    return lo.reshape(x.shape[:-1]), hi.reshape(x.shape[:-1])


@eqx.filter_jit
def _eigenvalue_bounds(mixture, flat):
    factors = mixture._factors()
    precisions = mixture.precisions(factors)

    def one(y):
        w, v = mixture._score_terms(factors, y)
        pbar = jnp.einsum("k,kij->ij", w, precisions)
        centred = v - w @ v
        cov = jnp.einsum("k,ki,kj->ij", w, centred, centred)
        ep = jnp.linalg.eigvalsh(pbar)
        return -ep[-1], jnp.linalg.eigvalsh(cov)[-1] - ep[0]

    return jax.vmap(one)(flat)


class HessianNormMaximum(eqx.Module):
    r"""Result of `maximize_hessian_norm`: the largest $\|\nabla^2\log p\|_2$ found on a box.

    **Fields:** `value` (the maximum found: a lower bound on the supremum, and the Lipschitz constant of the
    score on the box up to the optimizer's accuracy), `argmax` `(d,)`, `log_density` and `density` of the
    mixture at `argmax` (how much probability mass is near the worst point), and the box `lower`, `upper` `(d,)`.
    """

    value: Float[Array, ""]
    argmax: Float[Array, " d"]
    log_density: Float[Array, ""]
    density: Float[Array, ""]
    lower: Float[Array, " d"]
    upper: Float[Array, " d"]


def hessian_norm(mixture: GaussianMixture, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch"]:
    r"""Spectral norm $\|\nabla^2\log p(x)\|_2$ (largest absolute eigenvalue)."""
    return _spectral_norm(mixture.hessian(x))


def _spectral_norm(h):
    """Largest absolute eigenvalue of symmetric matrices (..., d, d); closed form for d <= 2 (cheap to compile)."""
    d = h.shape[-1]
    if d == 1:
        return jnp.abs(h[..., 0, 0])
    if d == 2:
        half_trace = 0.5 * (h[..., 0, 0] + h[..., 1, 1])
        radius = jnp.sqrt((0.5 * (h[..., 0, 0] - h[..., 1, 1])) ** 2 + h[..., 0, 1] ** 2)
        return jnp.abs(half_trace) + radius
    eig = jnp.linalg.eigvalsh(h)
    return jnp.maximum(-eig[..., 0], eig[..., -1])


def maximize_hessian_norm(
    mixture: GaussianMixture,
    *,
    radius: float | None = None,
    lower: Float[ArrayLike, " d"] | None = None,
    upper: Float[ArrayLike, " d"] | None = None,
    key: PRNGKeyArray | None = None,
    num_starts: int = 512,
    num_lines: int = 256,
    num_refine: int = 32,
    steps: int = 400,
) -> HessianNormMaximum:
    r"""Numerically maximize $\|\nabla^2\log p(x)\|_2$ over a box: the score's Lipschitz constant on that region.

    **Arguments:**

    - `mixture`: the law (e.g. `gmm.diffuse(schedule, t)`).
    - `radius`: the box $[-R, R]^d$; or give `lower` and `upper` `(d,)` instead.
    - `key`: PRNG key for the starting points (default `PRNGKey(0)`).
    - `num_starts`: uniform random starting points; `num_lines`: random lines per component pair on which
      the points where the pair balances ($w_i = w_j$, where $\mathrm{Cov}_w(v)$ peaks) are solved exactly
      (the log-weight ratio is quadratic along a line), as many again lying in the box's faces (for crossing
      covariances $\|H\|$ grows along the balance set, so the maximum sits on the boundary); plus the component
      means and, for $d \le 10$, the corners.
    - `num_refine`, `steps`: the best `num_refine` candidates are refined by a derivative-free local search
      (random moves with adaptive step sizes, kept inside the box) for `steps` iterations.

    **Returns:** a `HessianNormMaximum` (value, argmax, log-density and density there, the box).
    The value is the best found, a lower bound on the true supremum over the box.
    """
    d = mixture.dim
    dtype = mixture.means.dtype
    if radius is not None:
        if lower is not None or upper is not None:
            raise ValueError("maximize_hessian_norm: give radius, or lower and upper, not both.")
        if not float(radius) > 0:
            raise ValueError(f"maximize_hessian_norm: radius must be > 0; got {radius}.")
        lo = -float(radius) * jnp.ones(d, dtype)
        hi = float(radius) * jnp.ones(d, dtype)
    elif lower is not None and upper is not None:
        lo, hi = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
        if lo.shape != (d,) or hi.shape != (d,):
            raise ValueError(f"maximize_hessian_norm: lower and upper must have shape ({d},).")
        if not bool(jnp.all(hi > lo)):
            raise ValueError("maximize_hessian_norm: need upper > lower in every coordinate.")
    else:
        raise ValueError(
            "maximize_hessian_norm needs a region: radius=R for [-R, R]^d, or lower= and upper=. "
            "A Lipschitz constant of a mixture score means nothing without its region."
        )
    if key is None:
        key = jax.random.PRNGKey(0)
    value, x, logp = _maximize(mixture, lo, hi, key, num_starts, num_lines, num_refine, steps)
    return HessianNormMaximum(value, x, logp, jnp.exp(logp), lo, hi)


@eqx.filter_jit
def _maximize(mixture, lo, hi, key, num_starts, num_lines, num_refine, steps):
    d, k = mixture.dim, mixture.num_components
    dtype = mixture.means.dtype
    width = hi - lo
    k_start, k_line_p, k_line_e, k_refine = jax.random.split(key, 4)
    starts = lo + width * jax.random.uniform(k_start, (num_starts, d), dtype=dtype)
    seeds = [starts, jnp.clip(mixture.means, lo, hi), 0.5 * (lo + hi)[None]]
    if d <= 10:
        corners = jnp.asarray(np.array(np.meshgrid(*[[0.0, 1.0]] * d, indexing="ij")).reshape(d, -1).T, dtype)
        seeds.append(lo + width * corners)
    if k >= 2:
        seeds.append(_balance_seeds(mixture, lo, hi, k_line_p, k_line_e, num_lines, on_faces=False))
        if d > 1:  # in 1-D the faces are the corners
            seeds.append(_balance_seeds(mixture, lo, hi, k_line_e, k_line_p, num_lines, on_faces=True))
    cand = jnp.concatenate(seeds, axis=0)
    f = lambda y: hessian_norm(mixture, y)
    vals = f(cand)
    vals = jnp.where(jnp.isfinite(vals), vals, -jnp.inf)
    top = jnp.argsort(-vals)[:num_refine]
    x0 = cand[top]

    # Derivative-free local search (compiles far faster than differentiating the Hessian's eigenvalues and
    # follows the thin ridges where two components balance): each candidate tries random moves of its own
    # step size, takes the best improving one and grows the step, or shrinks the step when none improves.
    num_moves = 4 * d + 4
    x, best_v = x0, vals[top]
    step0 = 0.05 * jnp.broadcast_to(width, x0.shape)
    keys = jax.random.split(k_refine, steps)

    def body(carry, key):
        x, v, step = carry
        dirs = jax.random.normal(key, (x.shape[0], num_moves, d), dtype=dtype)
        dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
        prop = jnp.clip(x[:, None, :] + step[:, None, :] * dirs, lo, hi)
        pv = hessian_norm(mixture, prop)
        pv = jnp.where(jnp.isfinite(pv), pv, -jnp.inf)
        j = jnp.argmax(pv, axis=1)
        cand_v = jnp.take_along_axis(pv, j[:, None], axis=1)[:, 0]
        cand_x = jnp.take_along_axis(prop, j[:, None, None], axis=1)[:, 0]
        ok = cand_v > v
        x = jnp.where(ok[:, None], cand_x, x)
        v = jnp.where(ok, cand_v, v)
        step = jnp.where(ok[:, None], jnp.minimum(1.5 * step, 0.25 * width), 0.6 * step)
        step = jnp.maximum(step, 1e-12 * width)
        return (x, v, step), None

    (x, best_v, _), _ = jax.lax.scan(body, (x, best_v, step0), keys)
    best_u = (x - lo) / width
    to_x = lambda u: lo + width * u
    i = jnp.argmax(best_v)
    x = to_x(best_u[i])
    return best_v[i], x, mixture.log_prob(x)


def _balance_seeds(mixture, lo, hi, key_p, key_e, num_lines, *, on_faces):
    """Points on random lines where two components have equal weighted density (exact quadratic roots).

    With `on_faces` (d > 1), line `n` lies in face `n mod 2d` of the box (coordinate `(n mod 2d) // 2` pinned to
    its lower or upper end, no motion along it), so the balance set's crossings with the boundary are found directly.
    """
    d, k = mixture.dim, mixture.num_components
    dtype = mixture.means.dtype
    width = hi - lo
    p = lo + width * jax.random.uniform(key_p, (num_lines, d), dtype=dtype)
    e = jax.random.normal(key_e, (num_lines, d), dtype=dtype)
    if on_faces:
        face = np.arange(num_lines) % (2 * d)
        pinned = jax.nn.one_hot(face // 2, d, dtype=bool)
        p = jnp.where(pinned, jnp.where((face % 2 == 0)[:, None], lo, hi), p)
        e = jnp.where(pinned, 0.0, e)
    e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
    scale = jnp.linalg.norm(width)
    ii, jj = np.triu_indices(k, 1)

    factors = mixture._factors()

    def per_line(p1, e1):
        # log-weight differences at s = -L, 0, L give the exact quadratic a s^2 + b s + c.
        logs = jax.vmap(lambda y: mixture._component_log_probs(factors, y))(
            p1[None] + jnp.array([-1.0, 0.0, 1.0], dtype)[:, None] * scale * e1
        )
        diff = logs[:, ii] - logs[:, jj]  # (3, pairs)
        c = diff[1]
        b = (diff[2] - diff[0]) / (2 * scale)
        a = (diff[2] + diff[0] - 2 * diff[1]) / (2 * scale**2)
        disc = b * b - 4 * a * c
        root = jnp.sqrt(jnp.maximum(disc, 0.0))
        safe_a = jnp.where(jnp.abs(a) > 0, a, 1.0)
        quad = jnp.stack([(-b + root) / (2 * safe_a), (-b - root) / (2 * safe_a)])
        lin = jnp.where(jnp.abs(b) > 0, -c / jnp.where(jnp.abs(b) > 0, b, 1.0), 0.0)
        s = jnp.where(jnp.abs(a) * scale > 1e-12 * jnp.abs(b), quad, jnp.stack([lin, lin]))
        s = jnp.where(disc >= 0, s, 0.0).reshape(-1)
        pts = p1[None] + s[:, None] * e1[None]
        return jnp.clip(pts, lo, hi)

    return jax.vmap(per_line)(p, e).reshape(-1, d)
