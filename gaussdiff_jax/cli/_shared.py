"""What every subcommand shares: user errors, spectra, samplers, argument groups and output helpers."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
    return path.stem, _check_spectrum(spec, _read_numbers(spec, path))


def _read_numbers(spec: str, path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if path.suffix in (".txt", ".csv"):
            return np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=1)
    except (OSError, ValueError, EOFError) as error:  # what numpy raises for unreadable files
        reason = one_line(error).split(". ")[0]
        raise CLIError(
            f"cannot read spectrum file {spec!r} as {'a .npy array' if path.suffix == '.npy' else 'numbers'} "
            f"({reason}): save the eigenvalues with numpy.save('spectrum.npy', eigenvalues)"
        ) from None
    raise CLIError(f"spectrum file {spec!r}: unsupported extension {path.suffix!r} (use .npy, .txt or .csv)")


def _check_spectrum(spec: str, data: np.ndarray) -> np.ndarray:
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
    return data


def spectrum_info(label: str, lam: np.ndarray, floor: float | None) -> dict:
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

SAMPLER_HELP = {
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


def sigma_sampler(sampler) -> bool:
    """Samplers that see only the noise levels at the grid points (not beta(t))."""
    gdj = _gdj()
    return isinstance(sampler, (gdj.DDIM, gdj.EDMHeun))


def nfe_to_steps(sampler, nfe: int, ends_clean: bool) -> int:
    gdj = _gdj()
    grids = _optional("grids")
    if nfe < 1:
        raise CLIError(f"--nfe must be a positive integer; got {nfe}")
    if grids is not None and hasattr(grids, "steps_for_nfe"):
        try:
            return int(grids.steps_for_nfe(sampler, nfe, ends_clean=ends_clean))
        except ValueError as error:
            raise CLIError(one_line(error)) from None
    cost = 4 if isinstance(sampler, gdj.RK4) else 2 if isinstance(sampler, (gdj.Heun, gdj.EDMHeun)) else 1
    steps = (nfe + 1) // 2 if isinstance(sampler, gdj.EDMHeun) and ends_clean else nfe // cost
    if steps < 1:
        raise CLIError(f"an NFE budget of {nfe} is below one step of this sampler ({cost} NFE)")
    return steps


def nfe_of(sampler, schedule, ts) -> int:
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
# Output helpers


def finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def fmt(x: float | None, digits: int = 6) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}g}"


def write_json(path: Path, doc: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def one_line(error: BaseException) -> str:
    """The user-facing message of an exception, on one line (equinox runtime errors included)."""
    text = str(error)
    marker = "EquinoxRuntimeError: "
    if marker in text:
        text = text.split(marker, 1)[1].split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text or type(error).__name__


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, quiet: bool = False):
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


def say(args, text: str):
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def warn(command: str, text: str):
    sys.stderr.write(f"{PROG} {command}: warning: {text}\n")


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"{what} must be comma-separated integers; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise CLIError(f"{what} must be positive integers; got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ----------------------------------------------------------------------------------------------
# Argument parsing


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def float_or_inf(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (or inf); got {text!r}") from None


def wrap(text: str, width: int = 92) -> str:
    """Fill each paragraph (separated by blank lines) for the raw-description help formatter."""
    import textwrap

    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def add_subcommand(sub, name: str, *, help: str, description: str, epilog: str | None):
    """A subcommand parser with the house formatting (wrapped description, raw epilog)."""
    return sub.add_parser(
        name,
        help=help,
        description=wrap(description),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_problem_options(parser: argparse.ArgumentParser, *, sampler: bool = True, spectrum: bool = True):
    """The options every computing subcommand shares: data, sampling problem, output."""
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
        type=float_or_inf,
        default=0.002,
        help="final noise level; the sampler stops there (default %(default)s, EDM's; 0 = clean sample)",
    )
    g.add_argument(
        "--sigma-max",
        type=float_or_inf,
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
