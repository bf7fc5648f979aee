r"""Grids for diffusers' spacings that `gdj.grids` had no builder for, and the initial variance of sigma-space starts.

All are recomputed here from the schedule alone (no diffusers import), as diffusers 0.42 computes them:

- `euler_linspace`: the Euler family's default (`EulerDiscreteScheduler`, `EulerAncestral`, `Heun`, `LMS`, `KDPM2`
  with `timestep_spacing="linspace"`): fractional timesteps `np.linspace(0, T - 1, N, dtype=float32)` and
  $\sigma$ interpolated *linearly in* $\sigma$ between the table's entries (not in log-SNR as `Discrete` does),
  then $\sigma = 0$.
- `multistep_spacing` (`"multistep_linspace"`, `"multistep_leading"`, `"multistep_trailing"`): the spacings of
  `DPMSolverMultistep`, `DPMSolverSinglestep`, `UniPC` and `DEIS`, which differ from DDIM/DDPM's: linspace is
  `round(linspace(0, T - 1, N + 1))[::-1][:-1]` (it never evaluates index 0), leading uses the stride
  $\lfloor T/(N+1)\rfloor$; then $\sigma = 0$ (`final_sigmas_type="zero"`) or training index 0 (`"sigma_min"`).
- `flow_match`: `FlowMatchEulerDiscreteScheduler`'s default on `RectifiedFlow(shift)`: its levels are
  $s_k = \mathrm{shift}(u_k)$ with $u_k$ uniform from 1 to $\mathrm{shift}(1/T)$ (the shift is applied to the already
  shifted smallest training sigma: twice), i.e. **times uniform from 1 to $\mathrm{shift}(1/T)$**, then 0; a grid
  uniform from 1 to $1/T$ is what a single shift would give.
- `beta_sigmas`: `use_beta_sigmas=True` (Lee et al. 2024),
  $\sigma = \sigma_{\min} + F^{-1}_{\rm Beta(0.6, 0.6)}(1 - k/(N-1))(\sigma_{\max} - \sigma_{\min})$ between the
  table's ends (needs scipy). `use_karras_sigmas` is `gdj.grids.karras` and `use_exponential_sigmas` /
  `use_lu_lambdas` are `gdj.grids.log_snr_uniform`, between the same ends, for the linspace spacings.

These builders are functions of `gdj.grids`; they are not in `gdj.grids.make` / `available` (whose default set
`score_grids` scores, and which has no way yet to say that `flow_match` needs a `RectifiedFlow` or that
`beta_sigmas` needs scipy).

`init_noise_variance` gives `sample_law`'s `init` for pipelines that start from `init_noise_sigma * randn` in sigma
(VE) units: $c = \mathrm{init\_noise\_sigma}^2\,\bar\alpha(t_0)$, i.e. $1 - \bar\alpha(t_0)$ for
`init_noise_sigma` $= \sigma_{\max}$ (Euler-type schedulers with linspace/trailing spacing) and 1 for
$\sqrt{\sigma_{\max}^2 + 1}$ (leading).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from .._schedule import AbstractSchedule, Discrete, RectifiedFlow
from ._grid import Grid, _as_grid, _check_steps_vs_table, _discrete_only, _positive_int


def _table_sigmas(schedule: Discrete) -> np.ndarray:
    ab = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - ab) / ab)


def _times_of_sigmas(schedule: Discrete, sigmas: np.ndarray) -> np.ndarray:
    """Times on `schedule` of VE levels `sigmas` (knots exactly; in between by inverting the log-SNR interpolation)."""
    from ._diffusers import times_on_discrete

    return times_on_discrete(schedule, _table_sigmas(schedule), np.asarray(sigmas, dtype=np.float64))


def euler_linspace(schedule: Discrete, num_steps: int) -> Grid:
    r"""The Euler family's `timestep_spacing="linspace"`: $\sigma$ linear between training indices at the fractional
    timesteps `np.linspace(0, T - 1, N, dtype=float32)[::-1]`, then the clean point (module docstring)."""
    T = _discrete_only(schedule, "euler_linspace")
    n = _positive_int(num_steps, "num_steps")
    _check_steps_vs_table(n, T, "euler_linspace")
    timesteps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    sigmas = np.interp(timesteps, np.arange(T), _table_sigmas(schedule))
    return _as_grid(np.concatenate([_times_of_sigmas(schedule, sigmas), [0.0]]))


def multistep_indices(
    num_train_timesteps: int,
    num_steps: int,
    spacing: str = "linspace",
    *,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    r"""The training indices of `DPMSolverMultistep` / `UniPC` / `DEIS` / `DPMSolverSinglestep` for a spacing.

    `last_timestep` is $T$ minus the indices clipped by `lambda_min_clipped` (default $T$: no clipping)."""
    T = int(num_train_timesteps)
    n = _positive_int(num_steps, "num_steps")
    last = T if last_timestep is None else int(last_timestep)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + int(steps_offset)
    if spacing == "trailing":
        return np.arange(last, 0, -T / n).round().astype(np.int64) - 1
    raise ValueError(f"spacing must be 'linspace', 'leading' or 'trailing'; got {spacing!r}.")


def multistep_spacing(
    schedule: Discrete,
    num_steps: int,
    *,
    spacing: str = "linspace",
    steps_offset: int = 0,
    final: str = "zero",
) -> Grid:
    r"""`DPMSolverMultistep` / `UniPC` / `DEIS` / `DPMSolverSinglestep` timesteps on a `Discrete` table, then the
    clean point (`final="zero"`) or training index 0 (`final="sigma_min"`)."""
    T = _discrete_only(schedule, f"multistep_{spacing}")
    n = _positive_int(num_steps, "num_steps")
    _check_steps_vs_table(n, T, f"multistep_{spacing}")
    idx = multistep_indices(T, n, spacing, steps_offset=steps_offset)
    if np.any(np.diff(idx) >= 0) or idx.min() < 0 or idx.max() >= T:
        raise ValueError(
            f"multistep_{spacing}: {n} steps give indices {idx.tolist()} that are not strictly decreasing."
        )
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"final must be 'zero' or 'sigma_min'; got {final!r}.")
    end = 0.0 if final == "zero" else 1.0 / T
    ts = np.concatenate([(idx + 1.0) / T, [end]])
    return _as_grid(ts if ts[-2] > ts[-1] else ts[:-1])


def flow_match(schedule: RectifiedFlow, num_steps: int, *, num_train_timesteps: int = 1000) -> Grid:
    r"""`FlowMatchEulerDiscreteScheduler(shift=k)`'s default grid on `RectifiedFlow(k)`: times uniform from 1 to
    $\mathrm{shift}(1/T) = k/(T + k - 1)$ (the doubly shifted last level; module docstring), then 0."""
    if not isinstance(schedule, RectifiedFlow):
        raise ValueError(  # noqa: TRY004
            "flow_match is FlowMatchEulerDiscreteScheduler's grid on a RectifiedFlow schedule; got "
            f"{type(schedule).__name__}."
        )
    n = _positive_int(num_steps, "num_steps")
    T = _positive_int(num_train_timesteps, "num_train_timesteps")
    k = float(schedule.shift)
    # diffusers holds sigma_min = shift(1/T) in float32 and spaces its timesteps T * sigma in float64.
    # diffusers holds sigma_min = shift(1/T) computed in float32, and spaces its timesteps T * sigma in float64.
    s = np.float32(1.0) / np.float32(T)
    low = float(np.float32(k) * s / (np.float32(1.0) + np.float32(k - 1.0) * s))
    return _as_grid(np.concatenate([np.linspace(float(T), T * low, n) / T, [0.0]]))


def beta_sigmas(
    schedule: Discrete, num_steps: int, *, alpha: float = 0.6, beta: float = 0.6, t_max: float = 1.0, t_floor=None
) -> Grid:
    r"""`use_beta_sigmas=True`: levels $\sigma_{\min} + F^{-1}(1 - k/(N - 1))(\sigma_{\max} - \sigma_{\min})$ with
    $F$ the Beta(`alpha`, `beta`) CDF, between $\sigma(t_{\max})$ and $\sigma(t_{\rm floor})$ (default: training
    index 0), then 0. Needs scipy."""
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover
        raise ValueError("beta_sigmas needs scipy (pip install scipy).") from None
    T = _discrete_only(schedule, "beta_sigmas")
    n = _positive_int(num_steps, "num_steps")
    floor = 1.0 / T if t_floor is None else float(t_floor)
    s_max, s_min = (float(schedule.sigma(jnp.asarray(t))) for t in (t_max, floor))
    ppf = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    sigmas = s_min + ppf * (s_max - s_min)
    return _as_grid(np.concatenate([_times_of_sigmas(schedule, sigmas), [0.0]]))


def init_noise_variance(schedule: AbstractSchedule, t0, init_noise_sigma: float | str = "sigma_max") -> float:
    r"""`sample_law`'s `init` (VP variance $c$) for a pipeline starting from `init_noise_sigma * randn` in VE units:
    $c = \mathrm{init\_noise\_sigma}^2\,\bar\alpha(t_0)$. `"sigma_max"` (Euler-type schedulers with linspace or
    trailing spacing) gives $1 - \bar\alpha(t_0)$; `"sqrt(sigma_max^2+1)"` (leading) gives 1."""
    ab = float(schedule.alpha_bar(jnp.asarray(t0)))
    if init_noise_sigma == "sigma_max":
        return float(schedule.one_minus_alpha_bar(jnp.asarray(t0)))
    if init_noise_sigma == "sqrt(sigma_max^2+1)":
        return 1.0
    value = float(init_noise_sigma)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            "init_noise_sigma must be 'sigma_max', 'sqrt(sigma_max^2+1)' or a positive number; got "
            f"{init_noise_sigma!r}."
        )
    return value**2 * ab
