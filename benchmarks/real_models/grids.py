r"""The candidate grids: a registry `{name: function(context, nfe) -> integer time steps}`.

Every candidate returns strictly descending integer training steps in $[0, T)$, one per network evaluation; the
sampler adds the final jump to the clean sample (`sampling`). Adding a candidate is one line in `CANDIDATES`.

- diffusers spacings `trailing` (= uniform in time), `leading`, `linspace` (`gdj.grids`, on the T = 1000 lattice);
- noise-level grids `quadratic`, `log_snr`, `karras` ($\rho = 7$), `ays_sd15`, `ays_sdxl` (`gdj.grids.make` on the
  model's schedule, rounded to training steps with `gdj.grids.round_to_indices(..., duplicates="spread")`);
- the toolkit's optimized grids (`gdj.optimize_grid` on the Gaussian with the training patches' spectrum and mean):
  `kl` (KL(data‖sample), the default), `kl_rev` (KL(sample‖data)) and `w2`; integer-polished on the discrete table;
- `w2_free`, `path_gauss`: closed forms without the network, with the first step free (the toolkit's grids start
  at step 999): the integer grids minimizing the exact-denoiser $W_2$ and the exact-denoiser path error to the
  1000-step run (`predict`), by best-improvement coordinate descent (`descend`: moves of ±1 … ±128 steps per point,
  the first point included), started from the best fixed or toolkit-optimized grid under that objective;
- `model_w2`, `model_w2b`, `model_path`: the model-aware prototypes, the same search on the `W2+net`,
  `W2 bound+net` and `path+net` predictions, which use the network's error profile measured on *training* patches;
- `select`, `select_net`: `gdj.select_timesteps(...)` without / with the network (the network's raw output, its
  head as `parameterization`, the *training* patches as `data`: the held-out ones are the FD reference). Skipped for
  the flow model: `select_timesteps` takes a `gdj.Discrete` table and ε / x0 / v heads.

For the flow model the lattice is $t = (i+1)/1000$ of `gdj.RectifiedFlow(1)`; noise-level grids and the optimized
ones start at step 998 ($\sigma$ must be finite), and `gdj.grids` needs `t_floor = 1/T` (the lowest evaluation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

import gaussdiff_jax as gdj

from . import predict, sampling


class Context(NamedTuple):
    """What a candidate may use."""

    dataset: str
    network: str
    head: str
    lat: sampling.Lattice
    fit: Any
    """`data.GaussianFit` of the training patches."""
    model: predict.ModelContext
    """Spectrum, lattice and the network's error profile measured on training patches."""
    denoiser: Any
    """`sampling` denoiser: `(x, abar, t) -> x0_hat`."""
    raw_network: Callable | None
    """`(x (n, d), steps (n,) int) -> raw network output` (None for the exact Gaussian denoiser)."""
    train: np.ndarray
    """Dequantized training patches `(n, d)`."""


@functools.lru_cache(maxsize=1)
def _table() -> gdj.Discrete:
    return gdj.Discrete.from_diffusers("linear")


def _to_steps(ts) -> np.ndarray:
    ts = gdj.grids.round_to_indices(np.asarray(ts), _table(), duplicates="spread")
    return gdj.grids.training_indices(ts, _table())


def _flow_options(name: str) -> dict:
    if name.startswith("ays"):
        return {}
    return {"t_floor": 1.0 / sampling.T} | ({} if name == "quadratic" else {"t_max": 1.0 - 1.0 / sampling.T})


def spacing(name: str) -> Callable[[Context, int], np.ndarray]:
    """A `gdj.grids` builder as a candidate (callable with a `Context` or just a `sampling.Lattice`)."""

    def build(ctx: Context | sampling.Lattice, nfe: int) -> np.ndarray:
        lat = ctx if isinstance(ctx, sampling.Lattice) else ctx.lat
        if lat.kind == "discrete" or name in ("leading", "trailing", "linspace"):
            return _to_steps(gdj.grids.make(name, _table(), nfe))
        return _to_steps(gdj.grids.make(name, lat.schedule, nfe, **_flow_options(name)))

    return build


_OPTIMIZED: dict[tuple, np.ndarray] = {}


def optimized(metric: str, direction: str = "target_to_sample") -> Callable[[Context, int], np.ndarray]:
    """`gdj.optimize_grid` on the data's Gaussian as a candidate (cached per dataset, lattice and NFE)."""

    def build(ctx: Context, nfe: int) -> np.ndarray:
        key = (ctx.dataset, ctx.lat.kind, nfe, metric, direction)
        if key not in _OPTIMIZED:
            src = predict.source_of(ctx.fit)
            opts = dict(metric=metric, direction=direction, target="data", sampler=gdj.DDIM())
            if ctx.lat.kind == "discrete":
                res = gdj.optimize_grid(src, ctx.lat.schedule, nfe=nfe, **opts)
                _OPTIMIZED[key] = _to_steps(res.rounded.times)
            else:
                res = gdj.optimize_grid(
                    src,
                    ctx.lat.schedule,
                    nfe=nfe,
                    integer=False,
                    t_floor=1.0 / sampling.T,
                    t_max=1.0 - 1.0 / sampling.T,
                    **opts,
                )
                _OPTIMIZED[key] = _to_steps(res.optimized.times)
        return _OPTIMIZED[key]

    return build


def descend(objective: Callable[[np.ndarray], np.ndarray], steps: np.ndarray, *, max_rounds: int = 500) -> np.ndarray:
    """Best-improvement coordinate descent over strictly descending integer grids in [0, T).

    `objective`: `(B, N)` integer grids -> `(B,)` values (lower is better)."""
    idx = np.asarray(steps, dtype=np.int64).copy()
    best = float(objective(idx[None])[0])
    moves = [s * m for m in (1, 2, 4, 8, 16, 32, 64, 128) for s in (1, -1)]
    for _ in range(max_rounds):
        cands = []
        for k in range(idx.shape[0]):
            hi = idx[k - 1] if k > 0 else sampling.T
            lo = idx[k + 1] if k + 1 < idx.shape[0] else -1
            for m in moves:
                if lo < idx[k] + m < hi:
                    j = idx.copy()
                    j[k] += m
                    cands.append(j)
        if not cands:
            break
        cands = np.stack(cands)
        vals = objective(cands)
        i = int(np.argmin(vals))
        if not vals[i] < best:
            break
        idx, best = cands[i], float(vals[i])
    return idx


def model_aware(metric: str = "w2", *, with_error: bool = True) -> Callable[[Context, int], np.ndarray]:
    """Minimize a `predict.model_values` objective over integer grids with the first step free (`descend`), from the
    best of the fixed and toolkit-optimized grids. `with_error=False`: the exact-denoiser closed form (no network)."""

    def build(ctx: Context, nfe: int) -> np.ndarray:
        names = STARTS

        def objective(batch):
            return predict.model_values(ctx.model, batch, with_error=with_error)[metric]

        inits = [CANDIDATES[n](ctx, nfe) for n in names]
        inits = [s for s in inits if s.shape[0] == nfe]
        start = min(inits, key=lambda s: float(objective(s[None])[0]))
        return descend(objective, start)

    return build


def select(with_network: bool) -> Callable[[Context, int], np.ndarray]:
    """`gdj.select_timesteps` as a candidate: closed form (`source=` the training patches' Gaussian), or model-aware
    (`denoiser=`, `data=` the training patches, `parameterization=` the head); its `.timesteps` are the grid."""

    def build(ctx: Context, nfe: int) -> np.ndarray:
        kwargs: dict[str, Any] = {"source": predict.source_of(ctx.fit), "key": jax.random.key(0)}
        if with_network:
            if ctx.raw_network is None:
                raise NotImplementedError("no network (exact Gaussian denoiser)")
            kwargs |= {"denoiser": ctx.raw_network, "data": ctx.train, "parameterization": ctx.head}
        res = gdj.select_timesteps(ctx.lat.schedule, gdj.DDIM(), nfe, **kwargs)
        return sampling.check_steps(np.asarray(res.timesteps))

    return build


CANDIDATES: dict[str, Callable[[Context, int], np.ndarray]] = {
    "trailing": spacing("trailing"),
    "leading": spacing("leading"),
    "linspace": spacing("linspace"),
    "quadratic": spacing("quadratic"),
    "log_snr": spacing("log_snr"),
    "karras": spacing("karras"),
    "ays_sd15": spacing("ays_sd15"),
    "ays_sdxl": spacing("ays_sdxl"),
    "kl": optimized("kl"),
    "kl_rev": optimized("kl", "sample_to_target"),
    "w2": optimized("w2"),
    "w2_free": model_aware("w2", with_error=False),
    "path_gauss": model_aware("path", with_error=False),
    "model_w2": model_aware("w2"),
    "model_w2b": model_aware("w2b"),
    "model_path": model_aware("path"),
}
BASELINES = ("trailing", "leading", "linspace", "quadratic", "log_snr", "karras", "ays_sd15", "ays_sdxl")
"""The fixed (not optimized) grids: "best baseline" is the best of these."""
STARTS = (*BASELINES, "kl", "kl_rev", "w2")

if hasattr(gdj, "select_timesteps"):
    CANDIDATES |= {"select": select(False), "select_net": select(True)}


def build_all(ctx: Context, nfe: int, names=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`({name: steps}, {name: why it was skipped})` for the candidates `names` (default: all)."""
    grids, skipped = {}, {}
    for name in names or CANDIDATES:
        try:
            grids[name] = sampling.check_steps(CANDIDATES[name](ctx, nfe))
        except (NotImplementedError, TypeError, ValueError) as err:
            skipped[name] = f"{type(err).__name__}: {err}"
    return grids, skipped
