r"""The sampling problem of one run: spectrum, sampler, noise range, and the schedules and grids built on it.

Schedules come by name (`SCHEDULE_HELP`), grids from `gdj.grids` (every name of `gdj.grids.available()`),
times from `gdj.grids.time_of_sigma`, which refuses noise levels a schedule does not reach: the CLI turns
that into a one-line error naming the flag, instead of silently clamping (`--sigma-max inf` on linear
beta used to start at its $\sigma(1) \approx 152$).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .._interop._export import sigma_of
from ._shared import CLIError, cache_dir, gdj, load_spectrum, make_sampler, one_line, sampler_eta, steps_for_nfe

SCHEDULE_HELP = {
    "linear": "linear beta 0.1 -> 20 (Song et al. VP-SDE; DDPM's table in continuous time)",
    "cosine": "Nichol-Dhariwal cosine, offset s = 0.008",
    "edm": "EDM / Karras rho = 7 noise levels between --sigma-min and --sigma-max",
    "tangent": "tangent law sigma = gamma* tan(...) with the best gamma for the divergence (MATH.md sec. 4)",
    "logsnr": "log-SNR linear in t between --sigma-max and --sigma-min",
    "euler-lagrange": "the Euler-Lagrange optimum of the DDIM leading term (spectrum shifted by sigma_min^2)",
    "table-linear": "diffusers' 1000-step DDPM table (beta_schedule='linear'); sigma up to 157",
    "table-scaled-linear": "diffusers' Stable Diffusion table (beta_schedule='scaled_linear'); sigma up to 14.6",
    "table-cosine": "diffusers' cosine table (beta_schedule='squaredcos_cap_v2')",
}
_TABLES = {"table-linear": "linear", "table-scaled-linear": "scaled_linear", "table-cosine": "squaredcos_cap_v2"}


def tangent_gamma_for(lam: np.ndarray, sigma_min: float, divergence: str) -> float:
    r"""$\gamma^\star$ of the tangent law for the spectrum $\lambda + \sigma_{\min}^2$ (finite for zero eigenvalues)."""
    shifted = lam + sigma_min**2
    if divergence == "kl" and not np.all(shifted > 0):
        raise CLIError("the tangent law's gamma* for KL needs positive eigenvalues: use --sigma-min > 0 or --floor")
    return float(gdj().tangent_gamma(gdj().GaussianSource(shifted), "kl" if divergence == "kl" else "w2"))


def make_schedule(name: str, *, lam: np.ndarray, sigma_min: float, sigma_max: float, divergence: str = "kl"):
    """The schedule called `name` (see `SCHEDULE_HELP`), set up for the noise range [sigma_min, sigma_max]."""
    g = gdj()
    key = name.strip().lower()
    if key == "linear":
        return g.LinearBeta()
    if key == "cosine":
        return g.Cosine()
    if key in _TABLES:
        return g.Discrete.from_diffusers(_TABLES[key])
    if key in ("edm", "logsnr") and not (math.isfinite(sigma_max) and (key == "edm" or sigma_min > 0)):
        need = "a finite --sigma-max (e.g. 80)" if key == "edm" else "0 < --sigma-min and a finite --sigma-max"
        raise CLIError(f"the {key} schedule needs {need}")
    if key == "edm":
        return g.EDM(sigma_min=sigma_min, sigma_max=sigma_max, rho=7.0)
    if key == "logsnr":
        return g.LogSNRLinear(log_snr_max=-2 * math.log(sigma_min), log_snr_min=-2 * math.log(sigma_max))
    if key == "tangent":
        gamma = tangent_gamma_for(lam, sigma_min, divergence)
        return g.Tangent(gamma, sigma_min=sigma_min, sigma_max=sigma_max)
    if key in ("euler-lagrange", "el"):
        optimum = euler_lagrange(lam + sigma_min**2)
        return g.SigmaFloor(optimum, sigma_min) if sigma_min > 0 else optimum
    raise CLIError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULE_HELP)}")


def euler_lagrange(lam: np.ndarray):
    """`gdj.euler_lagrange_schedule` of the spectrum `lam`, kept in the cache folder (its fixed point takes
    ~0.7 s of CPU for CIFAR-10; the file is keyed by the spectrum and the solver's source)."""
    g = gdj()
    folder = cache_dir()
    if folder is None:
        return g.euler_lagrange_schedule(g.GaussianSource(lam))
    from .._analysis import _optimal
    from .._interop._export import _decode_module, _encode

    digest = hashlib.sha256(np.ascontiguousarray(lam, dtype=np.float64).tobytes())
    digest.update(Path(inspect.getsourcefile(_optimal)).read_bytes())
    path = folder / "euler_lagrange" / f"{digest.hexdigest()[:32]}.json"
    try:
        return _decode_module(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet (or unreadable): compute it
    optimum = g.euler_lagrange_schedule(g.GaussianSource(lam))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_encode(optimum)))
    except OSError:
        pass  # a read-only cache: fine, computed again next time
    return optimum


def sigma_at(schedule, ts) -> np.ndarray:
    """The schedule's noise levels at forward times `ts`, in float64 (compiled once per structure and shape)."""
    return sigma_of(schedule, np.asarray(ts, dtype=np.float64))


def time_range(schedule, label: str, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """`(t_max, t_min)`: where `schedule` has noise levels `sigma_max` and `sigma_min`; a `CLIError` naming the
    flag when the schedule does not reach one of them (rather than clamping to its ends)."""
    lo, hi = sigma_at(schedule, [0.0, 1.0])
    if sigma_max > hi * (1 + 1e-9):
        where = "" if math.isfinite(sigma_max) else " or a schedule with alpha_bar(1) = 0 (cosine, tangent)"
        raise CLIError(
            f"the {label} schedule reaches sigma = {hi:.4g} at most (t = 1), not --sigma-max {sigma_max:g}: "
            f"use --sigma-max <= {hi:.4g}{where}"
        )
    if sigma_min < lo * (1 - 1e-9):
        raise CLIError(
            f"the {label} schedule starts at sigma = {lo:.4g} (t = 0), above --sigma-min {sigma_min:g}: "
            f"use --sigma-min >= {lo:.4g}"
        )
    t_max, t_min = (float(t) for t in gdj().grids.time_of_sigma(schedule, [sigma_max, sigma_min]))
    if not t_max > t_min:
        raise CLIError(
            f"the {label} schedule covers no time between --sigma-min {sigma_min} and --sigma-max {sigma_max}"
        )
    return t_max, t_min


def grid_help() -> list[tuple[str, str]]:
    return [(name, gdj().grids.describe(name)) for name in gdj().grids.available()]


def make_grid(name: str, schedule, steps: int, t_max: float, t_min: float) -> np.ndarray:
    """The grid `name` of `gdj.grids` with `steps` steps between `t_max` and `t_min` where the grid takes them."""
    grids = gdj().grids
    if name not in grids.available():
        raise CLIError(f"unknown grid {name!r}; choose one of: {', '.join(grids.available())}")
    options = {k: v for k, v in {"t_max": t_max, "t_min": t_min}.items() if k in grids.range_options(name)}
    try:
        return np.asarray(grids.make(name, schedule, num_steps=steps, **options), dtype=np.float64)
    except ValueError as error:
        raise CLIError(f"grid {name!r}: {one_line(error)}") from None


# ----------------------------------------------------------------------------------------------
# --times


def parse_times(text: str) -> tuple[np.ndarray, object | None]:
    """A custom grid: comma-separated forward times, a `.npy` file, or a JSON grid / result (`FILE.json` or
    `FILE.json:CANDIDATE`). **Returns:** `(ts, schedule)`, the schedule stored with a JSON grid or `None`."""
    match = re.fullmatch(r"(.+\.json)(?::([^:/\\]+))?", text)
    if match and Path(match[1]).is_file():
        ts, schedule = _times_from_json(match[1], match[2])
    elif text.endswith(".npy") and Path(text).is_file():
        try:
            ts, schedule = np.load(text, allow_pickle=False), None
        except (OSError, ValueError) as error:
            raise CLIError(f"cannot read --times {text!r} ({one_line(error)})") from None
    elif text.endswith((".npy", ".json")):
        raise CLIError(f"--times file {match[1] if match else text!r} not found")
    else:
        ts, schedule = _times_from_list(text), None
    ts = np.asarray(ts, dtype=np.float64)
    try:
        gdj().validate_grid(jnp.asarray(ts))
    except ValueError as error:
        raise CLIError(f"--times: {one_line(error)}") from None
    return ts, schedule


def _times_from_list(text: str) -> list[float]:
    entries = [x.strip() for x in text.split(",")]
    empty = [i + 1 for i, x in enumerate(entries) if not x]
    if empty:
        raise CLIError(f"--times {text!r} has an empty entry (position {empty[0]}): give e.g. --times 1,0.5,0.1,0.001")
    try:
        return [float(x) for x in entries]
    except ValueError as error:
        raise CLIError(f"cannot read --times {text!r} ({one_line(error)}): give e.g. --times 1,0.5,0.1,0.001") from None


def _times_from_json(path: str, name: str | None):
    try:
        doc = gdj().from_json(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise CLIError(f"--times {path}: {one_line(error)}") from None
    return pick_grid(doc, name, path)


def pick_grid(doc: dict, name: str | None, path: str, *, flag: str = "--times FILE.json:NAME"):
    """`(times, schedule)` of a decoded grid document: the candidate `name`, or its grid, or its "optimized"
    candidate, or its only candidate."""
    candidates = {c.get("name"): c for c in doc.get("candidates") or []}
    if name is None and "times" in doc and doc["times"] is not None:
        return np.asarray(doc["times"]), doc.get("schedule")
    if name is None:
        name = "optimized" if "optimized" in candidates or len(candidates) != 1 else next(iter(candidates))
    if name not in candidates:
        raise CLIError(f"no candidate {name!r} in {path}; have: {', '.join(map(str, candidates))} (use {flag})")
    chosen = candidates[name]
    if chosen.get("times") is None:
        raise CLIError(f"candidate {name!r} in {path} has no grid ({chosen.get('error') or 'it failed'})")
    return np.asarray(chosen["times"]), chosen.get("schedule")


# ----------------------------------------------------------------------------------------------
# The problem


class Problem:
    """The spectrum, sampler and noise range of one run, with the schedules and grids built on it.

    `notes` collects what a user should be told once (e.g. a grid that ignores the noise range).
    """

    def __init__(self, args, *, spectrum: str | None = None, sampler: str | None = None):
        self.args = args
        self.label, self.raw = load_spectrum(spectrum or args.spectrum)
        if args.floor is not None and not args.floor > 0:
            raise CLIError(f"--floor must be > 0; got {args.floor}")
        self.floor = args.floor
        self.lam = self.raw if self.floor is None else np.maximum(self.raw, self.floor)
        self.source = gdj().GaussianSource(self.lam)
        name = sampler or args.sampler
        self.sampler_name, self.sampler = make_sampler(
            name, args.eta if sampler is None else sampler_eta(name, args.eta)
        )
        self.sigma_min, self.sigma_max = float(args.sigma_min), float(args.sigma_max)
        if not (0 <= self.sigma_min < self.sigma_max):
            raise CLIError(f"need 0 <= --sigma-min < --sigma-max; got {self.sigma_min}, {self.sigma_max}")
        if not math.isfinite(self.sigma_max) and self.sampler.needs_beta:
            raise CLIError(
                f"--sigma-max inf starts at alpha_bar = 0, where beta(t) is infinite: {self.sampler_name} (a sampler "
                "in t) cannot take it. Use a finite --sigma-max (e.g. 80) or a sampler in sigma (e.g. ddim)"
            )
        self.init = args.init
        self.target = args.target or ("truncated" if self.sigma_min > 0 else "data")
        self.direction = args.direction
        self.divergence = getattr(args, "divergence", "kl")
        self.notes: list[str] = []

    def schedule(self, name: str):
        try:
            return make_schedule(
                name, lam=self.lam, sigma_min=self.sigma_min, sigma_max=self.sigma_max, divergence=self.divergence
            )
        except ValueError as error:
            raise CLIError(one_line(error)) from None

    def steps(self, nfe: int) -> int:
        return steps_for_nfe(self.sampler, nfe, ends_clean=self.sigma_min == 0)

    def time_range(self, schedule, label: str) -> tuple[float, float]:
        return time_range(schedule, label, self.sigma_min, self.sigma_max)

    def grid(self, schedule, label: str, grid: str, steps: int) -> np.ndarray:
        """The grid `grid` of `steps` steps on `schedule` over the noise range (or the grid's own range)."""
        if grid in gdj().grids.available() and len(gdj().grids.range_options(grid)) < 2:
            t_max, t_min = 1.0, 0.0  # the grid takes at most t_min: it is checked against the range below
            if "t_min" in gdj().grids.range_options(grid):
                t_min = self.time_range(schedule, label)[1]
        else:
            t_max, t_min = self.time_range(schedule, label)
        ts = make_grid(grid, schedule, steps, t_max, t_min)
        got = sigma_at(schedule, ts[[0, -1]])
        if not np.allclose(got, [self.sigma_max, self.sigma_min], rtol=1e-6, atol=0):
            note = (
                f"grid {grid!r} on {label} runs from sigma {got[0]:.4g} to {got[1]:.4g}, its own range, not the "
                f"requested {self.sigma_max:g} -> {self.sigma_min:g}; the table reports that range"
            )
            if note not in self.notes:
                self.notes.append(note)
        return ts

    def kl_defined(self, schedule, ts) -> bool:
        """Whether the KL is finite: no zero eigenvalue, or a truncated target with noise left at the end."""
        if np.all(self.lam > 0):
            return True
        return self.target == "truncated" and float(sigma_at(schedule, ts[-1:])[0]) > 0

    def describe(self) -> dict:
        return {
            "sampler": self.sampler_name,
            "eta": float(getattr(self.sampler, "eta", 0.0)),
            "init": self.init,
            "target": self.target,
            "direction": self.direction,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max if math.isfinite(self.sigma_max) else "inf",  # JSON has no infinity
        }


def problem_for(args, spectrum: str | None, sampler_name: str) -> Problem:
    """A `Problem` for one sampler of a list (`--eta` applies to the samplers that take it)."""
    return Problem(args, spectrum=spectrum, sampler=sampler_name)
