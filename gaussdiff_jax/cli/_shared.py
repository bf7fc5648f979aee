"""What every subcommand shares: user errors, spectra, samplers, output paths and helpers, argument groups."""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._core._errors import checks_as_nan

PROG = "gaussdiff"
EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


@functools.cache
def gdj():
    """The package, with float64 switched on first (importing it creates no arrays)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import gaussdiff_jax

    return gaussdiff_jax


_CACHE_DIR: list[Path] = []  # where this run keeps what it computes once per machine (empty: nowhere)


def compile_cache_dir() -> Path | None:
    """Where compilations are cached (see `gaussdiff_jax.cli`), or `None` when turned off by the environment."""
    if os.environ.get("GAUSSDIFF_NO_COMPILE_CACHE", "") not in ("", "0"):
        return None
    if os.environ.get("GAUSSDIFF_CACHE_DIR"):
        return Path(os.environ["GAUSSDIFF_CACHE_DIR"]) / "jax"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gaussdiff_jax" / "jax"


def use_cache_dir(path: Path | None):
    _CACHE_DIR[:] = [] if path is None else [path]


def cache_dir() -> Path | None:
    """The gaussdiff cache folder of this run (`None` with --no-compile-cache)."""
    return _CACHE_DIR[0] if _CACHE_DIR else None


@contextlib.contextmanager
def runtime_checks(enabled: bool):
    """The package's checks inside compiled code on (run-time errors) or as NaN, for what is traced meanwhile.

    A program holding a run-time check holds a host callback, and JAX's persistent compilation cache does
    not store those: with the checks on, every run of the command recompiles its sweeps and its optimizer
    step. The command therefore traces under `gdj`'s `checks_as_nan` when the cache is on (a failed check
    makes the value NaN), checks the results itself (a non-finite value is a failure) and re-runs a failed
    case with the checks on to get the engine's message. Checks on concrete values (outside jit) raise either way.
    """
    if enabled:
        yield
        return
    with checks_as_nan():
        yield


# ----------------------------------------------------------------------------------------------
# Spectra


def load_spectrum(spec: str) -> tuple[str, np.ndarray]:
    """A bundled spectrum name or a path to a `.npy` / `.txt` / `.csv` file of eigenvalues.

    **Returns:** `(label, eigenvalues)` with eigenvalues a float64 array of shape `(d,)`.
    **Raises:** `CLIError` with what to do, for unknown names and malformed files.
    """
    names = gdj().spectra.available()
    if spec in names:
        return spec, np.asarray(gdj().spectra.load(spec), dtype=np.float64)
    path = Path(spec)
    if not path.suffix:
        raise CLIError(
            f"unknown spectrum {spec!r}: give a bundled name ({', '.join(names)}) "
            "or a .npy / .txt file of covariance eigenvalues"
        )
    if not path.is_file():
        raise CLIError(f"spectrum file {spec!r} not found (bundled names: {', '.join(names)})")
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
# Samplers: the package's registry (a sampler registered there appears here with no CLI change)


def _takes_eta(cls) -> bool:
    return "eta" in inspect.signature(cls.__init__).parameters


def make_sampler(name: str, eta: float = 0.0):
    """`(registered name, sampler)` for `name` (case-insensitive, aliases allowed); `eta` for samplers taking it."""
    samplers = gdj().samplers
    try:
        entry = samplers.entry(name)
    except ValueError:
        raise CLIError(f"unknown sampler {name!r}; choose one of: {', '.join(samplers.available())}") from None
    takes_eta = _takes_eta(entry.cls)
    if eta != 0.0 and not takes_eta:
        with_eta = [n for n in samplers.available() if _takes_eta(samplers.entry(n).cls)]
        raise CLIError(f"--eta applies to {', '.join(with_eta)} only (got --eta {eta} with {name!r})")
    if not 0.0 <= eta <= 1.0:
        raise CLIError(f"--eta must lie in [0, 1]; got {eta}")
    try:
        return entry.name, samplers.make(entry.name, **({"eta": float(eta)} if takes_eta else {}))
    except ValueError as error:
        raise CLIError(one_line(error)) from None


def sampler_eta(name: str, eta: float) -> float:
    """`eta` for a sampler of a list that takes it, else 0 (`--eta` in compare / sweep)."""
    try:
        return eta if _takes_eta(gdj().samplers.entry(name).cls) else 0.0
    except ValueError:
        return 0.0


def sampler_help() -> list[tuple[str, str]]:
    """`(name, one line)` for every registered sampler, with its cost and variable from the class facts."""
    out = []
    for name in gdj().samplers.available():
        entry = gdj().samplers.entry(name)
        where = "in t, uses beta(t)" if entry.cls.needs_beta else "in sigma, sees only the noise levels"
        out.append((name, f"{entry.description} [{entry.cls.evaluations_per_step} NFE/step, {where}]"))
    return out


def steps_for_nfe(sampler, nfe: int, *, ends_clean: bool) -> int:
    if nfe < 1:
        raise CLIError(f"--nfe must be a positive integer; got {nfe}")
    try:
        return int(gdj().grids.steps_for_nfe(sampler, nfe, ends_clean=ends_clean))
    except ValueError as error:
        raise CLIError(one_line(error)) from None


# ----------------------------------------------------------------------------------------------
# Output paths: checked before any computation, so that a bad --out never costs a finished run


def output_dir(path: str, what: str) -> Path:
    """Create (if needed) and return the output folder `path`; `CLIError` if it cannot hold `what`."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {path!r} is an existing file; give a folder for {what}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"cannot create the --out folder {path!r} ({error.strerror or error})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"the --out folder {path!r} is not writable")
    return out


def output_file(path: str, example: str) -> Path:
    """The output file `path` (its folder created); `CLIError` if it is a folder or cannot be written."""
    out = Path(path)
    if out.is_dir():
        raise CLIError(f"--out {path!r} is a folder; give a file name (e.g. {Path(path) / example})")
    if str(out.parent) not in ("", "."):
        output_dir(str(out.parent), "the output file")
    if out.exists() and not os.access(out, os.W_OK):
        raise CLIError(f"--out {path!r} is not writable")
    return out


# ----------------------------------------------------------------------------------------------
# Printing


def finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def fmt(x: float | None, digits: int = 6) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def write_json(path: Path, doc: dict):
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


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class _Progress:
    """A rich progress display on stderr: a spinner with elapsed time, or a bar when `total` is known."""

    def __init__(self, label: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = [SpinnerColumn(), TextColumn(label)]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn("{task.fields[text]}"), TimeElapsedColumn()]
        self._progress = Progress(*columns, console=_stderr_console(), transient=True)
        self._task = self._progress.add_task(label, total=total, text="")

    def update(self, text: str = "", advance: int = 0):
        self._progress.update(self._task, text=text, advance=advance)


class _NoProgress:
    def update(self, text: str = "", advance: int = 0):
        pass


@contextlib.contextmanager
def progress(args, label: str, total: int | None = None):
    """Progress on stderr while a computation runs; off with `--quiet` / `--no-progress` or off a terminal."""
    shown = not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))
    if not shown or not _stderr_console().is_terminal:
        yield _NoProgress()
        return
    bar = _Progress(label, total)
    with bar._progress:
        yield bar


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


@contextlib.contextmanager
def phase(name: str):
    """With `GAUSSDIFF_TIMING=1`, print the wall and CPU seconds of a part of a run on stderr."""
    if not os.environ.get("GAUSSDIFF_TIMING"):
        yield
        return
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sys.stderr.write(f"{PROG} timing: {name}: {wall:.2f} s wall, {cpu:.2f} s CPU\n")


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


def spectrum_help() -> str:
    return f"a bundled name ({', '.join(gdj().spectra.available())}) or a .npy / .txt / .csv file of eigenvalues"


def add_problem_options(parser: argparse.ArgumentParser, *, sampler: bool = True, spectrum: bool = True):
    """The options every computing subcommand shares: data, sampling problem, output."""
    g = parser.add_argument_group("data")
    if spectrum:
        g.add_argument(
            "--spectrum",
            default="cifar10",
            metavar="NAME|FILE",
            help=f"covariance spectrum: {spectrum_help()} (default: %(default)s)",
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
            help=f"{', '.join(gdj().samplers.available())} (default: %(default)s; list below)",
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
        help="initial noise level (default %(default)s; 'inf' starts at alpha_bar = 0: samplers in sigma only, "
        "on schedules that reach it)",
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
    add_output_options(parser)


def add_output_options(
    parser: argparse.ArgumentParser, *, progress: bool = True, quiet: str = "print nothing but errors"
):
    g = parser.add_argument_group("output")
    g.add_argument("--quiet", action="store_true", help=quiet)
    if progress:
        g.add_argument("--no-progress", action="store_true", help="no progress display (on stderr)")
    g.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use the compilation cache on disk (see 'gaussdiff --help'; or set GAUSSDIFF_NO_COMPILE_CACHE=1)",
    )
