r"""The exact counterpart of a configured diffusers scheduler: `from_diffusers_scheduler`.

```python
from diffusers import DPMSolverMultistepScheduler
sched = DPMSolverMultistepScheduler.from_pretrained(repo, subfolder="scheduler")
r = gdj.from_diffusers_scheduler(sched, 20)
law = gdj.sample_law(source, r.schedule, r.sampler, r.ts, init=r.init)   # the pipeline's output law
```

`law` is the exact law of what the pipeline (`latents = init_noise_sigma * randn`, then the scheduler's own loop)
returns when the network is the exact denoiser of the Gaussian source, in VP units (multiply by
`output_scale` when the run ends at a noise level in a non-VP state, see `DiffusersCounterpart`).

**What is read from diffusers.** Nothing is imported from diffusers (it stays an optional extra): the scheduler's
`config`, its class name and its `alphas_cumprod` table are read, and `set_timesteps(num_inference_steps)` is
called **on a deep copy**. The run's noise levels are the copy's `timesteps` (schedulers that index
`alphas_cumprod`: DDIM, DDPM, PNDM) or its `sigmas` (all others), taken as the float32 numbers diffusers holds, so
that the counterpart follows the levels the pipeline actually uses (to float64 round-off), whatever the spacing,
`steps_offset`, Karras / exponential / beta sigmas, `final_sigmas_type`, shift or clipping of $\lambda$ did to them.
The grid builders in `gdj.grids` (`diffusers_*`) recompute the same spacings without diffusers.

**Schedules returned.** Schedulers that index `alphas_cumprod` get `Discrete(alphas_cumprod)`; schedulers that
interpolate a sigma table get `Discrete` of that table ($\bar\alpha = 1/(1 + \sigma^2)$ with diffusers' float32
$\sigma$: the same table to $10^{-7}$), with grid points on training indices where the levels are, and in between
(exactly inverted) elsewhere; flow-matching schedulers get `RectifiedFlow(shift)`; `EDMEulerScheduler`, which has no
training table, gets `Discrete` of its own levels (a uniform grid).

**The model.** With the exact denoiser every `prediction_type` (`epsilon`, `v_prediction`, `sample`, flow velocity)
is the same function, so `prediction_type` does not enter; nor do `timestep_type`, `variance_type="learned*"` of the
multistep solvers (an output split) or the timesteps passed to the network. The model is exact at the noise level the
scheduler assigns to the sample (its `sigmas` / `alphas_cumprod` entry).

**Refused** (`ValueError` naming what is missing): `clip_sample` / `thresholding` (nonlinear in the sample),
`use_dynamic_shifting` (needs the image size: pass the resulting shift instead), learned variances of DDPM,
options whose law is not Gaussian-exact, and classes without a counterpart. **Warned** (`DiffusersQuirkWarning`):
places where diffusers does something other than its documentation or the method it implements says, reproduced.
"""

from __future__ import annotations

import copy as _copy
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._sampler import AbstractSampler
from .._schedule import AbstractSchedule, Discrete, RectifiedFlow
from ._export import ExportWarning


class DiffusersQuirkWarning(ExportWarning):
    """A diffusers scheduler does something other than the method it implements; the counterpart reproduces it."""


class DiffusersCounterpart(NamedTuple):
    r"""What `from_diffusers_scheduler` returns: `sample_law(source, schedule, sampler, ts, init=init)` is the law
    of the pipeline's output (VP units; times `output_scale`, see below).

    **Fields:**

    - `schedule`, `sampler`, `ts`: as for `sample_law` (`ts`: forward times, `(N + 1,)`, decreasing).
    - `init`: `"standard"` or the initial VP variance $c$: pipelines start from `init_noise_sigma * randn` in the
      scheduler's own coordinates, e.g. $c = 1 - \bar\alpha(t_0)$ when that is $\sigma_{\max}z$ in VE units.
    - `notes`: what was assumed, substituted or reproduced (one sentence each).
    - `scheduler`: the scheduler's class name.
    - `nfe`: network evaluations the pipeline makes (its `len(timesteps)`).
    - `output_scale`: the pipeline's output is `output_scale` times the VP state; 1 unless the run ends above
      $\sigma = 0$ in VE or flow coordinates (`final_sigmas_type="sigma_min"` on Euler-type schedulers), where it is
      $\sqrt{1 + \sigma_N^2}$ (VE) or $\sqrt{(1 - s_N)^2 + s_N^2}$ (flow).
    """

    schedule: AbstractSchedule
    sampler: AbstractSampler
    ts: Array
    init: str | float
    notes: tuple[str, ...]
    scheduler: str
    nfe: int
    output_scale: float = 1.0


class Run:
    """What a handler learns about one configured run (filled in by the handlers, turned into the result)."""

    def __init__(self, name: str, config: Mapping[str, Any], scheduler: Any, num_inference_steps: int):
        self.name, self.config, self.original, self.n = name, config, scheduler, num_inference_steps
        self.notes: list[str] = []

    def opt(self, key: str, default=None):
        return self.config.get(key, default)

    def copy(self, **set_timesteps_kwargs):
        """A deep copy of the scheduler with `set_timesteps(n)` called (the original is left alone)."""
        sched = _copy.deepcopy(self.original)
        sched.set_timesteps(self.n, **set_timesteps_kwargs)
        return sched

    def note(self, text: str):
        self.notes.append(text)

    def quirk(self, text: str):
        """A diffusers oddity that the counterpart reproduces: note it and warn."""
        self.notes.append(text)
        warnings.warn(f"{self.name}: {text}", DiffusersQuirkWarning, stacklevel=4)

    def refuse(self, what: str):
        raise ValueError(f"from_diffusers_scheduler: {self.name} {what}")


Handler = Callable[[Run, dict], DiffusersCounterpart]
_HANDLERS: dict[str, Handler] = {}


def register_handler(*names: str):
    """Register the counterpart builder of one or more diffusers scheduler classes (by class name)."""

    def add(fn: Handler) -> Handler:
        for name in names:
            _HANDLERS[name] = fn
        return fn

    return add


def supported_schedulers() -> list[str]:
    """The diffusers scheduler class names `from_diffusers_scheduler` accepts."""
    return sorted(_HANDLERS)


def _config_of(scheduler) -> tuple[str, dict]:
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping) or not hasattr(scheduler, "set_timesteps"):
        raise ValueError(
            "from_diffusers_scheduler needs a configured diffusers scheduler object (e.g. "
            f"DPMSolverMultistepScheduler(...) or .from_pretrained(...)); got {type(scheduler).__name__}."
        )
    return type(scheduler).__name__, dict(config)


def _refuse_common(run: Run):
    if run.opt("clip_sample") or run.opt("thresholding"):
        run.refuse(
            "has clip_sample/thresholding enabled: clamping the predicted x0 is nonlinear, so the output is not "
            "Gaussian and has no closed-form law. Set clip_sample=False and thresholding=False."
        )
    if run.opt("use_dynamic_shifting"):
        run.refuse(
            "has use_dynamic_shifting=True: its sigmas depend on a resolution-dependent mu passed at sampling time. "
            "Build the scheduler with use_dynamic_shifting=False and shift=exp(mu) (the shift your image size gives)."
        )
    if run.opt("invert_sigmas"):
        run.refuse("has invert_sigmas=True (Mochi's reversed sigmas); no counterpart.")
    prediction = run.opt("prediction_type", "epsilon")
    if prediction not in ("epsilon", None):
        run.note(
            f"prediction_type={prediction!r} does not matter with the exact model (every parameterization gives the "
            "same denoiser)."
        )


def from_diffusers_scheduler(
    scheduler: Any,
    num_inference_steps: int,
    *,
    eta: float = 0.0,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> DiffusersCounterpart:
    r"""The gaussdiff_jax counterpart of a configured diffusers scheduler run for `num_inference_steps`.

    **Arguments:**

    - `scheduler`: a diffusers scheduler instance (any of `supported_schedulers()`), as configured for the
      pipeline. It is not modified (a deep copy is used).
    - `num_inference_steps`: what the pipeline passes to `set_timesteps`.
    - `eta`: `DDIMScheduler.step`'s `eta` (the pipelines' `eta` argument); ignored by other schedulers.
    - `s_churn`, `s_tmin`, `s_tmax`, `s_noise`: the churn arguments of `EulerDiscreteScheduler.step` and
      `EDMEulerScheduler.step` (0 churn, as pipelines pass, by default); ignored by other schedulers.

    **Returns:** a `DiffusersCounterpart` `(schedule, sampler, ts, init, notes, scheduler, nfe, output_scale)` such
    that `gdj.sample_law(source, r.schedule, r.sampler, r.ts, init=r.init)` is the exact law of the pipeline's output
    with the exact model (module docstring).

    **Raises:** `ValueError` naming the unsupported class or option. **Warns:** `DiffusersQuirkWarning` where the
    scheduler does something odd that the counterpart reproduces (the same text is in `notes`).
    """
    name, config = _config_of(scheduler)
    n = num_inference_steps
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"num_inference_steps must be a positive integer; got {num_inference_steps!r}.")
    run = Run(name, config, scheduler, int(num_inference_steps))
    if name not in _HANDLERS:
        raise ValueError(
            f"from_diffusers_scheduler: no counterpart for {name}; supported: {', '.join(supported_schedulers())}."
        )
    _refuse_common(run)
    opts = {"eta": float(eta), "s_churn": float(s_churn), "s_tmin": float(s_tmin), "s_tmax": float(s_tmax),
            "s_noise": float(s_noise)}
    return _HANDLERS[name](run, opts)


# --- helpers shared by the handlers ---------------------------------------------------------------


def as_float64(values) -> np.ndarray:
    """A torch tensor / array / list as float64 numpy (exact: diffusers' float32 numbers are kept as they are)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
        if hasattr(values, "double"):
            values = values.double()
        values = values.numpy()
    return np.asarray(values, dtype=np.float64)


def vp_table(run: Run, sched) -> Discrete:
    r"""`Discrete(alphas_cumprod)` of the scheduler (float32 values, kept exactly).

    A zero terminal SNR entry (`rescale_betas_zero_snr=True`: $\bar\alpha_{T-1} = 0$) is replaced by $10^{-30}$,
    which changes the law by about $10^{-15}$ relative (a `Discrete` table needs $\bar\alpha > 0$)."""
    table = as_float64(sched.alphas_cumprod)
    if table[-1] <= 0:
        table = table.copy()
        table[-1] = 1e-30
        run.note("alphas_cumprod[-1] = 0 (zero terminal SNR) is represented by 1e-30 (effect ~1e-15 relative).")
    return Discrete(table)


def sigma_table(sched) -> np.ndarray:
    r"""The VE sigma table $\sqrt{(1-\bar\alpha)/\bar\alpha}$ exactly as diffusers computes it (float32 tensor ops)."""
    ac = sched.alphas_cumprod
    return as_float64(((1 - ac) / ac) ** 0.5)


def levels_discrete(levels: np.ndarray) -> tuple[Discrete, np.ndarray]:
    r"""A `Discrete` table made of a run's own positive VE levels (descending; a final 0 is the clean point), and the
    grid: the levels sit on the knots, so the grid is uniform, $t_k = (P - k)/P$ (then 0)."""
    positive = levels[levels > 0]
    p = positive.shape[0]
    if np.any(np.diff(positive) >= 0):
        raise ValueError(f"the scheduler's noise levels are not strictly decreasing: {positive.tolist()}.")
    table = 1.0 / (1.0 + positive[::-1] ** 2)
    ts = (p - np.arange(p)) / p
    if levels.shape[0] > p:
        ts = np.concatenate([ts, [0.0]])
    return Discrete(table), ts


def times_on_discrete(schedule: Discrete, table_sigmas: np.ndarray, levels: np.ndarray) -> np.ndarray:
    r"""Forward times where `schedule` (a `Discrete` made from `table_sigmas`) has the VE noise levels `levels`.

    Levels equal to a table entry sit on its knot $t = (i + 1)/T$; others are found by inverting the table's
    piecewise-linear log-SNR in closed form (below index 0: its $\sigma^2 \propto t$ head); $\sigma = 0$ is $t = 0$.
    Checked: the schedule's sigma at the returned times equals `levels` to $10^{-12}$ relative (plus the
    $10^{-16}$ absolute precision of $\sigma^2$ that a table of $\bar\alpha$ keeps where $\sigma \ll 1$)."""
    T = table_sigmas.shape[0]
    knots = (np.arange(T) + 1.0) / T
    ell_table = np.asarray(schedule.log_snr(jnp.asarray(knots)), dtype=np.float64)
    out = np.empty_like(levels)
    for k, s in enumerate(levels):
        hit = np.nonzero(table_sigmas == s)[0]
        if s == 0:
            out[k] = 0.0
        elif hit.size:
            out[k] = knots[hit[0]]
        else:
            ell = -2.0 * math.log(s)
            if ell >= ell_table[0]:
                out[k] = math.exp(ell_table[0] - ell) / T
            elif ell < ell_table[-1]:
                raise ValueError(f"noise level {s} lies above the table's largest ({table_sigmas[-1]}).")
            else:
                i = int(np.searchsorted(-ell_table, -ell, side="right")) - 1  # ell_table[i] >= ell > ell_table[i+1]
                i = min(i, T - 2)
                w = (ell_table[i] - ell) / (ell_table[i] - ell_table[i + 1])
                out[k] = (i + 1.0 + w) / T
    got = np.asarray(schedule.sigma(jnp.asarray(out)), dtype=np.float64)
    # A Discrete table stores abar = 1/(1 + sigma^2): near abar = 1 it keeps sigma^2 to ~1e-16 absolute only.
    safe = np.maximum(levels, 1e-300)
    bad = np.abs(got - levels) > 1e-12 * safe + 1e-15 / safe  # no safe**2: it underflows to 0 at sigma = 0
    if np.any(bad):
        raise RuntimeError(
            f"internal: could not place noise levels {levels[bad].tolist()} on the table (got {got[bad]})."
        )
    return out


def times_on_flow(schedule: RectifiedFlow, flow_sigmas: np.ndarray) -> np.ndarray:
    r"""Forward times where `schedule` has the flow levels $s$: $t = s/(k - (k - 1)s)$."""
    k = float(schedule.shift)
    return flow_sigmas / (k - (k - 1.0) * flow_sigmas)


def init_of(init_noise_sigma: float, state_scale: float) -> str | float:
    r"""The initial VP variance of `init_noise_sigma * randn` in a state `state_scale` times the VP state."""
    c = (float(init_noise_sigma) / float(state_scale)) ** 2
    return "standard" if abs(c - 1.0) <= 1e-14 else c


def ve_scale(sigma: float) -> float:
    r"""VE state / VP state: $\sqrt{1 + \sigma^2}$."""
    return math.sqrt(1.0 + float(sigma) ** 2)


def flow_scale(s: float) -> float:
    r"""Flow state / VP state: $\sqrt{(1 - s)^2 + s^2}$."""
    s = float(s)
    return math.sqrt((1.0 - s) ** 2 + s**2)


def init_noise_sigma(sched) -> float:
    """The scheduler's `init_noise_sigma`, computed in float64 (its sigmas upcast first on this copy); 1 for the
    flow-matching schedulers, which have none (their pipelines start from `randn`)."""
    sigmas = getattr(sched, "sigmas", None)
    if hasattr(sigmas, "double"):
        sched.sigmas = sigmas.double()
    return float(getattr(sched, "init_noise_sigma", 1.0))


def grid(ts: np.ndarray) -> Array:
    ts = np.asarray(ts, dtype=np.float64)
    if ts.shape[0] < 2 or np.any(np.diff(ts) >= 0):
        raise ValueError(f"internal: the run's grid is not strictly decreasing: {ts.tolist()}.")
    return jnp.asarray(ts, dtype=jnp.result_type(float))


def counterpart(run: Run, schedule, sampler, ts, init, nfe: int, output_scale: float = 1.0) -> DiffusersCounterpart:
    return DiffusersCounterpart(
        schedule=schedule,
        sampler=sampler,
        ts=grid(ts),
        init=init,
        notes=tuple(run.notes),
        scheduler=run.name,
        nfe=int(nfe),
        output_scale=float(output_scale),
    )


from . import _diffusers_handlers  # noqa: F401  (registers the handlers)
