r"""A trained network's denoiser error, per mode and noise level, for the exact propagation through a sampler.

A real network's denoiser is $D_{\rm net}(x, t) = D(x, t) + e$, where $D$ is the exact posterior mean of the
Gaussian model. `ErrorProfile` models $e$ at each evaluation as independent of the state and of the other
evaluations, zero-mean, with per-mode second moment $s_i^2(\ell)$ in the data's eigenbasis, a function of the
log-SNR $\ell$ (piecewise linear in $\ell$ between measured levels, constant beyond). With it the sampler's
output is still Gaussian per mode: every evaluation adds its error with the step's weight on the denoiser
output, exactly as `sample_law(..., model_error=profile)` propagates it (multistep samplers reuse an
evaluation in several steps; the engine carries those correlations exactly).

`gdj.select_timesteps` measures a profile from a network and held-out data; any measurement works.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._errors import check


class ErrorProfile(eqx.Module):
    r"""Per-mode second moment of a denoiser's error as a function of the noise level.

    **Arguments:**

    - `log_snr`: measured levels $\ell_k = \log(\bar\alpha/(1-\bar\alpha))$, shape `(K,)`, strictly increasing.
    - `second_moment`: $\mathbb E[e_i^2]$ at each level, shape `(K, d)` (or `(K, *batch, d)`), in the units of
      $x_0$ (the data), per eigen-direction of the data covariance.

    Calling the profile at a log-SNR returns the interpolated `(d,)` second moments.
    """

    log_snr: Float[Array, " K"]
    second_moment: Float[Array, "K *batch d"]

    def __init__(self, log_snr: Float[ArrayLike, " K"], second_moment: Float[ArrayLike, "K *batch d"]):
        ell = jnp.asarray(log_snr)
        moment = jnp.asarray(second_moment)
        if ell.ndim != 1 or ell.shape[0] < 1:
            raise ValueError(f"ErrorProfile: log_snr must be 1-D with at least one level; got shape {ell.shape}.")
        if moment.ndim < 2 or moment.shape[0] != ell.shape[0]:
            raise ValueError(
                f"ErrorProfile: second_moment must have shape (K, d) with K = {ell.shape[0]} levels; "
                f"got {moment.shape}."
            )
        ell = check(ell, ~jnp.isfinite(ell), "ErrorProfile: log_snr must be finite (measure at 0 < abar < 1).")
        ell = check(ell, ~(jnp.diff(ell) > 0), "ErrorProfile: log_snr must be strictly increasing.")
        moment = check(moment, ~(moment >= 0) | ~jnp.isfinite(moment),
                       "ErrorProfile: second moments must be finite and >= 0 (a NaN network output?).")
        self.log_snr, self.second_moment = ell, moment

    def __call__(self, log_snr: Float[ArrayLike, ""]) -> Float[Array, "*batch d"]:
        """The second moments at one log-SNR (linear interpolation in log-SNR, constant outside the range)."""
        ell = jnp.clip(jnp.asarray(log_snr, dtype=self.log_snr.dtype), self.log_snr[0], self.log_snr[-1])
        k = jnp.clip(jnp.searchsorted(self.log_snr, ell) - 1, 0, max(self.log_snr.shape[0] - 2, 0))
        if self.log_snr.shape[0] == 1:
            return self.second_moment[0]
        lo, hi = self.log_snr[k], self.log_snr[k + 1]
        w = (ell - lo) / (hi - lo)
        return (1 - w) * self.second_moment[k] + w * self.second_moment[k + 1]
