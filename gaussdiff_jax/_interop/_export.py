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
import inspect
import json
import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._core._law import validate_grid
from .._schedule import AbstractSchedule, Discrete, RectifiedFlow
from ._grid import training_indices
from ._inverse import is_clean

Kind = Literal["timesteps", "sigmas", "flow_sigmas"]


class ExportWarning(UserWarning):
    """A target scheduler would transform the exported schedule, or the export changed it."""


def _grid(ts) -> np.ndarray:
    return np.asarray(validate_grid(jnp.asarray(ts, dtype=jnp.result_type(float))), dtype=np.float64)


def sigma_of(schedule: AbstractSchedule, ts) -> np.ndarray:
    """`schedule.sigma(ts)` as float64 numbers (one compiled call per schedule type and grid length)."""
    return np.asarray(_sigma(schedule, jnp.asarray(ts, dtype=jnp.result_type(float))), dtype=np.float64)


@eqx.filter_jit
def _sigma(schedule, ts):
    return schedule.sigma(ts)


def _sigmas(ts: np.ndarray, schedule: AbstractSchedule) -> np.ndarray:
    sig = sigma_of(schedule, ts)
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
    if info is not None:
        _check_table(schedule, scheduler, info[1])
    exporters = {"timesteps": _timesteps, "sigmas": _sigma_list, "flow_sigmas": _flow_sigmas}
    if kind not in exporters:
        raise ValueError(f"kind must be 'timesteps', 'sigmas' or 'flow_sigmas'; got {kind!r}.")
    return exporters[kind](ts, schedule, info, scheduler_shift)


def _timesteps(ts: np.ndarray, schedule: AbstractSchedule, info, shift: float) -> list[int]:
    if not isinstance(schedule, Discrete):
        raise ValueError(  # noqa: TRY004 (house rule: bad input is a ValueError)
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
        name, config = info
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


def _sigma_list(ts: np.ndarray, schedule: AbstractSchedule, info, shift: float) -> list[float]:
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
        _check_clip(*info)
        _check_init_noise(*info)
    return [float(s) for s in sig]


def _flow_sigmas(ts: np.ndarray, schedule: AbstractSchedule, info, shift: float) -> list[float]:
    if not isinstance(schedule, RectifiedFlow):
        raise ValueError(f"kind='flow_sigmas' needs a RectifiedFlow schedule; got {type(schedule).__name__}.")  # noqa: TRY004
    if ts[-1] != 0.0:
        raise ValueError(
            f"the grid ends at t = {ts[-1]}, but FlowMatchEulerDiscreteScheduler always appends a terminal sigma "
            "0 (t = 0). Append 0.0 to the grid."
        )
    flow = np.asarray(schedule.flow_sigma(jnp.asarray(ts[:-1])), dtype=np.float64)
    shift = float(shift)
    if info is not None:
        _check_flow_scheduler(*info, shift)
    if shift <= 0:
        raise ValueError(f"scheduler_shift must be > 0; got {shift}.")
    # The scheduler maps u -> k u / (1 + (k - 1) u); export its inverse s / (k - (k - 1) s).
    flow = flow / (shift - (shift - 1.0) * flow)
    return [float(s) for s in flow]


def _check_flow_scheduler(name: str, config: Mapping[str, Any], shift: float):
    if config.get("use_dynamic_shifting"):
        raise ValueError(
            f"{name} has use_dynamic_shifting=True: it reshapes the sigmas with a resolution-dependent mu. "
            "Set use_dynamic_shifting=False (the RectifiedFlow schedule already carries the shift)."
        )
    if config.get("invert_sigmas"):
        raise ValueError(f"{name} has invert_sigmas=True, which reverses the sigmas; unsupported.")
    if config.get("use_karras_sigmas") or config.get("use_exponential_sigmas") or config.get("use_beta_sigmas"):
        raise ValueError(f"{name} replaces given sigmas by Karras/exponential/beta ones; disable those options.")
    if config.get("shift_terminal"):
        _warn(f"{name} has shift_terminal set: it stretches the sigmas to end at that value.")
    their_shift = float(config.get("shift", 1.0))
    if not math.isclose(their_shift, shift):
        _warn(
            f"{name} applies shift={their_shift} to the sigmas it is given, but the export assumed "
            f"scheduler_shift={shift}: pass scheduler_shift={their_shift} (the export pre-inverts it) or "
            "build the scheduler with shift=1.0."
        )


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
#
# One format for every grid this package writes: `to_json`, and the results of the `gaussdiff` command
# (`eval.json`, `optimize`'s `result.json`, `compare.json`). A document is a JSON object with
# `"format": "gaussdiff_jax.grid"`, `"version": 1` and either a grid at the top level (`"times"`, optional
# `"schedule"`, `"sigmas"`) or a list `"candidates"` of such grids (with their own extra keys), or both.
# Schedules are stored as `{"__class__": name, field: value, ...}` (nested for wrappers); non-finite
# floats as the strings "inf", "-inf", "nan" (strict JSON has no infinity). `times` and `schedule` define
# a grid; `sigmas` (null where infinite) are derived and checked on reading, so an edit to one of them
# alone is an error instead of being silently ignored.

_FORMAT = "gaussdiff_jax.grid"
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _float(x: float):
    x = float(x)
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _encode(obj):
    if isinstance(obj, eqx.Module):
        out = {"__class__": type(obj).__name__}
        for field in dataclasses.fields(obj):
            out[field.name] = _encode(getattr(obj, field.name))
        return out
    if isinstance(obj, (jnp.ndarray, np.ndarray)):
        arr = np.asarray(obj, dtype=np.float64)
        return _float(arr) if arr.ndim == 0 else np.vectorize(_float, otypes=[object])(arr).tolist()
    if isinstance(obj, float):
        return _float(obj)
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    raise ValueError(f"to_json: cannot encode a {type(obj).__name__}.")


def _schedule_classes() -> dict[str, type]:
    """Every schedule class defined so far (all of the package's, and users' subclasses), and `TimeWarp`."""
    from .._optimization._learnable import TimeWarp

    found, todo = {"TimeWarp": TimeWarp}, [AbstractSchedule]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if not getattr(cls, "__abstractmethods__", None):
                found.setdefault(cls.__name__, cls)
    return found


def _number(v):
    return [_number(x) for x in v] if isinstance(v, list) else _NON_FINITE.get(v, v) if isinstance(v, str) else v


def _decode_value(obj):
    if isinstance(obj, dict) and "__class__" in obj:
        return _decode_module(obj)
    if isinstance(obj, list):
        return np.asarray(_number(obj), dtype=np.float64)
    return _number(obj)


def _decode_module(obj: dict):
    name = obj["__class__"]
    cls = _schedule_classes().get(name)
    if cls is None:
        raise ValueError(f"from_json: unknown schedule class {name!r}.")
    params = inspect.signature(cls.__init__).parameters
    given = {k for k in obj if k != "__class__"}
    unknown = sorted(given - set(params))
    missing = [p for p, v in params.items() if p != "self" and v.default is v.empty and p not in given]
    if unknown or missing:
        what = f"unknown field(s) {unknown}" if unknown else f"missing field(s) {missing}"
        raise ValueError(f"from_json: cannot rebuild {name}: {what} (it takes {[p for p in params if p != 'self']}).")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: _decode_value(obj[k]) for k in given}
    for k, v in kwargs.items():  # array fields come back as arrays (JSON cannot tell 1.0 from array(1.0))
        if k in fields and not fields[k].metadata.get("static") and isinstance(v, (float, int, np.ndarray)):
            kwargs[k] = jnp.asarray(v, dtype=jnp.result_type(float))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, eqx.EquinoxRuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"from_json: invalid {name} parameters ({reason}).") from None


def grid_fields(ts: Float[ArrayLike, " N+1"], schedule: AbstractSchedule | None = None) -> dict[str, Any]:
    """The JSON fields of one grid: `times`, `num_steps`, and with a schedule `schedule` and `sigmas`
    (null where infinite). What `to_json` writes at the top level and the command writes per candidate."""
    ts = _grid(ts)
    out: dict[str, Any] = {"times": ts.tolist(), "num_steps": int(ts.shape[0] - 1)}
    if schedule is not None:
        out["schedule"] = _encode(schedule)
        sig = sigma_of(schedule, ts)
        out["sigmas"] = [float(s) if math.isfinite(s) else None for s in sig]
    return out


def to_json(
    ts: Float[ArrayLike, " N+1"],
    schedule: AbstractSchedule | None = None,
    *,
    metadata: Mapping[str, Any] | None = None,
    indent: int | None = 2,
) -> str:
    r"""Serialize a grid (and optionally its schedule and free-form `metadata`) to JSON.

    Stores the times (full float64 precision), and with a schedule also its parameters, the sigmas
    (null where infinite) and, for a `Discrete` schedule with an integer grid, the diffusers timesteps.
    `from_json` reads it back (and every result of the `gaussdiff` command: see the format notes above).
    """
    doc: dict[str, Any] = {"format": _FORMAT, "version": 1, **grid_fields(ts, schedule)}
    if isinstance(schedule, Discrete) and doc["times"][-1] == 0.0:
        try:
            doc["diffusers_timesteps"] = to_diffusers(ts, schedule, "timesteps")
        except ValueError:
            pass  # not on training indices
    if metadata is not None:
        doc["metadata"] = dict(metadata)
    return json.dumps(doc, indent=indent, allow_nan=False)


def _check_sigmas(ts: np.ndarray, schedule: AbstractSchedule, stored, where: str):
    ours = sigma_of(schedule, ts)
    if not isinstance(stored, list) or len(stored) != ours.shape[0]:
        raise ValueError(f"from_json: {where}: 'sigmas' must be a list of {ours.shape[0]} numbers (null = infinite).")
    theirs = np.asarray([math.inf if v is None else v for v in stored], dtype=np.float64)
    same = (theirs == ours) | np.isclose(theirs, ours, rtol=1e-9, atol=0.0)
    if not np.all(same):
        k = int(np.argmin(same))
        raise ValueError(
            f"from_json: {where}: 'sigmas' differ from the schedule's sigma(times) at point {k} ({theirs[k]:.6g} vs "
            f"{ours[k]:.6g}). The times and the schedule define the grid and the sigmas are derived from them: edit "
            "'times' (or the schedule), and delete 'sigmas' or recompute them."
        )


def _decode_grid(doc, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError(f"from_json: {where} must be a JSON object with 'times'; got {type(doc).__name__}.")  # noqa: TRY004
    if "times" not in doc:
        raise ValueError(f"from_json: {where} has no 'times' (the grid's forward times).")
    try:
        times = np.asarray(doc["times"], dtype=np.float64)
        times = validate_grid(jnp.asarray(times, dtype=jnp.result_type(float)))
    except (TypeError, ValueError) as error:
        raise ValueError(f"from_json: {where}: 'times' {str(error).strip().splitlines()[0]}") from None
    spec = doc.get("schedule")
    if spec is not None and not (isinstance(spec, dict) and "__class__" in spec):
        raise ValueError(f"from_json: {where}: 'schedule' must be an object with '__class__' (as to_json writes).")
    schedule = None if spec is None else _decode_module(spec)
    if schedule is not None and doc.get("sigmas") is not None:
        _check_sigmas(np.asarray(times, dtype=np.float64), schedule, doc["sigmas"], where)
    return {"times": times, "schedule": schedule}


def _decode_candidate(candidate, k: int) -> dict[str, Any]:
    if isinstance(candidate, dict) and candidate.get("times", 0) is None and candidate.get("error"):
        return {**candidate, "schedule": None}  # a candidate that failed: its error, no grid
    name = candidate.get("name", "?") if isinstance(candidate, dict) else "?"
    return {**candidate, **_decode_grid(candidate, f"candidate {k} ({name})")}


def from_json(text: str) -> dict[str, Any]:
    """Read a grid document: `to_json` output, or a result of the `gaussdiff` command.

    **Returns:** the document as a dict, with `"times"` (a jnp array) and `"schedule"` (rebuilt, or `None`)
    decoded at the top level when it holds a grid, and in each entry of `"candidates"` when it has them (a
    candidate that failed keeps `"times": None` and its `"error"`); other keys (`"sigmas"`,
    `"diffusers_timesteps"`, `"metadata"`, the command's results) as stored.

    **Raises:** `ValueError` with one line saying what is wrong: not JSON, not an object, another format or
    version, a missing or malformed `times` / `schedule`, unknown schedule classes or fields, or `sigmas`
    that disagree with the times and schedule (an edit of one without the other).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"from_json: not JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        got = f"a JSON {type(doc).__name__}" if not isinstance(doc, dict) else f"format {doc.get('format')!r}"
        raise ValueError(f"from_json: not a {_FORMAT} document ({got}); write one with gdj.to_json or gaussdiff.")
    if doc.get("version") != 1:
        raise ValueError(f"from_json: unsupported version {doc.get('version')!r} (this reader knows 1).")
    out = dict(doc)
    candidates = doc.get("candidates")
    if "times" in doc or candidates is None:
        out.update(_decode_grid(doc, "the document"))
    if candidates is not None:
        if not isinstance(candidates, list) or not candidates:
            raise ValueError("from_json: 'candidates' must be a non-empty list of grids.")
        out["candidates"] = [_decode_candidate(c, k) for k, c in enumerate(candidates)]
    return out
