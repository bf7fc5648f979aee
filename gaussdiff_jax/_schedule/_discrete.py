"""A pretrained model's discrete alpha_bar table, as a continuous schedule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._errors import check
from ._base import AbstractSchedule, Time


class Discrete(AbstractSchedule):
    r"""A model's table $\bar\alpha_0 > \bar\alpha_1 > \dots > \bar\alpha_{T-1}$ (diffusers' `alphas_cumprod`).

    **Time convention.** Training index $i \in \{0, \dots, T-1\}$ sits at continuous time
    $t_i = (i + 1)/T$, so the table spans $(0, 1]$ and $t = 0$ is the clean sample
    ($\bar\alpha = 1$), the extra final step that diffusers' schedulers take with
    `final_alpha_cumprod = 1`. Between knots the log-SNR is interpolated linearly in $t$; on
    $[0, t_0]$ the variance ratio $\sigma^2$ goes linearly from 0 to $\sigma^2(t_0)$.
    `index_of(t)` and `time_of(i)` convert between the two.

    **Arguments:**

    - `alphas_cumprod`: shape `(T,)`, strictly decreasing, in (0, 1).
    """

    alphas_cumprod: Float[Array, " T"]

    def __init__(self, alphas_cumprod: Float[ArrayLike, " T"]):
        table = jnp.asarray(alphas_cumprod, dtype=jnp.result_type(float))
        if table.ndim != 1 or table.shape[0] < 2:
            raise ValueError(
                f"Discrete: alphas_cumprod must be a 1-D table of at least 2 entries; got shape {table.shape}."
            )
        table = check(
            table,
            ~((table > 0) & (table < 1)),
            "Discrete: alphas_cumprod entries must lie strictly between 0 and 1.",
        )
        self.alphas_cumprod = check(
            table,
            ~(jnp.diff(table) < 0),
            "Discrete: alphas_cumprod must be strictly decreasing (index 0 = least noise).",
        )

    @classmethod
    def from_diffusers(
        cls,
        beta_schedule: str = "linear",
        *,
        num_train_timesteps: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> "Discrete":
        """The table that diffusers builds for `beta_schedule` (`DDPMScheduler` and kin).

        - `"linear"`: betas linear from `beta_start` (default 1e-4) to `beta_end` (default 0.02).
        - `"scaled_linear"`: square roots linear (Stable Diffusion; defaults 0.00085 -> 0.012).
        - `"squaredcos_cap_v2"`: the cosine schedule, betas capped at 0.999.
        """
        T = int(num_train_timesteps)
        if T < 2:
            raise ValueError(f"Discrete.from_diffusers: num_train_timesteps must be >= 2; got {T}.")
        if beta_schedule == "linear":
            lo, hi = beta_start or 1e-4, beta_end or 0.02
            betas = np.linspace(lo, hi, T, dtype=np.float64)
        elif beta_schedule == "scaled_linear":
            lo, hi = beta_start or 0.00085, beta_end or 0.012
            betas = np.linspace(lo**0.5, hi**0.5, T, dtype=np.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":

            def f(u):
                return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
        else:
            raise ValueError(
                f"Discrete.from_diffusers: unknown beta_schedule {beta_schedule!r}; choose 'linear', "
                "'scaled_linear' or 'squaredcos_cap_v2'."
            )
        return cls(np.cumprod(1.0 - betas))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def time_of(self, index: ArrayLike) -> Float[Array, "*shape"]:
        """Continuous time of training index `index` (0-based): `(index + 1) / T`."""
        index = jnp.asarray(index)
        if not jnp.issubdtype(index.dtype, jnp.floating):  # integer indices (strict dtype promotion)
            index = index.astype(jnp.result_type(float))
        return (index + 1.0) / self.num_train_timesteps

    def index_of(self, t: Time) -> Float[Array, "*shape"]:
        """Fractional training index at continuous time `t` (inverse of `time_of`)."""
        return jnp.asarray(t) * self.num_train_timesteps - 1.0

    def log_snr(self, t: Time) -> Float[Array, "*shape"]:
        return _table_log_snr(self.alphas_cumprod, jnp.asarray(t))


@jax.jit
def _table_log_snr(alphas_cumprod: Array, t: Array) -> Array:
    """Log-SNR of a table at continuous times `t`: linear in the training index between knots (one compiled
    call: eager grid construction calls it dozens of times, ~15 small operations each)."""
    T = alphas_cumprod.shape[0]
    table_lsnr = jnp.log(alphas_cumprod) - jnp.log1p(-alphas_cumprod)
    knots = (jnp.arange(T, dtype=table_lsnr.dtype) + 1.0) / T
    inside = jnp.interp(t, knots, table_lsnr)
    # On [0, 1/T]: sigma^2 proportional to t, i.e. log-SNR = l_0 - log(t T) (+inf at t = 0).
    safe_t = jnp.where(t > 0, t, 1.0)
    head = jnp.where(t > 0, table_lsnr[0] - jnp.log(safe_t * T), jnp.inf)
    return jnp.where(t < knots[0], head, inside)
