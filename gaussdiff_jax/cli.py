r"""The `gaussdiff` command: exact sampler errors and schedule optimization from the shell.

Subcommands (run `gaussdiff <subcommand> --help` for the options of each):

- `eval`: the exact KL / W2 error of one sampler with one schedule and time grid on a spectrum.
- `optimize`: optimize a time grid (or a schedule) for the exact KL or W2; prints a table against
  baselines, writes `result.json` and `schedule.png`.
- `compare`: a table of samplers x NFE budgets x schedules (printed, saved as CSV and PNG).
- `sweep`: a large product of cases written line by line to a JSON-lines file; rerunning the same
  command resumes where it stopped.
- `export`: turn a grid (from `optimize`, or a named schedule and grid) into diffusers timesteps or
  sigmas, k-diffusion / ComfyUI sigmas, or JSON.

Every subcommand works on a Gaussian "data" law given by its covariance spectrum: a bundled name
(`gdj.spectra.available()`, e.g. `cifar10`) or a `.npy` / `.txt` file of eigenvalues. User errors
(a malformed spectrum file, an unknown name, a non-monotone grid) print one line on stderr and exit
with code 2.

**The common problem.** All candidates run from `--sigma-max` down to `--sigma-min` (noise levels
$\sigma = \sqrt{(1-\bar\alpha)/\bar\alpha}$, default the EDM range 80 -> 0.002), start from
$x \sim \mathcal N(0, I)$ (`--init standard`) and are scored against $p_{\sigma_{\min}}$
(`--target truncated`): with `sigma_min > 0` the KL stays finite even though CIFAR-10 has 9 zero
eigenvalues. On each schedule the grid spans the times $t(\sigma_{\max}) \ge t \ge t(\sigma_{\min})$
(clamped to $[0, 1]$).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._schedule import AbstractSchedule

PROG = "gaussdiff"
EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------
# float64 is switched on before the first computation (the package creates no arrays when imported).


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


@functools.cache
def _gdj():
    _jax()
    import gaussdiff_jax

    return gaussdiff_jax


def _optional(name: str):
    """A public name of gaussdiff_jax that another part of the package provides, or None."""
    return getattr(_gdj(), name, None)


# ----------------------------------------------------------------------------------------------
# Spectra


def load_spectrum(spec: str) -> tuple[str, np.ndarray]:
    """A bundled spectrum name or a path to a `.npy` / `.txt` / `.csv` file of eigenvalues.

    **Returns:** `(label, eigenvalues)` with eigenvalues a float64 array of shape `(d,)`.
    **Raises:** `CLIError` with what to do, for unknown names and malformed files.
    """
    gdj = _gdj()
    if spec in gdj.spectra.available():
        return spec, np.asarray(gdj.spectra.load(spec), dtype=np.float64)
    path = Path(spec)
    if not path.suffix:
        raise CLIError(
            f"unknown spectrum {spec!r}: give a bundled name ({', '.join(gdj.spectra.available())}) "
            "or a .npy / .txt file of covariance eigenvalues"
        )
    if not path.is_file():
        raise CLIError(f"spectrum file {spec!r} not found (bundled names: {', '.join(gdj.spectra.available())})")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix in (".txt", ".csv"):
            data = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=1)
        else:
            raise CLIError(f"spectrum file {spec!r}: unsupported extension {path.suffix!r} (use .npy, .txt or .csv)")
    except CLIError:
        raise
    except (OSError, ValueError, EOFError) as error:  # what numpy raises for unreadable files
        reason = _one_line(error).split(". ")[0]
        raise CLIError(
            f"cannot read spectrum file {spec!r} as {'a .npy array' if path.suffix == '.npy' else 'numbers'} "
            f"({reason}): save the eigenvalues with numpy.save('spectrum.npy', eigenvalues)"
        ) from None
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise CLIError(f"spectrum file {spec!r} holds {data.dtype} data; expected real eigenvalues")
    data = data.astype(np.float64)
    if data.ndim != 1 or data.size == 0:
        raise CLIError(
            f"spectrum file {spec!r} has shape {data.shape}; expected a non-empty 1-D array of eigenvalues "
            "(for a covariance matrix C, save numpy.linalg.eigvalsh(C))"
        )
    if not np.all(np.isfinite(data)):
        raise CLIError(f"spectrum file {spec!r} contains NaN or infinite values")
    if np.any(data < 0):
        raise CLIError(
            f"spectrum file {spec!r} has {int(np.sum(data < 0))} negative eigenvalue(s) (min {data.min():.3g}); "
            "clamp round-off with numpy.maximum(eigenvalues, 0)"
        )
    return path.stem, data


def _source(eigenvalues: np.ndarray, floor: float | None):
    gdj = _gdj()
    lam = eigenvalues if floor is None else np.maximum(eigenvalues, floor)
    return gdj.GaussianSource(lam)


def _spectrum_info(label: str, lam: np.ndarray, floor: float | None) -> dict:
    return {
        "name": label,
        "dim": int(lam.shape[0]),
        "num_zero": int(np.sum(lam == 0)),
        "trace": float(lam.sum()),
        "min": float(lam.min()) + 0.0,  # no "-0.0" for clamped round-off
        "max": float(lam.max()),
        "floor": floor,
    }


# ----------------------------------------------------------------------------------------------
# Samplers


def _sampler_table() -> dict[str, tuple[str, Callable[[float], Any]]]:
    gdj = _gdj()
    return {
        "ddim": ("DDIM (eta from --eta, default 0: deterministic)", lambda eta: gdj.DDIM(eta=eta)),
        "ddpm": ("DDPM ancestral, Ho et al. discrete betas", lambda eta: gdj.DDPM()),
        "ddpm-pg": ("DDPM ancestral, Pierret-Galerne linearized form", lambda eta: gdj.DDPM(beta="linearized")),
        "euler": ("Euler on the probability-flow ODE in t", lambda eta: gdj.Euler()),
        "heun": ("Heun (trapezoid) on the probability-flow ODE in t", lambda eta: gdj.Heun()),
        "rk4": ("classical Runge-Kutta 4 on the probability-flow ODE in t", lambda eta: gdj.RK4()),
        "em": ("Euler-Maruyama on the reverse SDE", lambda eta: gdj.EulerMaruyama()),
        "ei": ("exponential integrator on the reverse SDE", lambda eta: gdj.ExponentialIntegrator()),
        "edm-heun": ("EDM's Heun in sigma (Karras et al.)", lambda eta: gdj.EDMHeun()),
    }


_SAMPLER_ALIASES = {
    "eulermaruyama": "em",
    "euler-maruyama": "em",
    "exponentialintegrator": "ei",
    "edmheun": "edm-heun",
    "edm_heun": "edm-heun",
    "ddpm_pg": "ddpm-pg",
}


def make_sampler(name: str, eta: float = 0.0):
    """The sampler called `name` (case-insensitive; see `gaussdiff eval --help`)."""
    table = _sampler_table()
    key = name.strip().lower()
    key = _SAMPLER_ALIASES.get(key, key)
    if key not in table:
        raise CLIError(f"unknown sampler {name!r}; choose one of: {', '.join(table)}")
    if key != "ddim" and eta != 0.0:
        raise CLIError(f"--eta applies to the ddim sampler only (got --eta {eta} with {name!r})")
    if not 0.0 <= eta <= 1.0:
        raise CLIError(f"--eta must lie in [0, 1]; got {eta}")
    return key, table[key][1](float(eta))


def _sigma_sampler(sampler) -> bool:
    """Samplers that see only the noise levels at the grid points (not beta(t))."""
    gdj = _gdj()
    return isinstance(sampler, (gdj.DDIM, gdj.EDMHeun))


def _nfe_to_steps(sampler, nfe: int, ends_clean: bool) -> int:
    gdj = _gdj()
    grids = _optional("grids")
    if nfe < 1:
        raise CLIError(f"--nfe must be a positive integer; got {nfe}")
    if grids is not None and hasattr(grids, "steps_for_nfe"):
        try:
            return int(grids.steps_for_nfe(sampler, nfe, ends_clean=ends_clean))
        except ValueError as error:
            raise CLIError(_one_line(error)) from None
    cost = 4 if isinstance(sampler, gdj.RK4) else 2 if isinstance(sampler, (gdj.Heun, gdj.EDMHeun)) else 1
    steps = (nfe + 1) // 2 if isinstance(sampler, gdj.EDMHeun) and ends_clean else nfe // cost
    if steps < 1:
        raise CLIError(f"an NFE budget of {nfe} is below one step of this sampler ({cost} NFE)")
    return steps


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
            params[field.name] = _finite(float(arr))
        elif arr.size <= 4096:
            params[field.name] = [_finite(float(v)) for v in arr.ravel()]
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
        raise CLIError(_one_line(error)) from None


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
        raise CLIError(
            f"cannot read --times {text!r} ({_one_line(error)}): give e.g. --times 1,0.5,0.1,0.001"
        ) from None
    gdj = _gdj()
    try:
        gdj.validate_grid(ts)
    except ValueError as error:
        raise CLIError(f"--times: {_one_line(error)}") from None
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
                "sigmas": [_finite(float(v)) for v in np.asarray(o["sigmas"])],
            }
            for o, flag in zip(outs, flags)
        ]
    except (ValueError, RuntimeError, FloatingPointError) as error:
        if len(items) == 1:
            return [CLIError(_one_line(error))]
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
# Output helpers


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _fmt(x: float | None, digits: int = 6) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def _write_json(path: Path, doc: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _one_line(error: BaseException) -> str:
    """The user-facing message of an exception, on one line (equinox runtime errors included)."""
    text = str(error)
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.split(marker, 1)[1].split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text or type(error).__name__


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, quiet: bool = False):
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(100, 20 * len(columns)))
    console.print(title, markup=False, highlight=False)
    console.print(table)


def _say(args, text: str):
    if not getattr(args, "quiet", False):
        print(text, flush=True)


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
        self.source = _source(self.raw, args.floor)
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
            raise CLIError(_one_line(error)) from None

    def steps(self, nfe: int) -> int:
        return _nfe_to_steps(self.sampler, nfe, ends_clean=self.sigma_min == 0)

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
            "sigma_max": _finite(self.sigma_max),
        }


def _sigmas_of(schedule, ts) -> list:
    _jax()
    return [_finite(float(s)) for s in np.asarray(schedule.sigma(jnp.asarray(ts)))]


# ----------------------------------------------------------------------------------------------
# eval


def cmd_eval(args) -> int:
    problem = Problem(args)
    schedule = problem.schedule(args.schedule)
    if args.times is not None:
        ts = parse_times(args.times)
        steps = ts.shape[0] - 1
    else:
        steps = args.steps if args.steps is not None else problem.steps(args.nfe)
        ts = problem.grid(schedule, args.grid, steps)
    source, ts_eval = problem.source, ts
    if args.float32:
        gdj = _gdj()
        source, schedule_eval = gdj.cast(source, jnp.float32), gdj.cast(schedule, jnp.float32)
        ts_eval = np.asarray(ts, dtype=np.float32)
    else:
        schedule_eval = schedule
    errors = evaluate(
        source,
        schedule_eval,
        problem.sampler,
        ts_eval,
        init=problem.init,
        target=problem.target,
        direction=problem.direction,
    )
    doc = {
        "command": "eval",
        "spectrum": _spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": problem.describe(),
        "schedule": schedule_spec(args.schedule, schedule),
        "grid": args.grid if args.times is None else "custom",
        "num_steps": int(steps),
        "nfe": _nfe_of(problem.sampler, schedule, ts),
        "times": [float(t) for t in ts],
        "sigmas": _sigmas_of(schedule, ts),
        "dtype": "float32" if args.float32 else "float64",
        "kl": _finite(errors["kl"]) if errors["kl"] is not None else None,
        "w2": _finite(errors["w2"]),
    }
    _print_table(
        f"{problem.sampler_name} on {problem.label} (d={problem.raw.shape[0]}), target {problem.target}, init {problem.init}",
        ["schedule", "grid", "steps", "NFE", "KL", "W2"],
        [[args.schedule, doc["grid"], str(steps), str(doc["nfe"]), _fmt(doc["kl"]), _fmt(doc["w2"])]],
        quiet=args.quiet,
    )
    if errors["kl"] is None:
        _say(args, "KL is infinite here (a zero eigenvalue against a singular target): use --sigma-min > 0 or --floor.")
    if args.out is not None:
        out = Path(args.out)
        _write_json(out / "eval.json", doc)
        with_kl = errors["kl"] is not None
        per_mode = per_mode_errors(
            problem.source,
            schedule,
            problem.sampler,
            ts,
            init=problem.init,
            target=problem.target,
            direction=problem.direction,
            with_kl=with_kl,
        )
        from ._plot import plot_error_spectrum

        key = "kl" if with_kl else "w2_squared"
        plot_error_spectrum(
            problem.lam,
            {f"{problem.sampler_name}, {args.schedule}, {steps} steps": per_mode[key]},
            quantity="KL" if with_kl else "W2^2",
            title=f"Per-eigenvalue error, {problem.label}",
            path=out / "error_spectrum.png",
        )
        _say(args, f"wrote {out / 'eval.json'} and {out / 'error_spectrum.png'}")
    return 0


def _nfe_of(sampler, schedule, ts) -> int:
    grids = _optional("grids")
    if grids is not None and hasattr(grids, "num_evaluations"):
        try:
            return int(grids.num_evaluations(sampler, ts, schedule))
        except ValueError:
            pass
    gdj = _gdj()
    cost = 4 if isinstance(sampler, gdj.RK4) else 2 if isinstance(sampler, (gdj.Heun, gdj.EDMHeun)) else 1
    return cost * (len(ts) - 1)


# ----------------------------------------------------------------------------------------------
# optimize


BASELINES = ("linear", "cosine", "edm", "tangent", "euler-lagrange")


def _optimizer(args):
    import optax

    if args.optimizer == "adam":
        # Grid logits tolerate large steps; time-warp logits act through interpolation and need smaller ones.
        lr = args.lr if args.lr is not None else (0.2 if args.param == "grid" else 0.05)
        return optax.adam(optax.cosine_decay_schedule(lr, max(args.iterations, 1))), {"learning_rate": lr}
    if args.optimizer == "lbfgs":
        return optax.lbfgs(), {}
    raise CLIError(f"unknown optimizer {args.optimizer!r}; choose adam or lbfgs")


def _trainable(module):
    """Only the learnable grid's or the time warp's logits are trained (never the base schedule's parameters)."""
    gdj = _gdj()
    spec = jax_tree_map_false(module)
    if isinstance(module, gdj.LearnableGrid):
        return eqx.tree_at(lambda m: m.logits, spec, True)
    return eqx.tree_at(lambda m: m.warp.logits, spec, True)


def jax_tree_map_false(tree):
    return _jax().tree_util.tree_map(lambda _: False, tree)


def cmd_optimize(args) -> int:
    gdj = _gdj()
    _jax()
    start = time.perf_counter()
    problem = Problem(args)
    if args.steps is not None:
        steps = int(args.steps)
        if steps < 1:
            raise CLIError(f"--steps must be >= 1; got {steps}")
    else:
        steps = problem.steps(args.nfe)
    base_name = args.schedule or ("tangent" if _sigma_sampler(problem.sampler) else "linear")
    base = problem.schedule(base_name)
    t_max, t_min = time_range(base, problem.sigma_min, problem.sigma_max)
    source, sampler, init, target, direction = (
        problem.source,
        problem.sampler,
        problem.init,
        problem.target,
        problem.direction,
    )
    if args.divergence == "kl" and not _kl_defined(problem.lam, base, np.array([t_max, t_min]), target):
        raise CLIError(
            "KL against a singular target (zero eigenvalues, sigma_min = 0): use --sigma-min > 0, --floor, "
            "or --divergence w2"
        )

    def divergence(law):
        if args.divergence == "kl":
            return gdj.kl(source, law, target=target, direction=direction)
        return gdj.w2_squared(source, law, target=target)

    if args.param == "grid":
        module = gdj.LearnableGrid(steps, t_max, t_min)

        def loss(grid):
            return divergence(_law(source, base, sampler, grid.times(), init))

    elif args.param == "schedule":
        if args.knots < 1:
            raise CLIError(f"--knots must be >= 1; got {args.knots}")
        # The warp reshapes the base between t(sigma_max) and t(sigma_min), which stay fixed.
        module = gdj.WarpedSchedule(SubInterval(base, t_min, t_max), gdj.TimeWarp(args.knots))
        uniform_ts = jnp.asarray(np.linspace(1.0, 0.0, steps + 1))

        def loss(schedule):
            return divergence(_law(source, schedule, sampler, uniform_ts, init))

    else:
        raise CLIError(f"unknown --param {args.param!r}; choose grid or schedule")

    optimizer, opt_info = _optimizer(args)
    _say(
        args,
        f"Optimizing the {'time grid' if args.param == 'grid' else 'schedule (time warp)'} of {problem.sampler_name} "
        f"with {steps} steps on {problem.label} (d={problem.raw.shape[0]}) for {args.divergence.upper()} "
        f"to {'p_sigma_min' if target == 'truncated' else 'p_0'}; sigma {_fmt(problem.sigma_max, 4)} -> "
        f"{_fmt(problem.sigma_min, 4)}, base schedule {base_name}.",
    )
    opt_start = time.perf_counter()
    try:
        result = gdj.optimize(
            loss,
            module,
            optimizer=optimizer,
            steps=args.iterations,
            progress=not args.quiet and not args.no_progress,
            filter_spec=_trainable(module),
        )
    except FloatingPointError as error:
        raise CLIError(_one_line(error)) from None
    opt_seconds = time.perf_counter() - opt_start
    if not result.losses[-1] <= result.losses[0]:
        # Never report a result worse than the starting point (e.g. a too large learning rate).
        sys.stderr.write(
            f"{PROG} optimize: warning: the loss rose from {result.losses[0]:.6g} to {result.losses[-1]:.6g}; "
            "keeping the starting point (try a smaller --lr or more --iterations)\n"
        )
        result = type(result)(module, result.losses)
    if args.param == "grid":
        opt_schedule, opt_ts = base, np.asarray(result.module.times(), dtype=np.float64)
        opt_spec = schedule_spec(base_name, base)
    else:
        opt_schedule, opt_ts = result.module, np.linspace(1.0, 0.0, steps + 1)
        opt_spec = {
            "name": f"warped-{base_name}",
            "class": "WarpedSchedule",
            "base": {"class": "SubInterval", "t_lo": t_min, "t_hi": t_max, "base": schedule_spec(base_name, base)},
            "warp_logits": [float(v) for v in np.asarray(result.module.warp.logits)],
        }

    # Candidates: the optimized grid/schedule and the baselines, all on uniform grids of the same length.
    candidates = []  # (entry, schedule, ts)

    def add(name, schedule, ts, spec, note):
        entry = {
            "name": name,
            "schedule": spec,
            "note": note,
            "times": [float(t) for t in ts],
            "sigmas": None,
            "kl": None,
            "w2": None,
            "error": None,
        }
        candidates.append((entry, schedule, ts))

    add("optimized", opt_schedule, opt_ts, opt_spec, f"{args.param} optimized, {args.optimizer}")
    names = [n for n in (args.baselines.split(",") if args.baselines else BASELINES) if n]
    if args.divergence != "kl" and "euler-lagrange" in names and not args.baselines:
        names.remove("euler-lagrange")  # the Euler-Lagrange optimum is the KL leading term's
    failed = []
    for name in names:
        try:
            schedule = problem.schedule(name)
            ts = problem.grid(schedule, "uniform", steps)
        except CLIError as error:
            if name == "euler-lagrange" and not args.baselines:
                continue  # optional: only when the analytic optimum is available
            failed.append(
                {
                    "name": name,
                    "schedule": None,
                    "note": "",
                    "times": None,
                    "sigmas": None,
                    "kl": None,
                    "w2": None,
                    "error": str(error),
                }
            )
            continue
        note = "uniform t"
        if name == "tangent":
            note = f"uniform t, gamma* = {float(schedule.gamma):.4g}"
        if name == "euler-lagrange":
            note = "uniform t, N -> inf optimum"
        add(name, schedule, ts, schedule_spec(name, schedule), note)
    results = problem.evaluate_many([(schedule, ts) for _, schedule, ts in candidates])
    for (entry, _, _), res in zip(candidates, results):
        if isinstance(res, CLIError):
            entry["error"] = str(res)
        else:
            entry["kl"] = _finite(res["kl"]) if res["kl"] is not None else None
            entry["w2"] = _finite(res["w2"])
            entry["sigmas"] = res["sigmas"]
    candidates += [(entry, None, None) for entry in failed]

    key = args.divergence
    value_of = (lambda e: e["kl"]) if key == "kl" else (lambda e: e["w2"])
    baseline_values = [value_of(e) for e, _, _ in candidates[1:] if value_of(e) is not None]
    best = min(baseline_values) if baseline_values else None
    opt_value = value_of(candidates[0][0])
    doc = {
        "command": "optimize",
        "gaussdiff_jax_version": gdj.__version__,
        "spectrum": _spectrum_info(problem.label, problem.raw, problem.floor),
        "problem": {
            **problem.describe(),
            "nfe": _nfe_of(sampler, base, opt_ts),
            "num_steps": steps,
            "divergence": args.divergence,
        },
        "optimization": {
            "parameterization": args.param,
            "base_schedule": schedule_spec(base_name, base),
            "optimizer": args.optimizer,
            **opt_info,
            "iterations": int(args.iterations),
            "seconds": opt_seconds,
            "losses": [_finite(float(v)) for v in result.losses],
        },
        "candidates": [entry for entry, _, _ in candidates],
        "best_baseline": None,
        "ratio_to_best_baseline": None,
        "seconds": None,
    }
    if best is not None and opt_value is not None:
        doc["best_baseline"] = next(e["name"] for e, _, _ in candidates[1:] if value_of(e) == best)
        doc["ratio_to_best_baseline"] = opt_value / best
    rows = []
    for entry, _, _ in candidates:
        sig = entry.get("sigmas") or []
        rows.append(
            [
                entry["name"],
                _fmt(entry.get("kl")),
                _fmt(entry.get("w2")),
                _fmt(value_of(entry) / opt_value, 4) if value_of(entry) is not None and opt_value else "n/a",
                _fmt(sig[1] if len(sig) > 1 else None, 4),
                _fmt(sig[-2] if len(sig) > 1 else None, 4),
                entry["error"] if entry.get("error") else entry["note"],
            ]
        )
    _print_table(
        f"{problem.sampler_name}, {steps} steps, {problem.label}: {args.divergence.upper()} and W2 to "
        f"{'p_sigma_min' if target == 'truncated' else 'p_0'} (init {init})",
        ["candidate", "KL", "W2", f"{args.divergence.upper()} / optimized", "sigma_1", "sigma_N-1", "note"],
        rows,
        quiet=args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from ._plot import plot_schedules

    curves = {}
    for entry, schedule, ts in candidates:
        if schedule is not None and entry.get("error") is None:
            label = entry["name"] if entry.get(key) is None else f"{entry['name']} ({key.upper()} {entry[key]:.4g})"
            curves[label] = (schedule, ts)
    plot_schedules(
        curves,
        highlight=next(iter(curves), None),
        title=f"{problem.sampler_name}, {steps} steps on {problem.label}: noise levels visited",
        path=out / "schedule.png",
    )
    doc["seconds"] = time.perf_counter() - start
    _write_json(out / "result.json", doc)
    _say(args, f"wrote {out / 'result.json'} and {out / 'schedule.png'} ({doc['seconds']:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------------
# compare


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise CLIError(f"{what} must be positive integers; got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _prediction(problem, schedule, sampler_name, grid, steps_list, ts_list):
    """Leading-term prediction for deterministic DDIM on uniform grids spanning [0, 1] (else None)."""
    gdj = _gdj()
    fn = _optional("kl_leading_term") if problem.divergence == "kl" else _optional("w2_leading_term")
    if fn is None or sampler_name != "ddim" or float(problem.args.eta) != 0.0 or grid != "uniform":
        return None
    if any(abs(ts[0] - 1.0) > 1e-12 or abs(ts[-1]) > 1e-12 for ts in ts_list):
        return None
    positive = problem.lam[problem.lam > 0]  # zero modes contribute nothing against p_sigma_min > 0
    try:
        # The leading term is exactly C / N^2 (KL) or C / N (W2): one quadrature serves every N.
        one = float(fn(gdj.GaussianSource(positive), schedule, 1))
    except (ValueError, RuntimeError):  # singular schedules (infinite functionals) have no leading term
        return None
    power = 2 if problem.divergence == "kl" else 1
    values = [one / n**power for n in steps_list]
    return values if all(math.isfinite(v) for v in values) else None


def cmd_compare(args) -> int:
    samplers = _name_list(args.samplers)
    schedules = _name_list(args.schedules)
    nfes = _int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, args.eta if name.lower() == "ddim" else 0.0)
    rows, records, curves, predictions = [], [], {}, {}
    for sampler_name in samplers:
        problem = _problem_for(args, args.spectrum, sampler_name)
        # Every (schedule, NFE) case of this sampler is evaluated in one compiled program.
        cases, items = [], []
        for schedule_name in schedules:
            try:
                schedule = problem.schedule(schedule_name)
            except CLIError as error:
                cases += [(schedule_name, None, nfe, None, None, str(error)) for nfe in nfes]
                continue
            for nfe in nfes:
                try:
                    steps = problem.steps(nfe)
                    ts = problem.grid(schedule, args.grid, steps)
                except CLIError as error:
                    cases.append((schedule_name, schedule, nfe, None, None, str(error)))
                    continue
                cases.append((schedule_name, schedule, nfe, steps, ts, None))
                items.append((schedule, ts))
        results = iter(problem.evaluate_many(items))
        series: dict[str, list] = {}
        for schedule_name, schedule, nfe, steps, ts, error in cases:
            record = {
                "sampler": problem.sampler_name,
                "schedule": schedule_name,
                "grid": args.grid,
                "nfe": nfe,
                "steps": steps,
                "nfe_used": None,
                "kl": None,
                "w2": None,
                "error": error or "",
            }
            if error is None:
                res = next(results)
                if isinstance(res, CLIError):
                    record["error"] = str(res)
                else:
                    record.update(nfe_used=_nfe_of(problem.sampler, schedule, ts), kl=res["kl"], w2=res["w2"])
                    value = res[args.divergence]
                    if value is not None and value > 0 and math.isfinite(value):
                        series.setdefault(schedule_name, []).append((record["nfe_used"], value, steps, ts, schedule))
            records.append(record)
            rows.append(
                [
                    problem.sampler_name,
                    schedule_name,
                    str(nfe),
                    str(steps or "-"),
                    _fmt(record["kl"]),
                    _fmt(record["w2"]),
                    record["error"][:70],
                ]
            )
        for schedule_name, points in series.items():
            label = f"{problem.sampler_name} / {schedule_name}"
            xs = [p[0] for p in points]
            curves[label] = (xs, [p[1] for p in points])
            pred = _prediction(
                problem, points[0][4], problem.sampler_name, args.grid, [p[2] for p in points], [p[3] for p in points]
            )
            if pred is not None:
                predictions[label] = (xs, pred)
    _print_table(
        f"{args.spectrum}: KL and W2 to {'p_sigma_min' if (args.target or ('truncated' if args.sigma_min > 0 else 'data')) == 'truncated' else 'p_0'}",
        ["sampler", "schedule", "NFE", "steps", "KL", "W2", "error"],
        rows,
        quiet=args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["sampler", "schedule", "grid", "nfe", "steps", "nfe_used", "kl", "w2", "error"]
        )
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    from ._plot import plot_error_vs_nfe

    plot_error_vs_nfe(
        curves,
        predictions=predictions or None,
        quantity=args.divergence.upper(),
        title=f"{args.spectrum}: {args.divergence.upper()} against NFE",
        path=out / "error_vs_nfe.png",
    )
    _say(args, f"wrote {out / 'compare.csv'} and {out / 'error_vs_nfe.png'}")
    return 0


def _problem_for(args, spectrum: str | None, sampler_name: str) -> Problem:
    """A `Problem` for one sampler of a list (`--eta` only applies to ddim)."""
    saved = args.eta
    try:
        if sampler_name.strip().lower() != "ddim":
            args.eta = 0.0
        return Problem(args, spectrum=spectrum, sampler=sampler_name)
    finally:
        args.eta = saved


# ----------------------------------------------------------------------------------------------
# sweep


_SWEEP_KEYS = (
    "spectrum",
    "sampler",
    "schedule",
    "grid",
    "nfe",
    "init",
    "target",
    "direction",
    "sigma_min",
    "sigma_max",
    "floor",
    "eta",
)


def _sweep_key(record: dict) -> str:
    return json.dumps([record.get(k) for k in _SWEEP_KEYS])


def _read_done(path: Path) -> tuple[set[str], int]:
    """Keys of the records already in `path`; a torn last line (interrupted write) is cut off."""
    done: set[str] = set()
    if not path.exists():
        return done, 0
    good_bytes = 0
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done.add(_sweep_key(record))
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done, good_bytes


def cmd_sweep(args) -> int:
    spectra = _name_list(args.spectra)
    samplers = _name_list(args.samplers)
    schedules = _name_list(args.schedules)
    grids = _name_list(args.grids)
    nfes = _int_list(args.nfe, "--nfe")
    for name in samplers:
        make_sampler(name, args.eta if name.lower() == "ddim" else 0.0)
    for name in spectra:
        load_spectrum(name)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, _ = _read_done(out)
    cases = [(sp, sa, sc, gr, n) for sp in spectra for sa in samplers for sc in schedules for gr in grids for n in nfes]
    todo = []
    for case in cases:
        sp, sa, sc, gr, n = case
        key_record = _case_record(args, *case)
        if _sweep_key(key_record) not in done:
            todo.append(case)
    _say(args, f"sweep: {len(cases)} cases, {len(cases) - len(todo)} already in {out}, {len(todo)} to run")
    if args.limit is not None:
        todo = todo[: args.limit]
    # Cases sharing spectrum, sampler, schedule and grid are evaluated together (one compilation per group).
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for case in todo:
        groups.setdefault(case[:4], []).append(case[4])
    progress = None
    if not args.quiet and not args.no_progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[case]}"),
            TimeRemainingColumn(),
        )
        task = progress.add_task("sweep", total=len(todo), case="")
        progress.start()
    problems: dict[tuple[str, str], Problem] = {}
    try:
        with open(out, "a") as f:
            for (sp, sa, sc, gr), group_nfes in groups.items():
                t0 = time.perf_counter()
                records = [_case_record(args, sp, sa, sc, gr, n) for n in group_nfes]
                items, where = [], []
                try:
                    if (sp, sa) not in problems:
                        problems[(sp, sa)] = _problem_for(args, sp, sa)
                    problem = problems[(sp, sa)]
                    schedule = problem.schedule(sc)
                    for i, n in enumerate(group_nfes):
                        try:
                            steps = problem.steps(n)
                            items.append((schedule, problem.grid(schedule, gr, steps)))
                            records[i]["steps"] = steps
                            where.append(i)
                        except CLIError as error:
                            records[i].update(steps=None, kl=None, w2=None, error=str(error))
                    for i, res in zip(where, problem.evaluate_many(items)):
                        if isinstance(res, CLIError):
                            records[i].update(kl=None, w2=None, error=str(res))
                        else:
                            kl = _finite(res["kl"]) if res["kl"] is not None else None
                            records[i].update(kl=kl, w2=_finite(res["w2"]), error=None)
                except CLIError as error:
                    for record in records:
                        record.update(steps=record.get("steps"), kl=None, w2=None, error=str(error))
                seconds = (time.perf_counter() - t0) / len(records)
                for record in records:
                    record["seconds"] = seconds
                    f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
                if progress is not None:
                    progress.update(task, advance=len(records), case=f"{sp} {sa} {sc} {gr}")
    finally:
        if progress is not None:
            progress.stop()
    _say(args, f"wrote {len(todo)} records to {out}")
    return 0


def _case_record(args, spectrum, sampler, schedule, grid, nfe) -> dict:
    return {
        "spectrum": spectrum,
        "sampler": sampler,
        "schedule": schedule,
        "grid": grid,
        "nfe": int(nfe),
        "init": args.init,
        "target": args.target or ("truncated" if args.sigma_min > 0 else "data"),
        "direction": args.direction,
        "sigma_min": float(args.sigma_min),
        "sigma_max": _finite(float(args.sigma_max)),
        "floor": args.floor,
        "eta": float(args.eta) if sampler.lower() == "ddim" else 0.0,
    }


# ----------------------------------------------------------------------------------------------
# export


def _rebuild_schedule(spec: dict):
    gdj = _gdj()
    if spec is None:
        raise CLIError("the input file has no schedule for this grid")
    cls = spec.get("class")
    params = spec.get("params", {})

    def num(v):
        return math.inf if v is None else v

    if cls == "LinearBeta":
        return gdj.LinearBeta(params["beta_min"], params["beta_max"])
    if cls == "Cosine":
        return gdj.Cosine(params["s"])
    if cls == "EDM":
        return gdj.EDM(params["sigma_min"], num(params["sigma_max"]), params["rho"])
    if cls == "Tangent":
        return gdj.Tangent(params["gamma"], sigma_min=params["sigma_min"], sigma_max=num(params["sigma_max"]))
    if cls == "LogSNRLinear":
        return gdj.LogSNRLinear(params["log_snr_max"], params["log_snr_min"])
    if cls == "SubInterval":
        return SubInterval(_rebuild_schedule(spec["base"]), float(spec["t_lo"]), float(spec["t_hi"]))
    if cls == "WarpedSchedule":
        base = _rebuild_schedule(spec["base"])
        return gdj.WarpedSchedule(base, gdj.TimeWarp(logits=np.asarray(spec["warp_logits"])))
    raise CLIError(f"cannot rebuild a {cls} schedule from the input file; export from --schedule NAME instead")


def cmd_export(args) -> int:
    gdj = _gdj()
    if args.input is not None:
        try:
            doc = json.loads(Path(args.input).read_text())
        except FileNotFoundError:
            raise CLIError(f"--from file {args.input!r} not found") from None
        except json.JSONDecodeError as error:
            raise CLIError(f"--from file {args.input!r} is not JSON ({error.msg})") from None
        if doc.get("command") == "optimize":
            entries = {c["name"]: c for c in doc["candidates"]}
            if args.candidate not in entries:
                raise CLIError(f"no candidate {args.candidate!r} in {args.input}; have: {', '.join(entries)}")
            entry = entries[args.candidate]
            ts = np.asarray(entry["times"], dtype=np.float64)
            schedule = _rebuild_schedule(entry["schedule"])
        elif doc.get("command") == "eval":
            ts = np.asarray(doc["times"], dtype=np.float64)
            schedule = _rebuild_schedule(doc["schedule"])
        else:
            raise CLIError(f"{args.input} is not a result of 'gaussdiff optimize' or 'gaussdiff eval'")
    else:
        if args.schedule is None or (args.steps is None and args.times is None):
            raise CLIError("give --from RESULT.json, or --schedule NAME with --steps N (or --times)")
        lam = load_spectrum(args.spectrum)[1] if args.schedule in ("tangent", "euler-lagrange", "el") else np.ones(1)
        schedule = make_schedule(args.schedule, lam=lam, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
        if args.times is not None:
            ts = parse_times(args.times)
        else:
            t_max, t_min = time_range(schedule, args.sigma_min, args.sigma_max)
            ts = make_grid(args.grid, schedule, int(args.steps), t_max, t_min)
    try:
        gdj.validate_grid(ts)
    except ValueError as error:
        raise CLIError(_one_line(error)) from None
    sigmas = _sigmas_of(schedule, ts)
    fmt = args.format
    if fmt == "json":
        to_json = _optional("to_json")
        if to_json is not None and all(s is not None for s in sigmas):
            text = to_json(ts, schedule)
        else:
            text = json.dumps(
                {"format": "gaussdiff_jax.grid", "times": [float(t) for t in ts], "sigmas": sigmas},
                indent=2,
                allow_nan=False,
            )
        payload = text
    else:
        if sigmas[0] is None:
            raise CLIError(
                "the grid starts at sigma = inf (alpha_bar = 0), which diffusers / k-diffusion cannot take: "
                "re-run optimize with a finite --sigma-max (e.g. 80)"
            )
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if fmt == "k-diffusion":
                fn = _optional("to_k_diffusion")
                if fn is None:
                    raise CLIError("k-diffusion export needs gaussdiff_jax.to_k_diffusion (not available)")
                values = fn(ts, schedule, append_zero=args.append_zero)
            elif fmt == "diffusers":
                fn = _optional("to_diffusers")
                if fn is None:
                    raise CLIError("diffusers export needs gaussdiff_jax.to_diffusers (not available)")
                try:
                    values = fn(ts, schedule, kind=args.kind)
                except ValueError as error:
                    raise CLIError(_one_line(error)) from None
            else:
                raise CLIError(f"unknown format {fmt!r}; choose diffusers, k-diffusion or json")
        for warning in caught:
            print(f"{PROG} export: warning: {_one_line(warning.message)}", file=sys.stderr)
        payload = json.dumps(values)
    if args.out is not None:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload + "\n")
        _say(args, f"wrote {path}")
    else:
        print(payload)
    return 0


# ----------------------------------------------------------------------------------------------
# Argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _float_or_inf(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (or inf); got {text!r}") from None


def _common(parser: argparse.ArgumentParser, *, sampler: bool = True, spectrum: bool = True):
    g = parser.add_argument_group("data")
    if spectrum:
        g.add_argument(
            "--spectrum",
            default="cifar10",
            metavar="NAME|FILE",
            help="covariance spectrum: a bundled name (cifar10, cifar10_preprint2024, adsn_fabric, adsn_china, "
            "digits) or a .npy / .txt file of eigenvalues (default: %(default)s)",
        )
    g.add_argument(
        "--floor",
        type=float,
        default=None,
        metavar="LAMBDA",
        help="raise eigenvalues below LAMBDA to LAMBDA (makes KL to p_0 finite with zero eigenvalues)",
    )
    g = parser.add_argument_group("sampling problem")
    if sampler:
        g.add_argument(
            "--sampler",
            default="ddim",
            metavar="NAME",
            help="ddim, ddpm, ddpm-pg, euler, heun, rk4, em, ei, edm-heun (default: %(default)s)",
        )
    g.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity in [0, 1] (default 0: deterministic)")
    g.add_argument(
        "--sigma-min",
        type=_float_or_inf,
        default=0.002,
        help="final noise level; the sampler stops there (default %(default)s, EDM's; 0 = clean sample)",
    )
    g.add_argument(
        "--sigma-max",
        type=_float_or_inf,
        default=80.0,
        help="initial noise level (default %(default)s; 'inf' starts at alpha_bar = 0, DDIM only)",
    )
    g.add_argument(
        "--init",
        choices=("standard", "exact"),
        default="standard",
        help="standard: start from N(0, I) as in practice; exact: start from p_t (default %(default)s)",
    )
    g.add_argument(
        "--target",
        choices=("truncated", "data"),
        default=None,
        help="compare with p_sigma_min (truncated) or p_0 (data); default truncated if sigma_min > 0",
    )
    g.add_argument(
        "--direction",
        choices=("target_to_sample", "sample_to_target"),
        default="target_to_sample",
        help="KL(target || sample) or KL(sample || target) (default %(default)s)",
    )
    g = parser.add_argument_group("output")
    g.add_argument("--quiet", action="store_true", help="print nothing but errors")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _wrap(text: str, width: int = 92) -> str:
    """Fill each paragraph (separated by blank lines) for the raw-description help formatter."""
    import textwrap

    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def build_parser() -> argparse.ArgumentParser:
    """The `gaussdiff` argument parser (one subparser per subcommand)."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Exact KL / W2 errors of diffusion samplers on Gaussian data, and schedule optimization.\n\n"
            "Data are a covariance spectrum (bundled: cifar10, cifar10_preprint2024, adsn_fabric; or a .npy file).\n"
            "Every number is exact (closed form per eigenvalue), not a Monte Carlo estimate.\n\n"
            "Start here:\n"
            "  gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart\n"
            "  gaussdiff eval --sampler heun --schedule edm --nfe 20\n"
            "  gaussdiff compare --samplers ddim,heun --schedules edm,tangent --nfe 10,20,40 --out cmp\n"
            "  gaussdiff sweep --spectra cifar10 --samplers ddim,euler --nfe 10,20 --out sweep.jsonl\n"
            "  gaussdiff export --from quickstart/result.json --format k-diffusion"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", parser_class=_Parser)
    sampler_list = "\n".join(f"  {k:10s} {v[0]}" for k, v in _SAMPLER_DESCRIPTIONS.items())
    schedule_list = "\n".join(f"  {k:15s} {v}" for k, v in SCHEDULE_HELP.items())
    grid_list = "\n".join(f"  {k:10s} {v}" for k, v in GRID_HELP.items())
    epilog = f"samplers:\n{sampler_list}\n\nschedules:\n{schedule_list}\n\ngrids:\n{grid_list}"

    p = sub.add_parser(
        "eval",
        help="exact error of one sampler / schedule / grid",
        description=_wrap(
            "Print the exact KL and W2 between the sampler's output law and the target, for one "
            "schedule and time grid. Example: gaussdiff eval --sampler heun --schedule edm --nfe 20"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    g = p.add_argument_group("schedule and grid")
    g.add_argument("--schedule", default="edm", help="noise schedule name (default %(default)s; list below)")
    g.add_argument("--grid", default="uniform", help="time grid name (default %(default)s; list below)")
    g.add_argument("--nfe", type=int, default=10, help="network-evaluation budget (default %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    g.add_argument(
        "--times",
        default=None,
        metavar="T0,T1,...|FILE",
        help="custom decreasing forward times in [0, 1] (comma list, .npy or .json); overrides the grid",
    )
    g.add_argument("--float32", action="store_true", help="compute in float32 (as on GPUs/TPUs)")
    p.add_argument("--out", default=None, metavar="DIR", help="also write DIR/eval.json and DIR/error_spectrum.png")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "optimize",
        help="optimize a time grid or schedule; table, JSON and plot",
        description=_wrap(
            "Optimize the time grid (default) or the schedule of a sampler for the exact KL (or W2) by gradient "
            "descent (optax), then compare with baselines on the same problem: linear-beta, cosine, EDM (Karras "
            "rho=7), the tangent law with its best gamma*, and the Euler-Lagrange optimum when available, all on "
            "uniform grids. Writes OUT/result.json and OUT/schedule.png.\n\n"
            "Example: gaussdiff optimize --spectrum cifar10 --sampler ddim --nfe 10 --out quickstart"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    g = p.add_argument_group("optimization")
    g.add_argument("--nfe", type=int, default=10, help="network-evaluation budget (default %(default)s)")
    g.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    g.add_argument("--divergence", choices=("kl", "w2"), default="kl", help="loss (default %(default)s)")
    g.add_argument(
        "--param",
        choices=("grid", "schedule"),
        default="grid",
        help="grid: learn the N+1 time points on the base schedule; schedule: learn a monotone time "
        "warp of the base schedule, used on a uniform grid (default %(default)s)",
    )
    g.add_argument(
        "--schedule",
        default=None,
        help="base schedule (default: tangent for ddim / edm-heun, linear for samplers in t)",
    )
    g.add_argument("--knots", type=int, default=32, help="time-warp knots for --param schedule (default %(default)s)")
    g.add_argument(
        "--optimizer",
        choices=("adam", "lbfgs"),
        default="adam",
        help="adam with cosine-decayed learning rate, or L-BFGS (default %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="adam's initial learning rate (default 0.2 for --param grid, 0.05 for schedule)",
    )
    g.add_argument("--iterations", type=int, default=200, help="optimizer steps (default %(default)s)")
    g.add_argument(
        "--baselines", default=None, help=f"comma-separated baseline schedules (default: {','.join(BASELINES)})"
    )
    p.add_argument(
        "--out",
        default="gaussdiff-out",
        metavar="DIR",
        help="output folder for result.json and schedule.png (default %(default)s)",
    )
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser(
        "compare",
        help="table of samplers x NFE x schedules (CSV + PNG)",
        description=_wrap(
            "Evaluate every combination of samplers, schedules and NFE budgets; print a table and write "
            "OUT/compare.csv and OUT/error_vs_nfe.png (with the DDIM leading-term prediction when it "
            "applies). Example: gaussdiff compare --samplers ddim,heun --schedules edm,tangent "
            "--nfe 10,20,40 --out cmp"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, sampler=False)
    g = p.add_argument_group("cases")
    g.add_argument("--samplers", default="ddim,heun", help="comma-separated sampler names (default %(default)s)")
    g.add_argument("--schedules", default="edm,tangent", help="comma-separated schedule names (default %(default)s)")
    g.add_argument("--grid", default="uniform", help="time grid name (default %(default)s)")
    g.add_argument("--nfe", default="10,20,40", help="comma-separated NFE budgets (default %(default)s)")
    g.add_argument("--divergence", choices=("kl", "w2"), default="kl", help="plotted quantity (default %(default)s)")
    p.add_argument("--out", default="gaussdiff-compare", metavar="DIR", help="output folder (default %(default)s)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "sweep",
        help="large product of cases to a resumable JSON-lines file",
        description=_wrap(
            "Run every combination of spectra x samplers x schedules x grids x NFE and append one JSON "
            "record per case to OUT (JSON lines). Rerunning the same command skips the cases already in "
            "OUT, so an interrupted sweep resumes. Example: gaussdiff sweep --spectra cifar10 "
            "--samplers ddim,euler --schedules edm,linear --nfe 10,20,50 --out sweep.jsonl"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, sampler=False, spectrum=False)
    g = p.add_argument_group("cases")
    g.add_argument(
        "--spectra",
        default="cifar10",
        metavar="NAMES|FILES",
        help="comma-separated spectra: bundled names or .npy files (default %(default)s)",
    )
    g.add_argument("--samplers", default="ddim", help="comma-separated sampler names (default %(default)s)")
    g.add_argument("--schedules", default="edm", help="comma-separated schedule names (default %(default)s)")
    g.add_argument("--grids", default="uniform", help="comma-separated grid names (default %(default)s)")
    g.add_argument("--nfe", default="10,20,50", help="comma-separated NFE budgets (default %(default)s)")
    g.add_argument("--limit", type=int, default=None, help="run at most this many new cases, then stop")
    p.add_argument("--out", required=True, metavar="FILE.jsonl", help="results file (created or resumed)")
    p.set_defaults(func=cmd_sweep, divergence="kl")

    p = sub.add_parser(
        "export",
        help="grid -> diffusers / k-diffusion / JSON",
        description=_wrap(
            "Export a time grid as diffusers timesteps or sigmas, k-diffusion / ComfyUI sigmas, or JSON. "
            "Take it from an optimize or eval result (--from), or build it from --schedule and --steps. "
            "Example: gaussdiff export --from quickstart/result.json --format k-diffusion"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="input",
        default=None,
        metavar="RESULT.json",
        help="result.json of 'gaussdiff optimize' or eval.json of 'gaussdiff eval'",
    )
    p.add_argument(
        "--candidate", default="optimized", help="which candidate of an optimize result (default %(default)s)"
    )
    p.add_argument(
        "--format",
        choices=("diffusers", "k-diffusion", "json"),
        default="json",
        help="output format (default %(default)s)",
    )
    p.add_argument(
        "--kind",
        choices=("timesteps", "sigmas", "flow_sigmas"),
        default="sigmas",
        help="diffusers: timesteps (Discrete schedules only), sigmas, or flow_sigmas (default %(default)s)",
    )
    p.add_argument("--append-zero", action="store_true", help="k-diffusion: append the final sigma = 0")
    p.add_argument("--schedule", default=None, help="build the grid from this schedule instead of --from")
    p.add_argument("--grid", default="uniform", help="grid name with --schedule (default %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="number of steps with --schedule")
    p.add_argument("--times", default=None, help="custom forward times with --schedule")
    p.add_argument("--spectrum", default="cifar10", help="spectrum for the tangent / euler-lagrange schedules")
    p.add_argument("--sigma-min", type=_float_or_inf, default=0.002, help="final noise level (default %(default)s)")
    p.add_argument("--sigma-max", type=_float_or_inf, default=80.0, help="initial noise level (default %(default)s)")
    p.add_argument("--out", default=None, metavar="FILE", help="write here instead of stdout")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors and the payload")
    p.set_defaults(func=cmd_export)
    return parser


_SAMPLER_DESCRIPTIONS = {
    "ddim": "DDIM (eta from --eta, default 0: deterministic); sees only the noise levels",
    "ddpm": "DDPM ancestral sampling, Ho et al. discrete betas",
    "ddpm-pg": "DDPM ancestral, Pierret-Galerne linearized form",
    "euler": "Euler on the probability-flow ODE in t (1 NFE/step)",
    "heun": "Heun on the probability-flow ODE in t (2 NFE/step)",
    "rk4": "Runge-Kutta 4 on the probability-flow ODE in t (4 NFE/step)",
    "em": "Euler-Maruyama on the reverse SDE",
    "ei": "exponential integrator on the reverse SDE",
    "edm-heun": "EDM's Heun in sigma (2 NFE/step, last step to sigma=0 is Euler)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gaussdiff` console script. Returns the exit code (0 ok, 2 user error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as error:
        sys.stderr.write(f"{PROG} {args.command}: error: {error}\n")
        return EXIT_USAGE
    except (ValueError, FloatingPointError, eqx.EquinoxRuntimeError) as error:
        if os.environ.get("GAUSSDIFF_DEBUG"):
            raise
        sys.stderr.write(f"{PROG} {args.command}: error: {_one_line(error)} (set GAUSSDIFF_DEBUG=1 for a traceback)\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG} {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
