"""The sampling problem of one run: schedules by name, time ranges, grids, evaluation (phase-1 split)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._schedule import AbstractSchedule
from ._shared import (
    CLIError,
    _gdj,
    _jax,
    _optional,
    finite,
    load_spectrum,
    make_sampler,
    nfe_to_steps,
    one_line,
)

# ----------------------------------------------------------------------------------------------
# Schedules


class SigmaFloor(AbstractSchedule):
    r"""$\sigma(t)^2 = \sigma_{\rm base}(t)^2 + \sigma_{\min}^2$: `base` lifted to start at noise level $\sigma_{\min}$.

    Carries the Euler–Lagrange optimum of the spectrum $\lambda + \sigma_{\min}^2$ to the truncated
    problem: in $\bar x = x/\sqrt{\bar\alpha}$ the probability-flow ODE only depends on $\lambda + \sigma^2$,
    so shifting $\sigma^2$ by $+\sigma_{\min}^2$ and $\lambda$ by $-\sigma_{\min}^2$ leaves it unchanged
    (an asymptotic, not an exact finite-$N$, correspondence).
    """

    base: AbstractSchedule
    log_floor: float = eqx.field(static=True)

    def log_snr(self, t):
        # -log(sigma_base^2 + sigma_min^2) = -logaddexp(-l_base, 2 log sigma_min), no overflow at sigma = inf
        return -jnp.logaddexp(-self.base.log_snr(t), self.log_floor)


class SubInterval(AbstractSchedule):
    r"""`base` on the time interval $[t_{\rm lo}, t_{\rm hi}]$, stretched to $[0, 1]$: $t \mapsto$ `base`$(t_{\rm lo} + (t_{\rm hi} - t_{\rm lo})t)$.

    Lets a `TimeWarp` (which fixes 0 and 1) reshape a schedule between two given noise levels without
    moving them.
    """

    base: AbstractSchedule
    t_lo: float = eqx.field(static=True)
    t_hi: float = eqx.field(static=True)

    def _t(self, t):
        return self.t_lo + (self.t_hi - self.t_lo) * jnp.asarray(t)

    def log_snr(self, t):
        return self.base.log_snr(self._t(t))

    def alpha_bar(self, t):
        return self.base.alpha_bar(self._t(t))

    def one_minus_alpha_bar(self, t):
        return self.base.one_minus_alpha_bar(self._t(t))

    def log_alpha_bar(self, t):
        return self.base.log_alpha_bar(self._t(t))

    def sigma(self, t):
        return self.base.sigma(self._t(t))

    def beta(self, t):
        return self.base.beta(self._t(t)) * (self.t_hi - self.t_lo)

    def alpha_bar_increment(self, t, t_next):
        return self.base.alpha_bar_increment(self._t(t), self._t(t_next))

    def log_alpha_bar_ratio(self, t, t_next):
        return self.base.log_alpha_bar_ratio(self._t(t), self._t(t_next))


SCHEDULE_HELP = {
    "linear": "linear beta 0.1 -> 20 (Song et al. VP-SDE; DDPM's table in continuous time)",
    "cosine": "Nichol-Dhariwal cosine, offset s = 0.008",
    "edm": "EDM / Karras rho = 7 noise levels between --sigma-min and --sigma-max",
    "tangent": "tangent law sigma = gamma* tan(...) with the best gamma for the divergence (MATH.md sec. 4)",
    "logsnr": "log-SNR linear in t between --sigma-max and --sigma-min",
    "euler-lagrange": "the Euler-Lagrange optimum of the DDIM leading term (spectrum shifted by sigma_min^2)",
}


def tangent_gamma_for(lam: np.ndarray, sigma_min: float, divergence: str) -> float:
    r"""$\gamma^\star$ of the tangent law for the spectrum $\lambda + \sigma_{\min}^2$ (finite for zero eigenvalues)."""
    gdj = _gdj()
    shifted = lam + sigma_min**2
    if divergence == "kl" and not np.all(shifted > 0):
        raise CLIError("the tangent law's gamma* for KL needs positive eigenvalues: use --sigma-min > 0 or --floor")
    fn = _optional("tangent_gamma")
    metric = "kl" if divergence == "kl" else "w2"
    if fn is not None:
        return float(fn(gdj.GaussianSource(shifted), metric))
    if metric == "kl":
        return float((shifted.sum() / (1.0 / shifted).sum()) ** 0.25)
    return float(np.mean(shifted**2) ** 0.25)


def make_schedule(name: str, *, lam: np.ndarray, sigma_min: float, sigma_max: float, divergence: str = "kl"):
    """The schedule called `name` (see `SCHEDULE_HELP`), set up for the noise range [sigma_min, sigma_max]."""
    gdj = _gdj()
    key = name.strip().lower()
    if key == "linear":
        return gdj.LinearBeta()
    if key == "cosine":
        return gdj.Cosine()
    if key == "edm":
        if not math.isfinite(sigma_max):
            raise CLIError("the edm schedule needs a finite --sigma-max (e.g. 80)")
        return gdj.EDM(sigma_min=sigma_min, sigma_max=sigma_max, rho=7.0)
    if key == "tangent":
        gamma = tangent_gamma_for(lam, sigma_min, divergence)
        return gdj.Tangent(gamma, sigma_min=sigma_min, sigma_max=sigma_max)
    if key == "logsnr":
        if not (math.isfinite(sigma_max) and sigma_min > 0):
            raise CLIError("the logsnr schedule needs 0 < --sigma-min and a finite --sigma-max")
        return gdj.LogSNRLinear(log_snr_max=-2 * math.log(sigma_min), log_snr_min=-2 * math.log(sigma_max))
    if key in ("euler-lagrange", "el"):
        fn = _optional("euler_lagrange_schedule")
        if fn is None:
            raise CLIError("the euler-lagrange schedule needs gaussdiff_jax.euler_lagrange_schedule (not available)")
        shifted = lam + sigma_min**2
        el = fn(gdj.GaussianSource(shifted))
        return SigmaFloor(el, 2.0 * math.log(sigma_min)) if sigma_min > 0 else el
    raise CLIError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULE_HELP)}")


def schedule_spec(name: str, schedule) -> dict:
    """A JSON description of a schedule built by `make_schedule` (enough to rebuild it)."""
    import dataclasses

    params = {}
    for field in dataclasses.fields(schedule):
        value = getattr(schedule, field.name)
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 0:
            params[field.name] = finite(float(arr))
        elif arr.size <= 4096:
            params[field.name] = [finite(float(v)) for v in arr.ravel()]
    return {"name": name, "class": type(schedule).__name__, "params": params}


# ----------------------------------------------------------------------------------------------
# Time ranges and grids


@functools.cache
def _log_snr_jit():
    # One compilation per schedule structure: every call passes the same shape.
    return eqx.filter_jit(lambda schedule, t: schedule.log_snr(t))


_PROBES = 4097


def times_of_sigmas(schedule, sigmas: Sequence[float]) -> list[float]:
    r"""The forward times $t \in [0, 1]$ at which `schedule` reaches the noise levels `sigmas` (clamped to [0, 1]).

    Three rounds of 4097-point evaluation of the log-SNR (decreasing in $t$) bracket each level to
    ~1.5e-11, then a secant step in log-SNR. Levels within round-off of the schedule's ends snap to 0 or 1.
    """
    _jax()
    log_snr = _log_snr_jit()
    grid = np.linspace(0.0, 1.0, _PROBES)
    ls = np.asarray(log_snr(schedule, jnp.asarray(grid)), dtype=np.float64)
    out = []
    for sigma in sigmas:
        if sigma == math.inf:
            out.append(1.0)
            continue
        target = -2.0 * math.log(sigma) if sigma > 0 else math.inf
        tol = 1e-9 * max(1.0, abs(target)) if math.isfinite(target) else 0.0
        if ls[0] <= target + tol:
            out.append(0.0)
            continue
        if ls[-1] >= target - tol:
            out.append(1.0)
            continue
        lo, hi, l_lo, l_hi = _bracket(grid, ls, target)
        for _ in range(2):
            fine = np.linspace(lo, hi, _PROBES)
            fine_ls = np.array(log_snr(schedule, jnp.asarray(fine)), dtype=np.float64)
            fine_ls[0], fine_ls[-1] = l_lo, l_hi
            lo, hi, l_lo, l_hi = _bracket(fine, fine_ls, target)
        if math.isfinite(l_lo) and math.isfinite(l_hi) and l_lo != l_hi:
            out.append(float(lo + (hi - lo) * (l_lo - target) / (l_lo - l_hi)))
        else:
            out.append(float(0.5 * (lo + hi)))
    return out


def _bracket(ts: np.ndarray, ls: np.ndarray, target: float):
    k = int(np.searchsorted(-ls, -target))  # first index with ls < target (ls decreasing)
    k = min(max(k, 1), ts.shape[0] - 1)
    return ts[k - 1], ts[k], ls[k - 1], ls[k]


def time_of_sigma(schedule, sigma: float) -> float:
    r"""The forward time $t \in [0, 1]$ at which `schedule` reaches noise level `sigma` (clamped to [0, 1])."""
    return times_of_sigmas(schedule, [sigma])[0]


def time_range(schedule, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """`(t_max, t_min)`: where `schedule` has noise levels `sigma_max` and `sigma_min`."""
    t_max, t_min = times_of_sigmas(schedule, [sigma_max, sigma_min])
    if not t_max > t_min:
        raise CLIError(
            f"the schedule covers no time between sigma_max={sigma_max} and sigma_min={sigma_min}: "
            "check --sigma-min < --sigma-max"
        )
    return t_max, t_min


GRID_HELP = {
    "uniform": "uniform in the schedule's time t",
    "quadratic": "quadratic in t (dense near the data end)",
    "log_snr": "uniform in log-SNR",
    "karras": "Karras rho = 7 spacing of the noise levels",
}


def make_grid(name: str, schedule, steps: int, t_max: float, t_min: float) -> np.ndarray:
    """The named grid of `steps` steps on `schedule` between `t_max` and `t_min` (forward times, decreasing)."""
    key = name.strip().lower()
    if key == "uniform":
        return np.linspace(t_max, t_min, steps + 1)
    if key == "quadratic":
        return t_min + (t_max - t_min) * (1.0 - np.arange(steps + 1) / steps) ** 2
    builders = {"log_snr": "log_snr_uniform", "karras": "karras"}
    if key not in builders:
        raise CLIError(f"unknown grid {name!r}; choose one of: {', '.join(GRID_HELP)}")
    grids = _optional("grids")
    if grids is None or not hasattr(grids, builders[key]):
        raise CLIError(f"the {key} grid needs gaussdiff_jax.grids (not available in this installation)")
    try:
        return np.asarray(getattr(grids, builders[key])(schedule, steps, t_max=t_max, t_min=t_min), dtype=np.float64)
    except ValueError as error:
        raise CLIError(one_line(error)) from None


def parse_times(text: str) -> np.ndarray:
    """A custom grid: comma-separated forward times, or a `.npy` / `.json` file holding them."""
    path = Path(text)
    try:
        if path.suffix == ".npy" and path.is_file():
            ts = np.load(path, allow_pickle=False)
        elif path.suffix == ".json" and path.is_file():
            doc = json.loads(path.read_text())
            ts = doc["times"] if isinstance(doc, dict) else doc
        else:
            ts = [float(x) for x in text.replace(" ", "").split(",") if x]
        ts = np.asarray(ts, dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CLIError(f"cannot read --times {text!r} ({one_line(error)}): give e.g. --times 1,0.5,0.1,0.001") from None
    gdj = _gdj()
    try:
        gdj.validate_grid(ts)
    except ValueError as error:
        raise CLIError(f"--times: {one_line(error)}") from None
    return ts


# ----------------------------------------------------------------------------------------------
# Evaluation (jitted once per sampler / schedule structure / grid length)


def _law(source, schedule, sampler, ts, init):
    gdj = _gdj()
    closed_form = _optional("ddim_law")
    if closed_form is not None and isinstance(sampler, gdj.DDIM) and float(sampler.eta) == 0.0:
        return closed_form(source, schedule, ts, init=init)
    return gdj.sample_law(source, schedule, sampler, ts, init=init)


def _errors_impl(source, schedule, ts, sampler, init, target, direction, with_kl):
    gdj = _gdj()
    law = _law(source, schedule, sampler, ts, init)
    out = {"w2": gdj.w2(source, law, target=target), "sigmas": schedule.sigma(ts)}
    if with_kl:
        out["kl"] = gdj.kl(source, law, target=target, direction=direction)
    return out


def _many_impl(source, pairs, sampler, init, target, direction, with_kl):
    return [
        _errors_impl(source, schedule, ts, sampler, init, target, direction, flag)
        for (schedule, ts), flag in zip(pairs, with_kl)
    ]


@functools.cache
def _many_jit():
    # Several (schedule, grid) pairs in one compiled program: one compilation instead of one per pair.
    return eqx.filter_jit(_many_impl)


def _kl_defined(lam: np.ndarray, schedule, ts: np.ndarray, target: str) -> bool:
    if np.all(lam > 0):
        return True
    if target == "truncated":
        _jax()
        return float(schedule.one_minus_alpha_bar(jnp.asarray(ts[-1]))) > 0
    return False


def evaluate_many(source, sampler, items, *, init="standard", target="truncated", direction="target_to_sample"):
    """KL and W2 of `sampler` on `source` for each `(schedule, ts)` in `items`, compiled together.

    **Returns:** a list with, per item, `{"kl": float | None, "w2": float}` (KL is `None` where the
    target is singular) or a `CLIError` with the engine's message (e.g. a sampler in t on a schedule
    with infinite beta). A failing item is isolated by re-running the items one by one.
    """
    _jax()
    lam = np.asarray(source.eigenvalues)
    dtype = source.eigenvalues.dtype
    flags = tuple(_kl_defined(lam, schedule, np.asarray(ts), target) for schedule, ts in items)
    pairs = [(schedule, jnp.asarray(ts, dtype=dtype)) for schedule, ts in items]
    try:
        outs = _many_jit()(source, pairs, sampler, init, target, direction, flags)
        return [
            {
                "kl": float(o["kl"]) if flag else None,
                "w2": float(o["w2"]),
                "sigmas": [finite(float(v)) for v in np.asarray(o["sigmas"])],
            }
            for o, flag in zip(outs, flags)
        ]
    except (ValueError, RuntimeError, FloatingPointError) as error:
        if len(items) == 1:
            return [CLIError(one_line(error))]
    return [evaluate_many(source, sampler, [item], init=init, target=target, direction=direction)[0] for item in items]


def evaluate(source, schedule, sampler, ts, *, init="standard", target="truncated", direction="target_to_sample"):
    """KL and W2 of `sampler` on `source` along `ts` (see `evaluate_many`); raises the `CLIError`."""
    (result,) = evaluate_many(source, sampler, [(schedule, ts)], init=init, target=target, direction=direction)
    if isinstance(result, CLIError):
        raise result
    return result


def per_mode_errors(source, schedule, sampler, ts, *, init, target, direction, with_kl):
    gdj = _gdj()
    _jax()
    law = _law(source, schedule, sampler, jnp.asarray(ts, dtype=source.eigenvalues.dtype), init)
    out = {"w2_squared": np.asarray(gdj.w2_squared(source, law, target=target, reduce=False))}
    if with_kl:
        out["kl"] = np.asarray(gdj.kl(source, law, target=target, direction=direction, reduce=False))
    return out


# ----------------------------------------------------------------------------------------------
# Problem setup shared by eval / optimize / compare / sweep


class Problem:
    """The spectrum, sampler and noise range of one run, with the schedules and grids built on it."""

    def __init__(self, args, *, spectrum: str | None = None, sampler: str | None = None):
        self.args = args
        self.label, self.raw = load_spectrum(spectrum or args.spectrum)
        if args.floor is not None and not args.floor > 0:
            raise CLIError(f"--floor must be > 0; got {args.floor}")
        self.floor = args.floor
        self.source = source_of(self.raw, args.floor)
        self.lam = np.asarray(self.source.eigenvalues, dtype=np.float64)
        self.sampler_name, self.sampler = make_sampler(sampler or args.sampler, args.eta)
        self.sigma_min, self.sigma_max = float(args.sigma_min), float(args.sigma_max)
        if not (0 <= self.sigma_min < self.sigma_max):
            raise CLIError(f"need 0 <= --sigma-min < --sigma-max; got {self.sigma_min}, {self.sigma_max}")
        self.init = args.init
        self.target = args.target or ("truncated" if self.sigma_min > 0 else "data")
        self.direction = args.direction
        self.divergence = getattr(args, "divergence", "kl")

    def schedule(self, name: str):
        try:
            return make_schedule(
                name, lam=self.lam, sigma_min=self.sigma_min, sigma_max=self.sigma_max, divergence=self.divergence
            )
        except ValueError as error:
            raise CLIError(one_line(error)) from None

    def steps(self, nfe: int) -> int:
        return nfe_to_steps(self.sampler, nfe, ends_clean=self.sigma_min == 0)

    def grid(self, schedule, grid: str, steps: int) -> np.ndarray:
        t_max, t_min = time_range(schedule, self.sigma_min, self.sigma_max)
        return make_grid(grid, schedule, steps, t_max, t_min)

    def evaluate(self, schedule, ts):
        return evaluate(
            self.source, schedule, self.sampler, ts, init=self.init, target=self.target, direction=self.direction
        )

    def evaluate_many(self, items):
        return evaluate_many(
            self.source, self.sampler, items, init=self.init, target=self.target, direction=self.direction
        )

    def describe(self) -> dict:
        return {
            "sampler": self.sampler_name,
            "eta": float(self.args.eta),
            "init": self.init,
            "target": self.target,
            "direction": self.direction,
            "sigma_min": self.sigma_min,
            "sigma_max": finite(self.sigma_max),
        }


def _sigmas_of(schedule, ts) -> list:
    _jax()
    return [finite(float(s)) for s in np.asarray(schedule.sigma(jnp.asarray(ts)))]


def source_of(eigenvalues: np.ndarray, floor: float | None):
    lam = eigenvalues if floor is None else np.maximum(eigenvalues, floor)
    return _gdj().GaussianSource(lam)


def problem_for(args, spectrum: str | None, sampler_name: str) -> Problem:
    """A `Problem` for one sampler of a list (`--eta` only applies to ddim)."""
    saved = args.eta
    try:
        if sampler_name.strip().lower() != "ddim":
            args.eta = 0.0
        return Problem(args, spectrum=spectrum, sampler=sampler_name)
    finally:
        args.eta = saved
