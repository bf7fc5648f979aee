r"""Time discretizations: the grids $t_0 > t_1 > \dots > t_N$ that samplers run along.

A *schedule* maps forward time to a noise level; a *grid* picks the $N + 1$ times a sampler visits
(MATH.md section 1). Every builder here returns forward times, shape `(num_steps + 1,)`, strictly
decreasing from `t_max` (default 1) to `t_min` (default 0), ready for `sample_law`.

**Where the model is evaluated.** One-evaluation samplers (DDIM, DDPM, Euler) call the model at
$t_0, \dots, t_{N-1}$ and land on $t_N$ without calling it. When the grid ends at a *clean* point
($\sigma(t_N) = 0$, e.g. $t_N = 0$ for `Discrete`, `LinearBeta`, `RectifiedFlow`), the last step is the
jump to the clean sample that k-diffusion (trailing `0.0` in its sigmas) and diffusers (`final_alpha_cumprod = 1`,
`final_sigmas_type="zero"`) take; grids defined by noise levels (Karras, log-SNR, AYS) then spread the
$N$ *evaluation* levels between $\sigma(t_{\max})$ and $\sigma(t_{\rm floor})$ — the smallest noise level
the model was trained on, `t_floor = 1/T` (training index 0) for a `Discrete` table — and append $t_{\min}$.
Otherwise ($\sigma(t_{\min}) > 0$, e.g. `EDM(0.002, 80, 7)` at $t = 0$) the $N + 1$ levels run from
$\sigma(t_{\max})$ to $\sigma(t_{\min})$.

**`Discrete` tables.** Training index $i$ sits at $t = (i + 1)/T$ (see `Discrete`), so diffusers'
spacings are grids too: `"trailing"` is exactly `uniform`, `"linspace"` is uniform over indices
$T-1 \dots 0$ followed by the clean point, `"leading"` uses indices $(N-1-k)\lfloor T/N\rfloor$ + offset.

**NFE vs steps** (`num_evaluations`, `steps_for_nfe`): DDIM, DDPM, Euler, Euler–Maruyama and the
exponential integrator cost 1 network evaluation (NFE) per step; `Heun` (trapezoid every step) 2;
`EDMHeun` 2, except a last step that lands on $\sigma = 0$, which is an Euler step (1): $2N - 1$; `RK4` 4.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._sampler import DDIM, AbstractSampler
from .._schedule import AbstractSchedule, Discrete
from ._inverse import _float_dtype, _log_snr, is_clean, time_of_log_snr, time_of_sigma

Grid = Float[Array, " N+1"]

# --- Published Align-Your-Steps noise levels (10 steps, 11 levels, sigma_max first) -----------------
# Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models", ICML 2024,
# arXiv:2404.14507, Appendix B.3, Table 3 ("Optimized schedules", values sigma(t_n), ..., sigma(t_0)).
# The same lists are in NVIDIA's quick-start guide (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html),
# which also gives SD1.5's as training timesteps [999, 850, 736, 645, 545, 455, 343, 233, 124, 24, 0].
# Both are for Stable Diffusion's scaled-linear 1000-step table (sigma 14.615 = index 999, 0.029 = index 0).
AYS_SIGMAS: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


# --- NFE accounting --------------------------------------------------------------------------------


def num_evaluations(sampler: AbstractSampler, ts: Float[ArrayLike, " N+1"], schedule: AbstractSchedule) -> int:
    r"""Network evaluations (NFE) that `sampler` spends on the grid `ts` (see the module docstring).

    `EDMHeun` saves one evaluation on a last step that lands on $\sigma = 0$ (an Euler step there).
    """
    return int(sampler.num_evaluations(schedule, np.asarray(ts)))


def steps_for_nfe(sampler: AbstractSampler, nfe: int, *, ends_clean: bool = True) -> int:
    r"""The largest number of steps whose NFE fits the budget `nfe` (integer >= the cost of one step).

    `ends_clean`: whether the grid ends at $\sigma = 0$ (only matters for `EDMHeun`: $2N - 1$ vs $2N$).
    Budgets that a sampler cannot use exactly (odd NFE for `Heun`) are rounded down.
    """
    nfe = _positive_int(nfe, "nfe")
    steps = sampler.steps_for_nfe(nfe, ends_clean=ends_clean)
    if steps < 1:
        raise ValueError(
            f"an NFE budget of {nfe} is below one step of {type(sampler).__name__} "
            f"({sampler.evaluations_per_step} NFE)."
        )
    return steps


# --- helpers ---------------------------------------------------------------------------------------


def _positive_int(n, what: str) -> int:
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"{what} must be a positive integer; got {n!r}.")
    return int(n)


def _as_grid(ts: np.ndarray) -> Grid:
    ts = np.asarray(ts, dtype=np.float64)
    if ts.shape[0] < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(
            f"the grid is not strictly decreasing ({ts.tolist()}): too many steps for the range, or "
            "duplicate noise levels. Use fewer steps or a wider [t_min, t_max]."
        )
    return jnp.asarray(ts, dtype=_float_dtype())


def _check_range(t_max: float, t_min: float) -> tuple[float, float]:
    t_max, t_min = float(t_max), float(t_min)
    if not (0.0 <= t_min < t_max <= 1.0):
        raise ValueError(f"need 0 <= t_min < t_max <= 1; got t_max={t_max}, t_min={t_min}.")
    return t_max, t_min


def _default_floor(schedule: AbstractSchedule, t_floor: float | None, t_min: float) -> float:
    if t_floor is not None:
        return float(t_floor)
    if isinstance(schedule, Discrete):
        return max(1.0 / schedule.num_train_timesteps, t_min)
    raise ValueError(
        f"the grid ends at a clean point (sigma(t_min) = 0) of {type(schedule).__name__}, so the smallest "
        "noise level the model is evaluated at must be given: pass t_floor (e.g. t_floor=1e-3), or end the "
        "grid at t_min > 0."
    )


def _from_log_snr_levels(
    schedule: AbstractSchedule,
    num_steps: int,
    t_max: float,
    t_min: float,
    t_floor: float | None,
    levels: Callable[[float, float, int], np.ndarray],
) -> Grid:
    """Shared skeleton of grids defined by noise levels: `levels(l_hi, l_lo, count)` -> log-SNR values."""
    n = _positive_int(num_steps, "num_steps")
    t_max, t_min = _check_range(t_max, t_min)
    l_top = float(_log_snr(schedule, t_max))
    if not math.isfinite(l_top):
        raise ValueError(
            f"{type(schedule).__name__} has sigma(t_max={t_max}) = inf (alpha_bar = 0): noise-level grids need "
            "a finite sigma_max. Pass t_max < 1."
        )
    if is_clean(schedule, t_min):
        floor = _default_floor(schedule, t_floor, t_min)
        if not (t_min < floor < t_max):
            raise ValueError(f"need t_min < t_floor < t_max; got t_floor={floor}.")
        ells = np.array([l_top]) if n == 1 else levels(l_top, float(_log_snr(schedule, floor)), n)
        inner = np.array(time_of_log_snr(schedule, ells[1:], t_lo=floor, t_hi=t_max))
        if n > 1:
            inner[-1] = floor  # the last level is the floor by construction: exact, not bisection round-off
        return _as_grid(np.concatenate([[t_max], inner, [t_min]]))
    ells = levels(l_top, float(_log_snr(schedule, t_min)), n + 1)
    inner = np.asarray(time_of_log_snr(schedule, ells[1:-1], t_lo=t_min, t_hi=t_max))
    return _as_grid(np.concatenate([[t_max], inner, [t_min]]))


# --- the grids -------------------------------------------------------------------------------------


def uniform(schedule: AbstractSchedule | None, num_steps: int, *, t_max: float = 1.0, t_min: float = 0.0) -> Grid:
    r"""Uniform in time: $t_k = t_{\max} - k (t_{\max} - t_{\min})/N$. For a `Discrete` table with the
    defaults this is diffusers' `"trailing"` spacing (indices $T(1 - k/N) - 1$) plus the clean point."""
    n = _positive_int(num_steps, "num_steps")
    t_max, t_min = _check_range(t_max, t_min)
    return _as_grid(np.linspace(t_max, t_min, n + 1))


def quadratic(
    schedule: AbstractSchedule | None,
    num_steps: int,
    *,
    t_max: float = 1.0,
    t_min: float = 0.0,
    t_floor: float | None = None,
    power: float = 2.0,
) -> Grid:
    r"""Quadratic in time (DDIM's CIFAR-10 "quad" spacing), dense near the data end.

    Evaluation points $t_k = f + (t_{\max} - f)(1 - k/N)^p$, $k < N$, $p = 2$, then $t_N = t_{\min}$, with floor
    $f = t_{\min}$ by default: $t_k = t_{\min} + (t_{\max} - t_{\min})(1 - k/N)^2$. For a `Discrete` table ending at
    the clean point, $f = 1/T$ (training index 0), so the model is never evaluated below its table; `t_floor`
    sets $f$ explicitly."""
    n = _positive_int(num_steps, "num_steps")
    t_max, t_min = _check_range(t_max, t_min)
    if not float(power) > 0:
        raise ValueError(f"quadratic: power must be > 0; got {power}.")
    floor = t_min
    if t_floor is not None or (isinstance(schedule, Discrete) and is_clean(schedule, t_min)):
        floor = _default_floor(schedule, t_floor, t_min)
        if not (t_min <= floor < t_max):
            raise ValueError(f"quadratic: need t_min <= t_floor < t_max; got t_floor={floor}.")
    frac = (1.0 - np.arange(n) / n) ** float(power)
    return _as_grid(np.concatenate([floor + (t_max - floor) * frac, [t_min]]))


def log_snr_uniform(
    schedule: AbstractSchedule,
    num_steps: int,
    *,
    t_max: float = 1.0,
    t_min: float = 0.0,
    t_floor: float | None = None,
) -> Grid:
    r"""Uniform in log-SNR $\ell = -2\log\sigma$ (DPM-Solver's "logSNR" skip type), between $\sigma(t_{\max})$ and
    $\sigma(t_{\rm floor})$ (clean end) or $\sigma(t_{\min})$; see the module docstring."""
    return _from_log_snr_levels(schedule, num_steps, t_max, t_min, t_floor, lambda hi, lo, m: np.linspace(hi, lo, m))


def karras(
    schedule: AbstractSchedule,
    num_steps: int,
    *,
    rho: float = 7.0,
    t_max: float = 1.0,
    t_min: float = 0.0,
    t_floor: float | None = None,
) -> Grid:
    r"""Karras et al.'s $\rho$-spacing, $\sigma_k^{1/\rho}$ linear from $\sigma_{\max}^{1/\rho}$ to $\sigma_{\min}^{1/\rho}$.

    With a clean end: $N$ levels then $\sigma = 0$, exactly k-diffusion's `get_sigmas_karras(n, sigma_min, sigma_max)`
    with `sigma_min` $= \sigma(t_{\rm floor})$. For `EDM(0.002, 80, 7)` (not clean at $t = 0$) this is the uniform grid.
    """
    rho = float(rho)
    if not rho > 0:
        raise ValueError(f"karras: rho must be > 0; got {rho}.")

    def levels(l_hi, l_lo, m):
        s_hi, s_lo = math.exp(-0.5 * l_hi), math.exp(-0.5 * l_lo)
        ramp = np.linspace(0.0, 1.0, m)
        sig = (s_hi ** (1 / rho) + ramp * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        return -2.0 * np.log(sig)

    return _from_log_snr_levels(schedule, num_steps, t_max, t_min, t_floor, levels)


def _discrete_only(schedule, what: str) -> int:
    if not isinstance(schedule, Discrete):
        raise ValueError(  # noqa: TRY004 (house rule: bad input is a ValueError)
            f"{what} spacing is defined for a Discrete (training-table) schedule; got {type(schedule).__name__}."
        )
    return schedule.num_train_timesteps


def _check_steps_vs_table(n: int, T: int, what: str):
    if n > T:
        raise ValueError(
            f"{what}: {n} steps exceed the table length T = {T}: a Discrete model has only T distinct noise "
            "levels. Use at most T steps (num_steps = T visits every training index)."
        )


def _from_indices(indices: np.ndarray, T: int, what: str) -> Grid:
    indices = np.asarray(indices, dtype=np.int64)
    if np.any(np.diff(indices) >= 0) or indices.min() < 0 or indices.max() >= T:
        raise ValueError(f"{what}: the training indices {indices.tolist()} are not strictly decreasing in [0, {T}).")
    return _as_grid(np.concatenate([(indices + 1.0) / T, [0.0]]))


def leading(schedule: Discrete, num_steps: int, *, steps_offset: int = 0) -> Grid:
    r"""diffusers' `timestep_spacing="leading"`: indices $(N-1-k)\lfloor T/N\rfloor + $ `steps_offset`, then the clean point.

    The top index is below $T - 1$ unless $N \mid T$ leaves no gap: the first step starts below pure noise."""
    T = _discrete_only(schedule, "leading")
    n = _positive_int(num_steps, "num_steps")
    _check_steps_vs_table(n, T, "leading")
    ratio = T // n
    indices = (np.arange(n)[::-1] * ratio).astype(np.int64) + int(steps_offset)
    return _from_indices(indices, T, "leading")


def trailing(schedule: Discrete, num_steps: int) -> Grid:
    r"""diffusers' `timestep_spacing="trailing"`: indices $\mathrm{round}(T - kT/N) - 1$, then the clean point.

    Equals `uniform` when $N \mid T$ (otherwise the indices are rounded)."""
    T = _discrete_only(schedule, "trailing")
    n = _positive_int(num_steps, "num_steps")
    _check_steps_vs_table(n, T, "trailing")
    indices = np.round(T - np.arange(n) * (T / n)).astype(np.int64) - 1
    return _from_indices(indices, T, "trailing")


def linspace(schedule: Discrete, num_steps: int) -> Grid:
    r"""diffusers' `timestep_spacing="linspace"`: indices $\mathrm{round}(\mathrm{linspace}(T-1, 0, N))$, then the clean point.

    For $N = 1$ this evaluates only at index 0 (as diffusers does)."""
    T = _discrete_only(schedule, "linspace")
    n = _positive_int(num_steps, "num_steps")
    _check_steps_vs_table(n, T, "linspace")
    indices = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    return _from_indices(indices, T, "linspace")


def loglinear_interp(levels: Float[ArrayLike, " n"], count: int) -> np.ndarray:
    r"""Resample a decreasing list of positive noise levels to `count` levels, linearly in $\log\sigma$ over a
    uniform index axis (the AYS recipe, as in NVIDIA's guide and ComfyUI). Ends are kept."""
    levels = np.asarray(levels, dtype=np.float64)
    count = _positive_int(count, "count")
    if levels.ndim != 1 or levels.shape[0] < 2 or np.any(~(levels > 0)) or np.any(np.diff(levels) >= 0):
        raise ValueError("loglinear_interp: need >= 2 strictly decreasing positive noise levels.")
    if count == 1:
        return levels[:1].copy()
    xs = np.linspace(0.0, 1.0, levels.shape[0])
    return np.exp(np.interp(np.linspace(0.0, 1.0, count), xs, np.log(levels[::-1])))[::-1].copy()


def _stable_diffusion_table() -> Discrete:
    return Discrete.from_diffusers("scaled_linear")


def align_your_steps(
    schedule: AbstractSchedule,
    num_steps: int,
    *,
    model: str = "sd15",
    transfer: str = "time",
    t_min: float = 0.0,
) -> Grid:
    r"""The published Align-Your-Steps schedule (`model="sd15"` or `"sdxl"`), resampled to `num_steps`.

    Resampling follows the authors' recipe (also ComfyUI's `AlignYourStepsScheduler`): the 11 levels are
    interpolated log-linearly to `num_steps + 1` levels; with a clean end the last one is replaced by
    $\sigma = 0$. So 10 steps on Stable Diffusion's table evaluate at the published levels 14.615 ... 0.152
    (training indices 999, 850, ..., 24) and then jump to the clean sample.

    `transfer` says how levels defined for Stable Diffusion's scaled-linear table carry to `schedule`:
    `"time"` (default) maps each level to its time on that table and uses the same times (the same
    relative training indices) on `schedule`; `"sigma"` uses the noise levels themselves (they must lie
    in `schedule`'s range).
    """
    n = _positive_int(num_steps, "num_steps")
    if model not in AYS_SIGMAS:
        raise ValueError(f"align_your_steps: model must be one of {sorted(AYS_SIGMAS)}; got {model!r}.")
    clean = is_clean(schedule, t_min)
    levels = loglinear_interp(AYS_SIGMAS[model], n + 1)
    positive = levels[:-1] if clean else levels
    if transfer == "time":
        # The published 14.615 is the table's top level (14.6146...) rounded up: clip it to t = 1.
        ts = np.asarray(time_of_sigma(_stable_diffusion_table(), positive, clip=True))
    elif transfer == "sigma":
        ell = -2.0 * np.log(positive)
        lo, hi = _log_snr(schedule, 1.0), _log_snr(schedule, t_min)
        if np.any(ell < lo) or np.any(ell > hi):
            raise ValueError(
                f"align_your_steps(transfer='sigma'): the levels {positive[0]:.4g}..{positive[-1]:.4g} fall outside "
                f"{type(schedule).__name__}'s sigma range; use transfer='time'."
            )
        ts = np.asarray(time_of_log_snr(schedule, ell, t_lo=t_min, t_hi=1.0))
    else:
        raise ValueError(f"align_your_steps: transfer must be 'time' or 'sigma'; got {transfer!r}.")
    if clean:
        ts = np.concatenate([ts, [t_min]])
    return _as_grid(ts)


def interpolate(
    ts: Float[ArrayLike, " N+1"],
    schedule: AbstractSchedule,
    num_steps: int,
) -> Grid:
    r"""Carry a grid to another step count, log-linearly in $\sigma$ (what practitioners do with AYS grids).

    The grid's positive noise levels (all of them, or all but a final clean point, which is kept) are
    resampled with `loglinear_interp` and mapped back to times on `schedule`. Needs at least 2 positive levels.
    """
    ts = np.asarray(ts, dtype=np.float64)
    n = _positive_int(num_steps, "num_steps")
    clean = is_clean(schedule, ts[-1])
    positive_t = ts[:-1] if clean else ts
    sig = np.exp(-0.5 * _log_snr(schedule, positive_t))
    if not np.all(np.isfinite(sig)):
        raise ValueError("interpolate: the grid has a point with infinite sigma (alpha_bar = 0); start below t = 1.")
    count = n if clean else n + 1
    new = loglinear_interp(sig, count)
    new_t = np.array(time_of_log_snr(schedule, -2.0 * np.log(new), t_lo=ts[-1], t_hi=ts[0]))
    new_t[0] = ts[0]  # exact ends (bisection is exact only to round-off)
    if not clean:
        new_t[-1] = ts[-1]
    return _as_grid(np.concatenate([new_t, [ts[-1]]]) if clean else new_t)


# --- integer training steps ------------------------------------------------------------------------


def training_indices(ts: Float[ArrayLike, " N+1"], schedule: Discrete, *, tol: float = 1e-6) -> np.ndarray:
    r"""The integer training indices $i = tT - 1$ of the grid's points with $t > 0$ (a final $t = 0$ is the clean
    point and is dropped). **Raises** if a point is not on a training index (use `round_to_indices`)."""
    T = _discrete_only(schedule, "training_indices")
    ts = np.asarray(ts, dtype=np.float64)
    pos = ts[ts > 0]
    frac = pos * T - 1.0
    idx = np.round(frac)
    bad = np.abs(frac - idx) > tol * T
    if np.any(bad):
        raise ValueError(
            f"grid points {pos[bad][:5].tolist()} are not on training indices (t = (i + 1)/T, T = {T}). Round the "
            "grid first: gdj.grids.round_to_indices(ts, schedule)."
        )
    return idx.astype(np.int64)


def round_to_indices(
    ts: Float[ArrayLike, " N+1"],
    schedule: Discrete,
    *,
    duplicates: str = "error",
) -> Grid:
    r"""Move every grid point with $t > 0$ to the nearest training index ($t = (i+1)/T$); a final $t = 0$ stays.

    Rounding can make neighbours coincide where the grid is finer than the table (optimized grids near
    $t = 0$, or $N$ close to $T$). `duplicates="error"` (default) raises then; `"spread"` keeps the indices
    strictly decreasing by moving each collision to the nearest free index (upward from the clean end, then
    downward from $T - 1$), which is always possible when $N \le T$. Re-score the rounded grid: rounding
    changes the law (`gdj.score_grid`).
    """
    T = _discrete_only(schedule, "round_to_indices")
    ts = np.asarray(ts, dtype=np.float64)
    if duplicates not in ("error", "spread"):
        raise ValueError(f"round_to_indices: duplicates must be 'error' or 'spread'; got {duplicates!r}.")
    clean_end = ts[-1] == 0.0
    pos = ts[:-1] if clean_end else ts
    if pos.shape[0] > T:
        raise ValueError(f"round_to_indices: {pos.shape[0]} grid points with t > 0 but only T = {T} training indices.")
    idx = np.clip(np.round(pos * T - 1.0), 0, T - 1).astype(np.int64)
    if np.any(np.diff(idx) >= 0):
        if duplicates == "error":
            dup = np.unique(idx[1:][np.diff(idx) >= 0])
            raise ValueError(
                f"rounding to training indices merges grid points at indices {dup.tolist()[:8]} (the grid is finer "
                "than the table there). Use fewer steps, or round_to_indices(..., duplicates='spread')."
            )
        for k in range(idx.shape[0] - 2, -1, -1):  # from the clean end up: i_k >= i_{k+1} + 1
            idx[k] = max(idx[k], idx[k + 1] + 1)
        idx[0] = min(idx[0], T - 1)
        for k in range(1, idx.shape[0]):  # from the top down: i_k <= i_{k-1} - 1
            idx[k] = min(idx[k], idx[k - 1] - 1)
    out = (idx + 1.0) / T
    return _as_grid(np.concatenate([out, [0.0]]) if clean_end else out)


# --- the registry ----------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[..., Grid]] = {
    "uniform": uniform,
    "quadratic": quadratic,
    "log_snr": log_snr_uniform,
    "karras": karras,
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
    "ays_sd15": functools.partial(align_your_steps, model="sd15"),
    "ays_sdxl": functools.partial(align_your_steps, model="sdxl"),
}
_DESCRIPTIONS = {
    "uniform": "uniform in the schedule's time t",
    "quadratic": "quadratic in t, dense near the data end (DDIM's 'quad')",
    "log_snr": "uniform in log-SNR (DPM-Solver's 'logSNR')",
    "karras": "Karras rho = 7 spacing of the noise levels",
    "leading": "diffusers' 'leading' spacing (Discrete tables only)",
    "trailing": "diffusers' 'trailing' spacing (Discrete tables only)",
    "linspace": "diffusers' 'linspace' spacing (Discrete tables only)",
    "ays_sd15": "Align Your Steps, Stable Diffusion 1.5's published levels, resampled",
    "ays_sdxl": "Align Your Steps, SDXL's published levels, resampled",
}
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


def available(schedule: AbstractSchedule | None = None) -> list[str]:
    """Names accepted by `make` (those that apply to `schedule` when given: diffusers' spacings need `Discrete`)."""
    names = list(_BUILDERS)
    if schedule is not None and not isinstance(schedule, Discrete):
        names = [n for n in names if n not in _DISCRETE_ONLY]
    return names


def describe(name: str) -> str:
    """One line on the grid `name` (for help texts)."""
    _check_name(name)
    return _DESCRIPTIONS[name]


def range_options(name: str) -> tuple[str, ...]:
    """Which of `t_max`, `t_min` the grid `name` takes. diffusers' spacings span their whole table (neither);
    Align Your Steps starts at its published top level (only `t_min`)."""
    _check_name(name)
    parameters = inspect.signature(_BUILDERS[name]).parameters
    return tuple(option for option in ("t_max", "t_min") if option in parameters)


def _check_name(name: str):
    if name not in _BUILDERS:
        raise ValueError(f"unknown grid {name!r}; available: {', '.join(available())}.")


def make(
    name: str,
    schedule: AbstractSchedule,
    nfe: int | None = None,
    *,
    num_steps: int | None = None,
    sampler: AbstractSampler | None = None,
    **options,
) -> Grid:
    r"""The grid `name` for `schedule`, with `num_steps` steps or as many as the NFE budget `nfe` allows.

    **Arguments:**

    - `name`: one of `available()`: `"uniform"`, `"quadratic"`, `"log_snr"`, `"karras"` ($\rho = 7$),
      `"leading"`, `"trailing"`, `"linspace"` (diffusers spacings, `Discrete` only), `"ays_sd15"`, `"ays_sdxl"`.
    - `schedule`: the model's schedule.
    - `nfe`: network-evaluation budget; the number of steps is `steps_for_nfe(sampler, nfe)`.
    - `num_steps`: the number of steps instead of `nfe` (give exactly one of them).
    - `sampler`: default `DDIM()` (1 NFE per step); only used with `nfe`.
    - `options`: passed to the builder (`t_max`, `t_min` where `range_options(name)` lists them, `t_floor`,
      `rho`, `steps_offset`, `transfer`, ...).

    **Returns:** forward times, shape `(steps + 1,)`.
    """
    _check_name(name)
    if (nfe is None) == (num_steps is None):
        raise ValueError(f"grids.make: give exactly one of nfe and num_steps; got nfe={nfe}, num_steps={num_steps}.")
    if num_steps is None:
        sampler = DDIM() if sampler is None else sampler
        t_min = float(options.get("t_min", 0.0))
        num_steps = steps_for_nfe(sampler, nfe, ends_clean=is_clean(schedule, t_min))
    return _BUILDERS[name](schedule, _positive_int(num_steps, "num_steps"), **options)
