r"""The DDIM ($\eta = 0$) loop on integer time steps, for any $\hat x_0$-predictor (a network or the exact Gaussian one).

**Time steps.** A grid is a strictly descending array of integer steps $i_0 > \dots > i_{N-1}$ in $[0, T)$, one
network evaluation each, followed by the final jump to the clean sample ($\bar\alpha = 1$), as diffusers does
(MATH.md; `gdj.Discrete`: step $i$ sits at $t = (i+1)/T$). The `Lattice` gives $\bar\alpha$ at each step: the
diffusers table for `eps`/`x0`/`v` models, `gdj.RectifiedFlow(1)` at $t = (i+1)/1000$ for the flow model.

**One step** from $\bar a$ to $\bar a'$ with $D = \hat x_0(x)$:
$\hat\varepsilon = (x - \sqrt{\bar a} D)/\sqrt{1 - \bar a}$, $x' = \sqrt{\bar a'} D + \sqrt{1-\bar a'}\,\hat\varepsilon$.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import gaussdiff_jax as gdj

from . import models

T = 1000


class Lattice(NamedTuple):
    r"""$\bar\alpha$ at the T integer time steps of one model family, and how to score grids on it with the toolkit."""

    kind: str
    """`"discrete"` (diffusers `linear` table) or `"flow"` (rectified flow)."""
    abar: np.ndarray
    """`(T,)` float64: $\bar\alpha$ at step $i$ (time $t = (i+1)/T$)."""
    schedule: gdj.AbstractSchedule
    """The toolkit schedule whose $\bar\alpha((i+1)/T)$ is `abar`."""


def lattice(kind: str) -> Lattice:
    """The `"discrete"` (diffusers linear table) or `"flow"` (RectifiedFlow, shift 1) lattice."""
    if kind == "discrete":
        sch = gdj.Discrete.from_diffusers("linear")
        return Lattice(kind, np.asarray(sch.alphas_cumprod, dtype=np.float64), sch)
    if kind == "flow":
        t = (np.arange(T) + 1.0) / T
        return Lattice(kind, (1 - t) ** 2 / ((1 - t) ** 2 + t**2), gdj.RectifiedFlow(1.0))
    raise ValueError(f"lattice kind must be 'discrete' or 'flow'; got {kind!r}.")


def times_of(steps) -> np.ndarray:
    """Forward times of integer steps, with the final clean point: `(N + 1,)`, for `gdj.sample_law`."""
    steps = check_steps(steps)
    return np.concatenate([(steps + 1.0) / T, [0.0]])


def check_steps(steps) -> np.ndarray:
    steps = np.asarray(steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer):
        raise ValueError(f"time steps must be a non-empty 1-D integer array; got {steps!r}.")
    if np.any(np.diff(steps) >= 0) or steps.min() < 0 or steps.max() >= T:
        raise ValueError(f"time steps must be strictly descending integers in [0, {T}); got {steps.tolist()}.")
    return steps.astype(np.int64)


class NetworkDenoiser(eqx.Module):
    r"""$\hat x_0$ of a trained network (float32)."""

    model: models.Denoiser

    def __call__(self, x, abar, t):
        return models.predict_x0(self.model, x, abar, t).astype(x.dtype)


class GaussianDenoiser(eqx.Module):
    r"""The exact posterior mean under $\mathcal N(\mu, U\Lambda U^\top)$:
    $\mu + U\,\mathrm{diag}\big(\sqrt{\bar a}\lambda/(\bar a\lambda + 1 - \bar a)\big)U^\top(x - \sqrt{\bar a}\mu)$."""

    mean: jax.Array
    eigenvalues: jax.Array
    eigenvectors: jax.Array

    def __call__(self, x, abar, t):
        abar = jnp.asarray(abar, dtype=x.dtype)
        ra = jnp.sqrt(abar)
        if jnp.ndim(abar):
            ra, abar = ra[:, None], abar[:, None]
        lam = self.eigenvalues.astype(x.dtype)
        gain = ra * lam / (abar * lam + 1 - abar)
        coords = (x - ra * self.mean.astype(x.dtype)) @ self.eigenvectors.astype(x.dtype)
        return self.mean.astype(x.dtype) + (gain * coords) @ self.eigenvectors.astype(x.dtype).T


def gaussian_denoiser(fit) -> GaussianDenoiser:
    """From a `data.GaussianFit`."""
    return GaussianDenoiser(jnp.asarray(fit.mean), jnp.asarray(fit.eigenvalues), jnp.asarray(fit.eigenvectors))


@eqx.filter_jit
def _ddim(denoise, x, abar_now, abar_next, t_now):
    def step(x, inputs):
        a, a_next, t = inputs
        d = denoise(x, a, t)
        eps = (x - jnp.sqrt(a) * d) / jnp.sqrt(1 - a)
        return jnp.sqrt(a_next) * d + jnp.sqrt(1 - a_next) * eps, None

    x, _ = jax.lax.scan(step, x, (abar_now, abar_next, t_now))
    return x


def ddim(denoise, x_init, steps, lat: Lattice, *, batch: int = 4096):
    """Run DDIM from `x_init` `(n, d)` (treated as the state at `steps[0]`) along `steps`, then jump to the clean
    sample. Returns `(n, d)` in `x_init`'s dtype. `batch` rows at a time (memory)."""
    steps = check_steps(steps)
    dtype = x_init.dtype
    a = np.concatenate([lat.abar[steps], [1.0]])
    args = tuple(jnp.asarray(v, dtype=dtype) for v in (a[:-1], a[1:], (steps + 1.0) / T))
    out = [_ddim(denoise, jnp.asarray(x_init[i : i + batch]), *args) for i in range(0, x_init.shape[0], batch)]
    return np.asarray(jnp.concatenate(out), dtype=dtype)


def all_steps() -> np.ndarray:
    """The 1000-step reference grid: every step T-1 .. 0."""
    return np.arange(T - 1, -1, -1)
