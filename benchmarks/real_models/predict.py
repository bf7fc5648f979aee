r"""What the closed forms predict for a grid: the toolkit's objectives, and the model-aware propagation.

**Toolkit objectives** (`OBJECTIVES`, each "lower is better"): the exact law of DDIM ($\eta = 0$, `standard` init)
with the exact score on $\mathcal N(\mu, \Sigma)$ of the training patches (`gdj.sample_law`), scored by

- `KL(d|s)`, `KL(s|d)`, `W2`: KL(data ‖ sample), KL(sample ‖ data) and $W_2$ against the data;
- `... trunc`: the same evaluations, but the run stops at training step 0 ($t = 1/T$) instead of jumping to the
  clean sample (a grid whose last evaluation is already step 0 loses that evaluation), against $p_{1/T}$
  (`target="truncated"`; its variances are $\bar\alpha_0\lambda + 1 - \bar\alpha_0 \ge 10^{-4}$ on the linear table);
- `... floor1e-3`: the spectrum floored at $10^{-3}$ (`max(lambda, 1e-3)`);
- `path gauss`: the predicted RMS pathwise error against the 1000-step run, both with the exact denoiser.

**Model-aware propagation** (`propagate`, numpy). A network's $\hat x_0 = D_{\rm gauss} + e$; the error $e$ at step
$t_k$ has, per eigen-direction of $\Sigma$, a measured mean $b_i(t)$ and second moment $E_i(t)$ (`error_profile`).
DDIM's step is affine in $D$: $x' = \sqrt{\bar a'}D + \sqrt{1-\bar a'}(x - \sqrt{\bar a}D)/\sqrt{1-\bar a}$, so the
error enters with weight $w_k = \sqrt{\bar a'} - \sqrt{1-\bar a'}\sqrt{\bar a}/\sqrt{1-\bar a}$ and is carried by
the later steps' per-mode gains $g_j = (\sqrt{\bar a_j'\bar a_j}\lambda + \sqrt{(1-\bar a_j')(1-\bar a_j)})/(\bar a_j
\lambda + 1 - \bar a_j)$ (MATH.md section 2). Treating errors as independent of the state and across steps, the
centred coordinate $z = y - \sqrt{\bar a}m$ has mean $\mu_{k+1} = g_k\mu_k + w_k b_k$ and variance
$v_{k+1} = g_k^2 v_k + w_k^2(E_k - b_k^2)$, from $(\mu_0, v_0) = (-\sqrt{\bar a_0}m, 1)$. With zero error this is
exactly `gdj.sample_law` (tested). The objectives `W2+net`, `KL(d|s)+net` score that law. Because DDIM
under-disperses, injected error *variance* can make that law look closer to the data, so two objectives keep the
error as a cost instead: `W2 bound+net` $= W_2(\text{exact-denoiser law}) + \sqrt{\sum_i\sum_k (w_k P_{k+1,i})^2 E_{k,i}}$
(the triangle inequality with the synchronous coupling of the network run and the exact-denoiser run from the same
noise, to first order), and `path+net`, the expected distance to the 1000-step reference run from the same noise
(`path_prediction`: gain and mean differences, plus the injected error variances $\sum_k (w_k P_{k+1})^2(E_k - b_k^2)$
of both runs, $P_{k+1} = \prod_{j > k} g_j$).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import gaussdiff_jax as gdj

from . import sampling


class Objective(NamedTuple):
    name: str
    kind: str  # "toolkit", "path", "model"
    metric: str = "kl"  # "kl", "w2", "path"
    direction: str = "target_to_sample"
    target: str = "data"
    floor: float = 0.0


OBJECTIVES = (
    Objective("KL(d|s)", "toolkit", "kl"),
    Objective("KL(s|d)", "toolkit", "kl", "sample_to_target"),
    Objective("W2", "toolkit", "w2"),
    Objective("KL(d|s) trunc", "toolkit", "kl", target="truncated"),
    Objective("KL(s|d) trunc", "toolkit", "kl", "sample_to_target", target="truncated"),
    Objective("W2 trunc", "toolkit", "w2", target="truncated"),
    Objective("KL(d|s) floor1e-3", "toolkit", "kl", floor=1e-3),
    Objective("KL(s|d) floor1e-3", "toolkit", "kl", "sample_to_target", floor=1e-3),
    Objective("path gauss", "path", "path"),
    Objective("W2+net", "model", "w2"),
    Objective("KL(d|s)+net", "model", "kl"),
    Objective("W2 bound+net", "model", "w2b"),
    Objective("path+net", "model", "path"),
)


def source_of(fit, floor: float = 0.0) -> gdj.GaussianSource:
    """The toolkit's Gaussian model of the data (eigen-coordinates of the training covariance, float64)."""
    lam = np.maximum(fit.eigenvalues, floor)
    return gdj.GaussianSource(jnp.asarray(lam, dtype=jnp.float64), mean=jnp.asarray(fit.eigenvectors.T @ fit.mean))


@eqx.filter_jit
def _scores(source, schedule, ts):
    law = gdj.sample_law(source, schedule, gdj.DDIM(), ts, init="standard")
    out = {}
    for target in ("data", "truncated"):
        out[("kl", "target_to_sample", target)] = gdj.kl(source, law, target=target, direction="target_to_sample")
        out[("kl", "sample_to_target", target)] = gdj.kl(source, law, target=target, direction="sample_to_target")
        out[("w2", "target_to_sample", target)] = gdj.w2(source, law, target=target)
    return out


def truncated_times(steps) -> np.ndarray:
    """The grid of a run that stops at training step 0 (t = 1/T) instead of the clean sample."""
    steps = sampling.check_steps(steps)
    t = (steps + 1.0) / sampling.T
    return t if steps[-1] == 0 else np.concatenate([t, [1.0 / sampling.T]])


def toolkit_value(obj: Objective, fit, lat: sampling.Lattice, steps) -> float:
    """The toolkit objective `obj` of the grid `steps` (float64)."""
    src = source_of(fit, obj.floor)
    ts = truncated_times(steps) if obj.target == "truncated" else sampling.times_of(steps)
    if ts.shape[0] < 2:  # a single evaluation at step 0, truncated: nothing runs
        return float("nan")
    val = _scores(src, lat.schedule, jnp.asarray(ts, dtype=jnp.float64))
    key = (obj.metric, obj.direction if obj.metric == "kl" else "target_to_sample", obj.target)
    return float(val[key])


# --- the model-aware propagation (numpy) -----------------------------------------------------------


class Propagated(NamedTuple):
    """Output law per mode (centred coordinate: the output mean is `m + mean_gap`) and the injected variance."""

    mean_gap: np.ndarray
    variance: np.ndarray
    gain: np.ndarray
    """Product of all per-mode gains $P_0$ (the exact-denoiser map from the initial noise)."""
    injected: np.ndarray
    """$\\sum_k (w_k P_{k+1})^2 E_k$: the network-error variance that reaches the output."""


def step_coefficients(abar_now, abar_next, lam):
    """Per-step gains `(..., N, d)` and error weights `(..., N, 1)` of DDIM with the exact denoiser."""
    a, a2 = abar_now[..., None], abar_next[..., None]
    gain = (np.sqrt(a2 * a) * lam + np.sqrt((1 - a2) * (1 - a))) / (a * lam + 1 - a)
    weight = np.sqrt(a2) - np.sqrt(1 - a2) * np.sqrt(a) / np.sqrt(1 - a)
    return gain, weight


def propagate(lam, mean_coords, abar_steps, bias=None, second=None) -> Propagated:
    r"""Propagate DDIM ($\eta = 0$) with per-step denoiser errors through the per-mode recursion.

    - `lam`, `mean_coords`: `(d,)` eigenvalues and mean in eigen-coordinates.
    - `abar_steps`: `(..., N)` $\bar\alpha$ at the N evaluation steps (the last step jumps to $\bar\alpha = 1$).
    - `bias`, `second`: `(..., N, d)` mean and second moment of the $\hat x_0$ error in eigen-coordinates at each
      step (`None`: the exact denoiser).
    """
    abar_steps = np.asarray(abar_steps, dtype=np.float64)
    nxt = np.concatenate([abar_steps[..., 1:], np.ones(abar_steps.shape[:-1] + (1,))], axis=-1)
    gain, weight = step_coefficients(abar_steps, nxt, lam)
    shape = abar_steps.shape[:-1] + lam.shape
    mu = np.broadcast_to(-np.sqrt(abar_steps[..., :1]) * mean_coords, shape).astype(np.float64)
    var = np.ones(shape)
    inj = np.zeros(shape)
    total = np.ones(shape)
    n = abar_steps.shape[-1]
    for k in range(n):
        g, w = gain[..., k, :], weight[..., k, :]
        mu, var, inj, total = g * mu, g * g * var, g * g * inj, g * total
        if second is not None:
            b = bias[..., k, :]
            e = np.maximum(second[..., k, :] - b * b, 0.0)
            mu = mu + w * b
            var = var + w * w * e
            inj = inj + w * w * second[..., k, :]
    return Propagated(mu, var, total, inj)


def divergences(lam, prop: Propagated) -> dict[str, np.ndarray]:
    """KL(d|s) and W2 (`(...,)`) of a propagated law against $\\mathcal N(m, \\lambda)$ per mode."""
    v, e = prop.variance, prop.mean_gap
    kl = 0.5 * np.sum(lam / v - 1 + np.log(v / lam) + e * e / v, axis=-1)
    w2 = np.sqrt(np.sum((np.sqrt(v) - np.sqrt(lam)) ** 2 + e * e, axis=-1))
    return {"kl": kl, "w2": w2}


def path_prediction(prop: Propagated, ref: Propagated, d: int) -> np.ndarray:
    r"""Predicted RMS (per pixel) difference between a run and the reference from the same initial noise $y_0$.

    Per mode the output is $m + \mu + P\,y_0 + \text{(injected error)}$, so the expected squared difference is
    $(P - P_{\rm ref})^2 + (\mu - \mu_{\rm ref})^2$ plus both runs' injected error variances (taken independent).
    $\mu$ carries the standard-init mean offset $-P\sqrt{\bar a_0}\,m$, which differs between grids that start at
    different steps, and the errors' means."""
    spread = lambda p: np.maximum(p.variance - p.gain**2, 0.0)  # noqa: E731 (injected error variance)
    per_mode = (prop.gain - ref.gain) ** 2 + (prop.mean_gap - ref.mean_gap) ** 2 + spread(prop) + spread(ref)
    return np.sqrt(np.sum(per_mode, axis=-1) / d)


class ModelContext(NamedTuple):
    """What the model-aware objectives need: the data's spectrum, the lattice, an error profile (or None), and the
    propagated 1000-step reference runs (`make_model_context` fills them)."""

    lam: np.ndarray
    mean_coords: np.ndarray
    abar: np.ndarray
    """`(T,)`."""
    bias: np.ndarray | None
    """`(T, d)`: the profile interpolated to every step (`error_profile.Profile.on_all_steps`)."""
    second: np.ndarray | None
    ref_gauss: Propagated | None = None
    ref_net: Propagated | None = None


def make_model_context(lam, mean_coords, abar, bias=None, second=None) -> ModelContext:
    steps = sampling.all_steps()
    ref_gauss = propagate(lam, mean_coords, abar[steps])
    ref_net = ref_gauss if bias is None else propagate(lam, mean_coords, abar[steps], bias[steps], second[steps])
    return ModelContext(lam, mean_coords, abar, bias, second, ref_gauss, ref_net)


def model_values(ctx: ModelContext, steps_batch: np.ndarray, *, with_error: bool = True) -> dict[str, np.ndarray]:
    """`{"w2", "kl", "w2b", "path"}` `(B,)` for a batch of grids `(B, N)` (integer steps)."""
    steps_batch = np.atleast_2d(steps_batch)
    a = ctx.abar[steps_batch]
    gauss = propagate(ctx.lam, ctx.mean_coords, a)
    if not (with_error and ctx.bias is not None):
        out = divergences(ctx.lam, gauss)
        out["w2b"] = out["w2"]
        out["path"] = path_prediction(gauss, ctx.ref_gauss, ctx.lam.shape[0])
        return out
    net = propagate(ctx.lam, ctx.mean_coords, a, ctx.bias[steps_batch], ctx.second[steps_batch])
    out = divergences(ctx.lam, net)
    out["w2b"] = divergences(ctx.lam, gauss)["w2"] + np.sqrt(np.sum(net.injected, axis=-1))
    out["path"] = path_prediction(net, ctx.ref_net, ctx.lam.shape[0])
    return out


def predict_all(fit, lat: sampling.Lattice, ctx: ModelContext, grids: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """`{objective name: {grid name: value}}` for every objective in `OBJECTIVES`."""
    out: dict[str, dict[str, float]] = {o.name: {} for o in OBJECTIVES}
    for name, steps in grids.items():
        gauss = model_values(ctx, steps[None], with_error=False)
        net = model_values(ctx, steps[None], with_error=True)
        for obj in OBJECTIVES:
            if obj.kind == "toolkit":
                out[obj.name][name] = toolkit_value(obj, fit, lat, steps)
            elif obj.kind == "path":
                out[obj.name][name] = float(gauss["path"][0])
            else:
                out[obj.name][name] = float(net[obj.metric][0])
    return out


def kl_mode_fractions(fit, lat: sampling.Lattice, steps, thresholds=(1e-4, 1e-3)) -> dict[float, float]:
    """Fraction of KL(d|s) (no floor) carried by the modes with eigenvalue below each threshold."""
    src = source_of(fit)
    law = gdj.sample_law(src, lat.schedule, gdj.DDIM(), jnp.asarray(sampling.times_of(steps)), init="standard")
    per_mode = np.asarray(gdj.kl(src, law, target="data", reduce=False))
    total = per_mode.sum()
    return {th: float(per_mode[fit.eigenvalues < th].sum() / total) for th in thresholds}
