r"""A network's $\hat x_0$ error per training step and per eigen-direction of the data covariance.

At each step $i$ of `PROFILE_STEPS`: draw $x_i = \sqrt{\bar\alpha_i}x_0 + \sqrt{1-\bar\alpha_i}z$ from patches $x_0$,
and measure in the eigenbasis $U$ of the training covariance (coordinates $c(\cdot) = U^\top\cdot$), per mode:

- `bias`, `second`: mean and mean square of $c(D_{\rm net} - D_{\rm gauss})$ (deviation from the exact Gaussian
  posterior mean, what the model-aware propagation injects);
- `mse_net`, `mse_gauss`: mean square of $c(D_{\rm net} - x_0)$ and of $c(D_{\rm gauss} - x_0)$ (empirical);
- `mmse_theory`: the Gaussian MMSE $\lambda(1-\bar\alpha)/(\bar\alpha\lambda + 1 - \bar\alpha)$.

`Profile.on_all_steps` interpolates `bias` and `second` to all T steps (linear in the step index; `second`
in its logarithm), for the model-aware grid search.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import sampling

PROFILE_STEPS = np.array(
    [0, 1, 2, 4, 7, 12, 19, 29, 49, 74, 99, 149, 199, 249, 299, 349, 399, 449, 499, 549, 599, 649, 699, 749, 799,
     849, 899, 929, 949, 969, 979, 989, 994, 999]
)  # fmt: skip


class Profile(NamedTuple):
    steps: np.ndarray
    """`(S,)` training steps."""
    bias: np.ndarray
    """`(S, d)`."""
    second: np.ndarray
    mse_net: np.ndarray
    mse_gauss: np.ndarray
    mmse_theory: np.ndarray

    def on_all_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """`bias`, `second` interpolated to every step 0..T-1: `(T, d)` each."""
        every = np.arange(sampling.T)
        bias = np.stack([np.interp(every, self.steps, b) for b in self.bias.T], axis=1)
        log2 = np.log(np.maximum(self.second, 1e-30))
        second = np.exp(np.stack([np.interp(every, self.steps, s) for s in log2.T], axis=1))
        return bias, second

    def per_pixel(self) -> dict[str, np.ndarray]:
        """Totals over modes divided by d, `(S,)` each: the per-pixel mean squares."""
        d = self.second.shape[1]
        return {
            "net_vs_gauss": self.second.sum(1) / d,
            "mse_net": self.mse_net.sum(1) / d,
            "mse_gauss": self.mse_gauss.sum(1) / d,
            "mmse_theory": self.mmse_theory.sum(1) / d,
        }


def measure(denoise, gauss, fit, x0: np.ndarray, lat: sampling.Lattice, *, seed: int = 0, steps=PROFILE_STEPS) -> Profile:
    """The error profile of `denoise` (a `sampling` denoiser) on patches `x0` `(n, d)` (float32)."""
    rng = np.random.default_rng(seed)
    U = fit.eigenvectors
    out = {k: [] for k in ("bias", "second", "mse_net", "mse_gauss", "mmse_theory")}
    lam = fit.eigenvalues
    for i in steps:
        a = lat.abar[i]
        z = rng.standard_normal(x0.shape).astype(np.float32)
        x = (np.sqrt(a) * x0 + np.sqrt(1 - a) * z).astype(np.float32)
        args = (jnp.asarray(x), jnp.float32(a), jnp.float32((i + 1.0) / sampling.T))
        dn = np.asarray(denoise(*args), dtype=np.float64)
        dg = np.asarray(gauss(*args), dtype=np.float64)
        dev = (dn - dg) @ U
        out["bias"].append(dev.mean(0))
        out["second"].append((dev**2).mean(0))
        out["mse_net"].append((((dn - x0) @ U) ** 2).mean(0))
        out["mse_gauss"].append((((dg - x0) @ U) ** 2).mean(0))
        out["mmse_theory"].append(lam * (1 - a) / (a * lam + 1 - a))
    return Profile(np.asarray(steps), *(np.stack(v) for v in out.values()))


def load(path) -> dict[str, Profile]:
    """Read `save`'s file back: `{label: Profile}`."""
    with np.load(path) as f:
        labels = sorted({k.split("/")[0] for k in f.files})
        return {lab: Profile(*(np.asarray(f[f"{lab}/{field}"]) for field in Profile._fields)) for lab in labels}


def save(path, profiles: dict[str, Profile]):
    """Write `{label: Profile}` to one `.npz` (keys `<label>/<field>`, float32)."""
    arrays = {
        f"{label}/{field}": np.asarray(getattr(p, field), dtype=np.int32 if field == "steps" else np.float32)
        for label, p in profiles.items()
        for field in Profile._fields
    }
    np.savez_compressed(path, **arrays)
