r"""Plots of schedules, error-vs-NFE curves and per-eigenvalue error spectra (matplotlib).

Every function draws into a new figure rendered by the Agg backend (headless: nothing is shown, no
display is needed, and matplotlib's global backend is left alone), or into the `ax` you pass (then
your figure and backend are used). Pass `path=` to save a PNG/PDF/SVG. Each returns the
`matplotlib.figure.Figure`, which notebooks display inline.

matplotlib is imported when a function is called, never when `gaussdiff_jax` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np


def _figure_and_axes(ax, figsize):
    """A new Agg-backed figure (no pyplot, no global backend switch), or `ax` and its figure."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(fig, path, dpi):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


def _curve_values(schedule, t: np.ndarray, quantity: str) -> np.ndarray:
    import jax.numpy as jnp

    t = jnp.asarray(t)
    if quantity == "sigma":
        values = schedule.sigma(t)
    elif quantity == "log_snr":
        values = schedule.log_snr(t)
    else:
        raise ValueError(f"quantity must be 'sigma' or 'log_snr'; got {quantity!r}.")
    return np.asarray(values, dtype=np.float64)


def plot_schedules(
    schedules: Mapping[str, Any],
    *,
    quantity: Literal["sigma", "log_snr"] = "sigma",
    optimum: Mapping[str, Any] | None = None,
    highlight: str | None = None,
    ax=None,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = 120,
):
    r"""Noise level $\sigma$ (log axis) or log-SNR along the sampling run, for several schedules or grids.

    **Arguments:**

    - `schedules`: `{label: schedule}` or `{label: (schedule, ts)}`. A bare schedule is drawn as a curve
      against $1 - t$ for $t$ from 1 to 0 (sampling runs from noise to data, left to right); a pair draws
      the grid's levels $\sigma(t_k)$ at the positions $k/N$, $k = 0..N$ (the levels the sampler visits).
      For a uniform grid on $[0, 1]$ both coincide, so grids and schedules share one axis.
    - `quantity`: `"sigma"` (log scale) or `"log_snr"` ($\ell = -2\log\sigma$, linear scale).
    - `optimum`: the same kind of mapping, drawn dashed in black (e.g. the analytic optimum).
    - `highlight`: a label of `schedules` drawn thicker (e.g. the optimized one).
    - `ax`: draw into these matplotlib axes instead of a new figure.
    - `title`, `path` (save the figure there), `figsize`, `dpi`.

    Infinite or zero levels ($\sigma = \infty$ at $\bar\alpha = 0$, $\sigma = 0$ at the data) cannot be drawn
    on a log axis and are left out.

    **Returns:** the `matplotlib.figure.Figure`.
    """
    if not schedules and not optimum:
        raise ValueError("plot_schedules: nothing to plot (give at least one schedule).")
    if quantity not in ("sigma", "log_snr"):
        raise ValueError(f"plot_schedules: quantity must be 'sigma' or 'log_snr'; got {quantity!r}.")
    fig, ax = _figure_and_axes(ax, figsize)

    def draw(label, item, style):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"plot_schedules: {label!r} must be a schedule or a (schedule, ts) pair.")
            schedule, ts = item
            ts = np.asarray(ts, dtype=np.float64)
            if ts.ndim != 1 or ts.shape[0] < 2:
                raise ValueError(f"plot_schedules: the grid of {label!r} must be 1-D with at least 2 points.")
            x = np.arange(ts.shape[0]) / (ts.shape[0] - 1)
            y = _curve_values(schedule, ts, quantity)
            marker = "o"
        else:
            t = np.linspace(1.0, 0.0, 401)
            x = 1.0 - t
            y = _curve_values(item, t, quantity)
            marker = None
        keep = np.isfinite(y) & ((y > 0) if quantity == "sigma" else True)
        ax.plot(x[keep], y[keep], marker=marker, markersize=4 if marker else 0, label=label, **style)

    for label, item in schedules.items():
        style = {"linewidth": 2.6, "zorder": 3} if label == highlight else {"linewidth": 1.3, "alpha": 0.85}
        draw(label, item, style)
    for label, item in (optimum or {}).items():
        draw(label, item, {"color": "black", "linestyle": "--", "linewidth": 1.5})
    if quantity == "sigma":
        ax.set_yscale("log")
        ax.set_ylabel(r"noise level $\sigma$")
    else:
        ax.set_ylabel(r"log-SNR $\ell = -2\log\sigma$")
    ax.set_xlabel(r"sampling progress $k/N$ (= $1 - t$ for a uniform grid on [0, 1])")
    ax.set_xlim(0.0, 1.0)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path, dpi)


def _as_xy(item, label: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise ValueError(f"plot_error_vs_nfe: {label!r} must be a pair (nfe, values).")
    x = np.asarray(item[0], dtype=np.float64)
    y = np.asarray(item[1], dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"plot_error_vs_nfe: {label!r} needs 1-D nfe and values of the same length.")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    order = np.argsort(x[keep])
    return x[keep][order], y[keep][order]


def plot_error_vs_nfe(
    results: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    predictions: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    quantity: str = "KL",
    ax=None,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] = (6.5, 4.5),
    dpi: int = 120,
):
    r"""Errors against the number of network evaluations, on log-log axes.

    **Arguments:**

    - `results`: `{label: (nfe, values)}`, drawn as solid lines with markers.
    - `predictions`: `{label: (nfe, values)}`, e.g. the leading term $\frac1{4N^2}\sum_iI_i^2$ of
      `gdj.kl_leading_term`; drawn dashed, in the colour of the result with the same label (else grey).
    - `quantity`: the y-axis label (`"KL"`, `"W2"`, ...).
    - `ax`, `title`, `path`, `figsize`, `dpi` as in `plot_schedules`.

    Non-positive or non-finite points are left out (they have no place on a log axis).

    **Returns:** the `matplotlib.figure.Figure`.
    """
    if not results:
        raise ValueError("plot_error_vs_nfe: nothing to plot (results is empty).")
    fig, ax = _figure_and_axes(ax, figsize)
    colors = {}
    ticks: set[float] = set()
    for label, item in results.items():
        x, y = _as_xy(item, label)
        (line,) = ax.plot(x, y, marker="o", markersize=4, label=label)
        colors[label] = line.get_color()
        ticks.update(float(v) for v in x)
    for label, item in (predictions or {}).items():
        x, y = _as_xy(item, label)
        ax.plot(x, y, linestyle="--", linewidth=1.2, color=colors.get(label, "0.4"), label=f"{label}: leading term")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if 0 < len(ticks) <= 12:
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

        # Label the budgets that were run, in plain numbers, instead of decades.
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(quantity)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path, dpi)


def plot_error_spectrum(
    eigenvalues,
    contributions,
    *,
    quantity: str = "KL",
    cumulative: bool = False,
    ax=None,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] = (6.5, 4.5),
    dpi: int = 120,
):
    r"""Per-eigenvalue error contributions against the eigenvalue, on log-log axes.

    **Arguments:**

    - `eigenvalues`: shape `(d,)` (a `GaussianSource`'s eigenvalues or a numpy array).
    - `contributions`: an array `(d,)` or `{label: array (d,)}`, e.g. `gdj.kl(src, law, reduce=False)` or
      `gdj.w2_squared(src, law, reduce=False)`.
    - `quantity`: y-axis label.
    - `cumulative`: plot the running sum from the largest eigenvalue down, as a fraction of the total
      (which eigenvalues carry the error), instead of the per-mode values.
    - `ax`, `title`, `path`, `figsize`, `dpi` as in `plot_schedules`.

    Modes with eigenvalue 0 have no place on a log axis; their number and their summed contribution
    are given in the legend.

    **Returns:** the `matplotlib.figure.Figure`.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"plot_error_spectrum: eigenvalues must be a non-empty 1-D array; got shape {lam.shape}.")
    series = contributions if isinstance(contributions, Mapping) else {quantity: contributions}
    if not series:
        raise ValueError("plot_error_spectrum: nothing to plot (contributions is empty).")
    fig, ax = _figure_and_axes(ax, figsize)
    positive = lam > 0
    order = np.argsort(lam[positive])[::-1]
    x = lam[positive][order]
    for label, values in series.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != lam.shape:
            raise ValueError(
                f"plot_error_spectrum: contributions {label!r} have shape {values.shape}, eigenvalues {lam.shape}."
            )
        zero_part = float(np.sum(values[~positive]))
        extra = ""
        if np.any(~positive):
            extra = f" [{int(np.sum(~positive))} modes with eigenvalue 0 not shown, sum {zero_part:.3g}]"
        y = values[positive][order]
        if cumulative:
            total = float(np.sum(values))
            y = np.cumsum(y) / total if total > 0 else np.zeros_like(y)
            ax.plot(x, y, label=label + extra)
        else:
            keep = np.isfinite(y) & (y > 0)
            ax.plot(x[keep], y[keep], linewidth=1.0, marker=".", markersize=2, label=label + extra)
    ax.set_xscale("log")
    if not cumulative:
        ax.set_yscale("log")
        ax.set_ylabel(f"{quantity} contribution per mode")
    else:
        ax.set_ylabel(f"fraction of {quantity} from modes with eigenvalue >= x")
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(r"eigenvalue $\lambda_i$")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(fig, path, dpi)
