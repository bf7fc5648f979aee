r"""KL divergences and Wasserstein-2 distances between commuting Gaussians (MATH.md section 3).

With $u = \ln(v/\lambda_t)$ (output variance over target variance) and mean gap $e$ per mode,

- $\mathrm{KL}(p_{\rm target}\|p_{\rm sample}) = \tfrac12\sum_i[\phi(-u_i) + e_i^2/v_i]$,
- $\mathrm{KL}(p_{\rm sample}\|p_{\rm target}) = \tfrac12\sum_i[\phi(u_i) + e_i^2/\lambda_{t,i}]$,
- $W_2^2 = \sum_i \lambda_{t,i}\,\mathrm{expm1}(u_i/2)^2 + e_i^2$,

where $\phi(x) = e^x - 1 - x$ is evaluated by its series near 0. $u$ comes from the law's stored
`log_variance_ratio`, never from $v/\lambda$ (which would cancel in float32).
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._errors import check
from ._law import GaussianLaw
from ._source import GaussianSource

Target = Literal["data", "truncated"]
Direction = Literal["target_to_sample", "sample_to_target"]


def expm1_minus_x(x: Array) -> Array:
    r"""$\phi(x) = e^x - 1 - x \ge 0$, accurate to full relative precision for small $|x|$."""
    small = jnp.abs(x) < 0.1
    xs = jnp.where(small, x, 0.0)
    # Horner form of x^2/2 + x^3/6 + ... + x^7/5040 (truncation error < 2e-11 relative at |x| = 0.1).
    series = xs * xs * (1 / 2 + xs * (1 / 6 + xs * (1 / 24 + xs * (1 / 120 + xs * (1 / 720 + xs / 5040)))))
    xl = jnp.where(small, 1.0, x)
    return jnp.where(small, series, jnp.expm1(xl) - xl)


class _Terms:
    """Per-mode ingredients of every divergence, for one target."""

    def __init__(self, source: GaussianSource, law: GaussianLaw, target: Target):
        lam = source.eigenvalues
        if law.variance.shape != lam.shape:
            raise ValueError(
                f"the law has shape {law.variance.shape} but the source's eigenvalues have shape "
                f"{lam.shape}: pass the same source that sample_law was given."
            )
        if target == "data":
            self.target_variance = lam
            positive = lam > 0
            safe_lam = jnp.where(positive, lam, 1.0)
            # ln(R^2_min / lam) = log1p((1 - abar)(1 - lam)/lam): stable for small (1 - abar).
            shift = jnp.log1p(law.one_minus_alpha_bar_min * (1 - safe_lam) / safe_lam)
            self.log_ratio = jnp.where(positive, law.log_variance_ratio + shift, jnp.inf)
            # g - 1 = (g - sqrt(abar)) + (sqrt(abar) - 1), the latter = -(1 - abar)/(1 + sqrt(abar)).
            gap = law.mean_deviation - law.one_minus_alpha_bar_min / (1 + jnp.sqrt(law.alpha_bar_min))
        elif target == "truncated":
            self.target_variance = law.alpha_bar_min * lam + law.one_minus_alpha_bar_min
            self.log_ratio = law.log_variance_ratio
            gap = law.mean_deviation
        else:
            raise ValueError(f"target must be 'data' (p_0) or 'truncated' (p_t_min); got {target!r}.")
        self.mean_gap = gap * source.mean_or_zero
        self.variance = law.variance
        self.source = source

    def require_regular(self, what: str):
        singular = self.target_variance <= 0
        if self.source.weights is not None:
            singular = singular & (self.source.weights > 0)
        self.log_ratio = check(
            self.log_ratio,
            singular,
            f"{what} against a singular target: a mode has target variance 0 (a zero eigenvalue, with "
            "target='data' or t_min = 0), so the KL is +inf. Use target='truncated' with t_min > 0, floor "
            "the eigenvalues (GaussianSource(jnp.maximum(eigenvalues, 1e-8))), or use w2, which is finite.",
        )


def _reduce(source: GaussianSource, per_mode: Array, reduce: bool) -> Array:
    if source.weights is not None:
        per_mode = per_mode * source.weights
    return jnp.sum(per_mode, axis=-1) if reduce else per_mode


def kl(
    source: GaussianSource,
    law: GaussianLaw,
    *,
    target: Target = "data",
    direction: Direction = "target_to_sample",
    reduce: bool = True,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""KL divergence between the target law and the sampler's output law (nats).

    **Arguments:**

    - `source`, `law`: the source and the output of `sample_law` on it.
    - `target`: `"data"` ($p_0 = \mathcal N(\mu, \Sigma)$) or `"truncated"` ($p_{t_{\min}}$, the law the
      sampler approximates when it stops at $t_{\min} > 0$).
    - `direction`: `"target_to_sample"` = KL(target ‖ sample) or `"sample_to_target"` = KL(sample ‖ target).
    - `reduce`: sum over modes (shape `(*batch,)`) or return each mode's contribution `(*batch, d)`
      (multiplied by the source's weights, so the contributions sum to the total).

    **Raises:** a clear error if a mode's target variance is 0 (KL is infinite there).
    """
    terms = _Terms(source, law, target)
    terms.require_regular("KL")
    u = terms.log_ratio
    if direction == "target_to_sample":
        per_mode = 0.5 * (expm1_minus_x(-u) + terms.mean_gap**2 / terms.variance)
    elif direction == "sample_to_target":
        per_mode = 0.5 * (expm1_minus_x(u) + terms.mean_gap**2 / terms.target_variance)
    else:
        raise ValueError(f"direction must be 'target_to_sample' or 'sample_to_target'; got {direction!r}.")
    return _reduce(source, per_mode, reduce)


def w2_squared(
    source: GaussianSource,
    law: GaussianLaw,
    *,
    target: Target = "data",
    reduce: bool = True,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""Squared Wasserstein-2 distance $\sum_i(\sqrt{v_i} - \sqrt{\lambda_{t,i}})^2 + e_i^2$ (finite for zero eigenvalues).

    Prefer this over `w2` as a loss: its gradient is bounded where the distance is 0.
    Arguments as in `kl`.
    """
    terms = _Terms(source, law, target)
    regular = terms.target_variance > 0
    u = jnp.where(regular, terms.log_ratio, 0.0)
    spread = jnp.where(
        regular,
        terms.target_variance * jnp.expm1(0.5 * u) ** 2,
        terms.variance,  # (sqrt(v) - 0)^2
    )
    return _reduce(source, spread + terms.mean_gap**2, reduce)


def w2(
    source: GaussianSource,
    law: GaussianLaw,
    *,
    target: Target = "data",
    reduce: bool = True,
) -> Float[Array, "*batch"] | Float[Array, "*batch d"]:
    r"""Wasserstein-2 distance between the sampler's output law and the target (square root of `w2_squared`).

    With `reduce=False`, the per-mode values are $\sqrt{\text{mode's } W_2^2}$ (they add in quadrature).
    """
    sq = w2_squared(source, law, target=target, reduce=reduce)
    positive = sq > 0
    # sqrt with a finite gradient at 0; a NaN stays NaN (never reported as a distance of 0).
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), jnp.where(jnp.isnan(sq), jnp.nan, 0.0))
