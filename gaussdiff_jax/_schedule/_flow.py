r"""Rectified-flow / flow-matching models (Stable Diffusion 3, Flux) as a VP schedule."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._errors import check
from ._base import AbstractSchedule, Time


class RectifiedFlow(AbstractSchedule):
    r"""The flow-matching path $x = (1-s)\,x_0 + s\,z$, $s \in [0, 1]$, with an SD3-style time shift.

    **Flow sigma.** At time $t$ the flow noise level is $s(t) = \frac{k\,t}{1 + (k-1)\,t}$ with shift $k$
    (`shift`; $k = 1$ gives $s = t$). This is the map that diffusers'
    `FlowMatchEulerDiscreteScheduler` applies to its sigmas (`shift * s / (1 + (shift - 1) * s)`). That
    scheduler's default grid is uniform in $t$ from 1 to $s(1/T)$, not to $1/T$: it spaces its timesteps between
    its already shifted training sigmas and shifts them again, so the last evaluated level is $s(s(1/T))$
    (`gdj.grids.flow_match` builds it; `gdj.from_diffusers_scheduler` reads it off a scheduler).

    **As a VP schedule.** Dividing by $\sqrt{(1-s)^2 + s^2}$ turns the flow path into
    $x_{\rm VP} = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,z$ with
    $\bar\alpha = \frac{(1-s)^2}{(1-s)^2 + s^2}$, i.e. VE noise level $\sigma = s/(1-s) = k\,t/(1-t)$ and
    log-SNR $\ell = 2\log\frac{1-t}{k\,t}$. Samplers that only see $\bar\alpha$ at grid points are
    unchanged by this rescaling; in particular the flow-matching Euler sampler
    $x' = x + (s'-s)\,\hat v$, $\hat v = \hat z - \hat x_0$, is exactly DDIM ($\eta = 0$) on this schedule.
    $\bar\alpha(0) = 1$, $\bar\alpha(1) = 0$.

    **Arguments:**

    - `shift`: the time shift $k > 0$ (SD3 uses 3.0; 1.0 = no shift).
    """

    shift: Float[Array, ""]

    def __init__(self, shift: float | ArrayLike = 1.0):
        shift = jnp.asarray(shift, dtype=jnp.result_type(float))
        self.shift = check(shift, ~(shift > 0), "RectifiedFlow: shift must be > 0 (1.0 = no shift).")

    def flow_sigma(self, t: Time) -> Float[Array, "*shape"]:
        r"""The flow noise level $s(t) = k t / (1 + (k-1) t) \in [0, 1]$ (diffusers' FlowMatch `sigmas`)."""
        t = jnp.asarray(t)
        return self.shift * t / (1 + (self.shift - 1) * t)

    def time_of_flow_sigma(self, s: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        r"""Inverse of `flow_sigma`: $t = s / (k - (k-1)s)$."""
        s = jnp.asarray(s)
        return s / (self.shift - (self.shift - 1) * s)

    def scale(self, t: Time) -> Float[Array, "*shape"]:
        r"""$\sqrt{(1-s)^2 + s^2}$: the flow state is `scale(t)` times the VP state $x_{\rm VP}$."""
        s = self.flow_sigma(t)
        return jnp.sqrt((1 - s) ** 2 + s**2)

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t)
        # 2 log((1 - s)/s) with (1 - s)/s = (1 - t)/(k t): log1p keeps t near 0 and near 1 accurate.
        return 2 * (jnp.log1p(-t) - jnp.log(t) - jnp.log(self.shift))

    def sigma(self, t: Time) -> Float[Array, "*shape"]:
        t = jnp.asarray(t)
        return self.shift * t / (1 - t)
