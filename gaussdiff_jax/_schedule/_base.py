"""The abstract noise schedule: the map t -> alpha_bar(t) of the VP forward process (MATH.md section 1)."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

Time = Float[ArrayLike, "*shape"]


class AbstractSchedule(eqx.Module):
    r"""A VP noise schedule $t \mapsto \bar\alpha(t)$ on $t \in [0, 1]$, with $\bar\alpha$ decreasing.

    Subclasses define `log_snr` ($\ell = \log(\bar\alpha / (1 - \bar\alpha))$). Everything else
    follows from it: $\bar\alpha = \mathrm{sigmoid}(\ell)$, $1-\bar\alpha = \mathrm{sigmoid}(-\ell)$,
    $\sigma = e^{-\ell/2}$ and $\beta = -\frac{d}{dt}\log\bar\alpha$ (by forward-mode autodiff).
    Subclasses override the derived methods where a closed form is more accurate, in particular
    `alpha_bar_increment` and `log_alpha_bar_ratio`, which are differences of nearby values and
    decide the float32 accuracy of fine grids.

    All methods act elementwise on `t` of any shape; `t` is a forward time (0 = data, 1 = noise).
    """

    @abc.abstractmethod
    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        r"""Log signal-to-noise ratio $\ell(t) = \log(\bar\alpha/(1-\bar\alpha)) = -2\log\sigma$ (decreasing)."""

    def alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        r"""Signal fraction $\bar\alpha(t) \in [0, 1]$ of $x_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,z$."""
        return jax.nn.sigmoid(self.log_snr(t))

    def one_minus_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        r"""$1 - \bar\alpha(t)$, accurate also where $\bar\alpha \approx 1$."""
        return jax.nn.sigmoid(-self.log_snr(t))

    def log_alpha_bar(self, t: Time) -> Float[Array, "*shape"]:
        r"""$\log\bar\alpha(t) \le 0$."""
        return -jax.nn.softplus(-self.log_snr(t))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        r"""VE / EDM noise level $\sigma(t) = \sqrt{(1-\bar\alpha)/\bar\alpha}$."""
        return jnp.exp(-0.5 * self.log_snr(t))

    def beta(self, t: Time) -> Float[Array, "*shape"]:
        r"""Instantaneous rate $\beta(t) = -\frac{d}{dt}\log\bar\alpha(t)$ (Song et al.'s convention)."""
        t = jnp.asarray(t)
        _, dlog = jax.jvp(self.log_alpha_bar, (t,), (jnp.ones_like(t),))
        return -dlog

    def alpha_bar_increment(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        r"""$\bar\alpha(t_{\rm next}) - \bar\alpha(t) \ge 0$ for $t_{\rm next} < t$, without cancellation.

        Near $\bar\alpha = 1$ the difference is taken between the complements $1-\bar\alpha$, which
        are stored accurately there; elsewhere between the $\bar\alpha$ themselves.
        """
        ab, ab_next = self.alpha_bar(t), self.alpha_bar(t_next)
        direct = ab_next - ab
        complement = self.one_minus_alpha_bar(t) - self.one_minus_alpha_bar(t_next)
        return jnp.where(ab_next > 0.5, complement, direct)

    def log_alpha_bar_ratio(self, t: Time, t_next: Time) -> Float[Array, "*shape"]:
        r"""$\log\bar\alpha(t_{\rm next}) - \log\bar\alpha(t) = \int_{t_{\rm next}}^{t}\beta \ge 0$."""
        ab = self.alpha_bar(t)
        safe_ab = jnp.where(ab > 0, ab, 1.0)
        ratio = jnp.log1p(self.alpha_bar_increment(t, t_next) / safe_ab)
        return jnp.where(ab > 0, ratio, jnp.inf)
