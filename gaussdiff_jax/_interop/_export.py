r"""Export time grids to diffusers, k-diffusion / ComfyUI and JSON, with the checks those tools skip.

Which format drives which sampler (checked against the real diffusers package in
`tests/test_diffusers_roundtrip.py`):

| export | diffusers call | same law as |
|---|---|---|
| `to_diffusers(ts, sch, kind="timesteps")` | `DDPMScheduler.set_timesteps(timesteps=...)` | `gdj.DDIM(eta=1.0)` = `gdj.DDPM("discrete", "posterior")` |
| same | `EulerDiscreteScheduler.set_timesteps(timesteps=...)` | `gdj.DDIM()` |
| `to_diffusers(ts, sch, kind="sigmas")` | `EulerDiscreteScheduler.set_timesteps(sigmas=...)` | `gdj.DDIM()` (also between training indices) |
| `to_diffusers(ts, flow, kind="flow_sigmas")` | `FlowMatchEulerDiscreteScheduler(shift=1.0).set_timesteps(sigmas=...)` | `gdj.DDIM()` on `RectifiedFlow` |
| `to_k_diffusion(ts, sch)` | k-diffusion `sample_euler` / ComfyUI `SIGMAS` | `gdj.DDIM()` (`sample_heun`: `gdj.EDMHeun()`) |

**`Discrete` index convention.** Grid time $t$ is training index $i = tT - 1$; a final $t = 0$ is the clean
sample, the last step of every diffusers run with custom timesteps (`alpha_prod_t_prev = 1` in DDPM,
`final_sigmas_type="zero"` in Euler, `final_alpha_cumprod = 1` with `set_alpha_to_one=True` in DDIM). So a grid
of $N$ steps ending at 0 exports as $N$ timesteps, and as $N + 1$ sigmas ending in `0.0`.

**What diffusers would do to a custom schedule** (we warn or refuse instead of letting it happen silently):
`DDIMScheduler.set_timesteps` takes no custom timesteps at all and always steps from $t$ to
$t - \lfloor T/N\rfloor$, which is the next timestep only for `"leading"` spacing; `EulerDiscreteScheduler`
maps sigmas to model timesteps by log-sigma interpolation clipped to $[0, T-1]$ (noise levels below
training index 0 are evaluated at index 0); `FlowMatchEulerDiscreteScheduler` re-applies its `shift`
(and `mu`-dependent dynamic shifting, `shift_terminal` stretching, Karras/exponential/beta conversion) to
the sigmas it is given and always appends a terminal 0; `clip_sample=True` (the DDPM/DDIM default) clamps
the predicted $x_0$, which no Gaussian law accounts for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .. import _schedule
from ._grid import is_clean, training_indices
from .._core._law import validate_grid
from .._schedule import AbstractSchedule, Discrete, RectifiedFlow

Kind = Literal["timesteps", "sigmas", "flow_sigmas"]


class ExportWarning(UserWarning):
    """A target scheduler would transform the exported schedule, or the export changed it."""


def _grid(ts) -> np.ndarray:
    return np.asarray(validate_grid(jnp.asarray(ts, dtype=jnp.result_type(float))), dtype=np.float64)


def _sigmas(ts: np.ndarray, schedule: AbstractSchedule) -> np.ndarray:
    sig = np.asarray(schedule.sigma(jnp.asarray(ts, dtype=jnp.result_type(float))), dtype=np.float64)
    if not np.all(np.isfinite(sig)):
        raise ValueError(
            f"{type(schedule).__name__} has infinite sigma at t = {ts[~np.isfinite(sig)][0]} (alpha_bar = 0): "
            "sigma-based samplers cannot start there. Start the grid at t_max < 1."
        )
    return sig


def _config(scheduler) -> tuple[str, Mapping[str, Any]] | None:
    if scheduler is None:
        return None
    config = getattr(scheduler, "config", scheduler)
    if not isinstance(config, Mapping):
        raise ValueError("scheduler must be a diffusers scheduler (or its .config mapping).")  # noqa: TRY004
    # A scheduler object knows its class; a bare config (e.g. loaded from a model repo) carries "_class_name".
    name = config.get("_class_name") or (type(scheduler).__name__ if config is not scheduler else "")
    return str(name), config


def _warn(message: str):
    warnings.warn(message, ExportWarning, stacklevel=3)


def _check_table(schedule: AbstractSchedule, scheduler, config: Mapping[str, Any]):
    if not isinstance(schedule, Discrete):
        return
    T = config.get("num_train_timesteps")
    if T is not None and int(T) != schedule.num_train_timesteps:
        raise ValueError(
            f"the scheduler has num_train_timesteps={T} but the schedule's table has {schedule.num_train_timesteps}."
        )
    table = getattr(scheduler, "alphas_cumprod", None)
    if table is not None:
        theirs = np.asarray(table, dtype=np.float64)
        ours = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        # diffusers builds the table in float32: compare at that precision.
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=1e-5, atol=1e-7):
            raise ValueError(
                "the scheduler's alphas_cumprod differ from the schedule's table (other beta_schedule, beta range, "
                "or rescale_betas_zero_snr?): build the schedule with gdj.Discrete.from_diffusers(...) using the "
                "scheduler's config, or Discrete(scheduler.alphas_cumprod)."
            )


def _check_init_noise(name: str, config: Mapping[str, Any]):
    if name.startswith("Euler") and config.get("timestep_spacing", "linspace") in ("linspace", "trailing"):
        _warn(
            f"{name} with timestep_spacing={config.get('timestep_spacing', 'linspace')!r} sets init_noise_sigma = "
            "sigma_max instead of sqrt(sigma_max^2 + 1): pipelines then start from noise scaled by "
            "sigma_max / sqrt(1 + sigma_max^2) relative to N(0, I) (the 'standard' init of the scored law). "
            "Scale the initial latents yourself, or use timestep_spacing='leading' (custom timesteps/sigmas "
            "override the spacing itself)."
        )


def _check_clip(name: str, config: Mapping[str, Any]):
    if config.get("clip_sample") or config.get("thresholding"):
        _warn(
            f"{name} has clip_sample/thresholding enabled: it clamps the predicted x0, which changes the sampler "
            "(the exact law assumes no clipping). Set clip_sample=False, thresholding=False to reproduce it."
        )


def to_diffusers(
    ts: Float[ArrayLike, " N+1"],
    schedule: AbstractSchedule,
    kind: Kind = "timesteps",
    *,
    scheduler: Any = None,
    scheduler_shift: float = 1.0,
) -> list:
    r"""Export the grid `ts` (forward times, `(N + 1,)`, decreasing) for a diffusers scheduler.

    **Arguments:**

    - `ts`, `schedule`: the grid and the model schedule it was scored on.
    - `kind`:
        - `"timesteps"`: `list[int]` of $N$ training indices, strictly descending, in $[0, T)$; `schedule` must be
          `Discrete`, the grid must end at $t = 0$ and its other points lie on training indices
          (`gdj.grids.round_to_indices`). For `DDPMScheduler` / `EulerDiscreteScheduler.set_timesteps(timesteps=...)`.
        - `"sigmas"`: `list[float]` of the $N + 1$ noise levels $\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$,
          descending, ending in `0.0` for a clean end. For `EulerDiscreteScheduler.set_timesteps(sigmas=...)`.
        - `"flow_sigmas"`: `list[float]` of the $N$ flow levels $s \in (0, 1]$ (no trailing 0: the scheduler
          appends it); `schedule` must be `RectifiedFlow` and the grid must end at $t = 0$. For
          `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=...)`.
    - `scheduler`: optional diffusers scheduler (or its config) to validate against: table, clipping,
      sigma conversions, shifting, and schedulers that ignore custom timesteps.
    - `scheduler_shift`: for `"flow_sigmas"`, the static `shift` the target scheduler applies; the export
      pre-inverts it so that the scheduler's sigmas equal the schedule's (default 1.0: no shift).

    **Raises:** `ValueError` for a grid the target cannot run; **warns** (`ExportWarning`) where the target
    would transform it.
    """
    ts = _grid(ts)
    info = _config(scheduler)
    name, config = info if info is not None else ("", {})
    if info is not None:
        _check_table(schedule, scheduler, config)
    if kind == "timesteps":
        if not isinstance(schedule, Discrete):
            raise ValueError(
                f"kind='timesteps' needs a Discrete (training-table) schedule; got {type(schedule).__name__}. "
                "Use kind='sigmas' (Euler-type schedulers) or to_k_diffusion."
            )
        if ts[-1] != 0.0:
            raise ValueError(
                f"the grid ends at t = {ts[-1]}, but diffusers' schedulers end every run with custom timesteps on the "
                "clean sample (alpha_bar = 1, t = 0). Append 0.0 to the grid (one more step), or use kind='sigmas'."
            )
        indices = training_indices(ts, schedule)
        if info is not None:
            if name in ("DDIMScheduler", "PNDMScheduler", "DDIMInverseScheduler", "LCMScheduler"):
                _warn(
                    f"{name}.set_timesteps takes no custom timesteps and steps from t to t - T // num_inference_steps, "
                    "which matches a grid only for 'leading' spacing. For DDIM (eta=0) with these timesteps use "
                    "EulerDiscreteScheduler (the same sampler); for eta=1 use DDPMScheduler."
                )
            if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas") or config.get("use_beta_sigmas"):
                raise ValueError(
                    f"{name} with use_karras/exponential/beta_sigmas rejects custom timesteps; disable them or use "
                    "kind='sigmas'."
                )
            if config.get("final_sigmas_type") == "sigma_min":
                _warn(
                    f"{name} has final_sigmas_type='sigma_min': its last step lands on training index 0, not on the "
                    "clean sample (t = 0) of this grid. Set final_sigmas_type='zero'."
                )
            _check_clip(name, config)
            _check_init_noise(name, config)
        return [int(i) for i in indices]
    if kind == "sigmas":
        sig = _sigmas(ts, schedule)
        if not is_clean(schedule, ts[-1]):
            _warn(
                f"the grid ends at sigma = {sig[-1]:.6g} > 0: Euler-type schedulers given these sigmas stop there "
                "(output keeps that noise level) instead of at the clean sample."
            )
        if isinstance(schedule, Discrete):
            T = schedule.num_train_timesteps
            low = (ts > 0) & (ts < 1.0 / T - 1e-12)
            if np.any(low[:-1]):
                _warn(
                    "some evaluation points lie below training index 0 (0 < t < 1/T): EulerDiscreteScheduler clips "
                    "their model timestep to 0, so the model sees a noise level other than sigma there."
                )
        if info is not None:
            _check_clip(name, config)
            _check_init_noise(name, config)
        return [float(s) for s in sig]
    if kind == "flow_sigmas":
        if not isinstance(schedule, RectifiedFlow):
            raise ValueError(f"kind='flow_sigmas' needs a RectifiedFlow schedule; got {type(schedule).__name__}.")
        if ts[-1] != 0.0:
            raise ValueError(
                f"the grid ends at t = {ts[-1]}, but FlowMatchEulerDiscreteScheduler always appends a terminal sigma "
                "0 (t = 0). Append 0.0 to the grid."
            )
        flow = np.asarray(schedule.flow_sigma(jnp.asarray(ts[:-1])), dtype=np.float64)
        shift = float(scheduler_shift)
        if info is not None:
            if config.get("use_dynamic_shifting"):
                raise ValueError(
                    f"{name} has use_dynamic_shifting=True: it reshapes the sigmas with a resolution-dependent mu. "
                    "Set use_dynamic_shifting=False (the RectifiedFlow schedule already carries the shift)."
                )
            if config.get("invert_sigmas"):
                raise ValueError(f"{name} has invert_sigmas=True, which reverses the sigmas; unsupported.")
            if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas") or config.get("use_beta_sigmas"):
                raise ValueError(
                    f"{name} replaces given sigmas by Karras/exponential/beta ones; disable those options."
                )
            if config.get("shift_terminal"):
                _warn(f"{name} has shift_terminal set: it stretches the sigmas to end at that value.")
            their_shift = float(config.get("shift", 1.0))
            if not math.isclose(their_shift, shift):
                _warn(
                    f"{name} applies shift={their_shift} to the sigmas it is given, but the export assumed "
                    f"scheduler_shift={shift}: pass scheduler_shift={their_shift} (the export pre-inverts it) or "
                    "build the scheduler with shift=1.0."
                )
        if shift <= 0:
            raise ValueError(f"scheduler_shift must be > 0; got {scheduler_shift}.")
        # The scheduler maps u -> k u / (1 + (k - 1) u); export its inverse s / (k - (k - 1) s).
        flow = flow / (shift - (shift - 1.0) * flow)
        return [float(s) for s in flow]
    raise ValueError(f"kind must be 'timesteps', 'sigmas' or 'flow_sigmas'; got {kind!r}.")


def to_k_diffusion(
    ts: Float[ArrayLike, " N+1"],
    schedule: AbstractSchedule,
    *,
    append_zero: bool = False,
) -> list[float]:
    r"""k-diffusion / ComfyUI `SIGMAS`: the $N + 1$ noise levels $\sigma(t_k)$, descending, ending in `0.0`.

    A grid that does not end at $\sigma = 0$ (e.g. on `EDM(0.002, 80, 7)`, whose $t = 0$ is $\sigma = 0.002$)
    is exported as is with a warning; `append_zero=True` adds the final jump to $\sigma = 0$ that EDM and
    k-diffusion samplers take (one more step than the grid, so the law no longer matches the scored one).
    """
    ts = _grid(ts)
    sig = _sigmas(ts, schedule)
    if sig[-1] > 0:
        if append_zero:
            _warn("appended sigma = 0: the exported schedule has one more step than the grid that was scored.")
            sig = np.concatenate([sig, [0.0]])
        else:
            _warn(
                f"the grid ends at sigma = {sig[-1]:.6g} > 0, while k-diffusion / ComfyUI sigmas usually end in 0.0 "
                "(exported as is; append_zero=True adds the final step to 0)."
            )
    return [float(s) for s in sig]


# --- JSON ------------------------------------------------------------------------------------------

_FORMAT = "gaussdiff_jax.grid"


def _encode(obj):
    if isinstance(obj, eqx.Module):
        out = {"__class__": type(obj).__name__}
        for field in dataclasses.fields(obj):
            out[field.name] = _encode(getattr(obj, field.name))
        return out
    if isinstance(obj, (jnp.ndarray, np.ndarray)):
        arr = np.asarray(obj, dtype=np.float64)
        return arr.tolist() if arr.ndim else float(arr)
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    raise ValueError(f"to_json: cannot encode a {type(obj).__name__}.")


def _schedule_classes() -> dict[str, type]:
    from .._optimization import _learnable

    classes = {n: getattr(_schedule, n) for n in dir(_schedule) if isinstance(getattr(_schedule, n), type)}
    classes.update({n: getattr(_learnable, n) for n in ("WarpedSchedule", "TimeWarp")})
    return classes


def _decode(obj):
    if isinstance(obj, dict) and "__class__" in obj:
        classes = _schedule_classes()
        cls = classes.get(obj["__class__"])
        if cls is None:
            raise ValueError(f"from_json: unknown schedule class {obj['__class__']!r}.")
        kwargs = {k: _decode(v) for k, v in obj.items() if k != "__class__"}
        return cls(**kwargs)
    if isinstance(obj, list):
        return np.asarray(obj, dtype=np.float64)
    return obj


def to_json(
    ts: Float[ArrayLike, " N+1"],
    schedule: AbstractSchedule | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    indent: int | None = 2,
) -> str:
    r"""Serialize a grid (and optionally its schedule and free-form `metadata`) to JSON.

    Stores the times (full float64 precision), and with a schedule also its parameters, the sigmas
    (`to_k_diffusion` form) and, for a `Discrete` schedule with an integer grid, the diffusers timesteps.
    `from_json` reads it back.
    """
    ts = _grid(ts)
    doc: dict[str, Any] = {"format": _FORMAT, "version": 1, "times": ts.tolist(), "num_steps": int(ts.shape[0] - 1)}
    if schedule is not None:
        doc["schedule"] = _encode(schedule)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExportWarning)
            doc["sigmas"] = to_k_diffusion(ts, schedule) if np.isfinite(_sigma0(ts, schedule)) else None
            if isinstance(schedule, Discrete) and ts[-1] == 0.0:
                try:
                    doc["diffusers_timesteps"] = to_diffusers(ts, schedule, "timesteps")
                except ValueError:
                    pass  # not on training indices
    if metadata is not None:
        doc["metadata"] = dict(metadata)
    return json.dumps(doc, indent=indent)


def _sigma0(ts, schedule):
    return float(schedule.sigma(jnp.asarray(ts[0])))


def from_json(text: str) -> dict[str, Any]:
    """Read `to_json` output: a dict with `"times"` (jnp array), `"schedule"` (rebuilt, or `None`),
    `"num_steps"`, and `"sigmas"`, `"diffusers_timesteps"`, `"metadata"` when stored."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"from_json: not a {_FORMAT} document.")
    if doc.get("version") != 1:
        raise ValueError(f"from_json: unsupported version {doc.get('version')!r} (this reader knows 1).")
    out = dict(doc)
    out["times"] = validate_grid(jnp.asarray(doc["times"], dtype=jnp.result_type(float)))
    out["schedule"] = _decode(doc["schedule"]) if doc.get("schedule") is not None else None
    return out
