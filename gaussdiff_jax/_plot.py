r"""Plots of schedules, error-vs-NFE curves and per-eigenvalue error spectra (matplotlib).

Every function draws into a new figure on its own Agg canvas, never through `matplotlib.pyplot`
(headless: no display needed, matplotlib's global backend and pyplot's list of figures are left alone),
or into the `ax` you pass (then your figure and backend are used). Pass `path=` to save a PNG/PDF/SVG.
Each returns the `matplotlib.figure.Figure`; in Jupyter, a cell whose value it is shows it inline (the
figure has a `_repr_png_`), in a script nothing is shown.

Every plot has a title (a default one says what is drawn) and axis labels with units: noise levels
$\sigma$ in data units ($x_t/\sqrt{\bar\alpha} = x_0 + \sigma z$), eigenvalues in data units squared,
KL in nats.

matplotlib is imported when a function is called, never when `gaussdiff_jax` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Axis labels with units. sigma is in data units (x_t / sqrt(alpha_bar) = x_0 + sigma z), eigenvalues are
# variances (data units squared), KL is in nats.
_PRETTY = {"W2": "$W_2$", "W2^2": "$W_2^2$", "w2": "$W_2$", "w2_squared": "$W_2^2$"}
_UNITS = {"$W_2$": "data units", "$W_2^2$": "data units$^2$"}
_MARKERS = "os^Dv<>PX*hp"
_LINESTYLES = ["-", (0, (5, 2)), "-.", (0, (8, 2, 1, 2, 1, 2)), (0, (2, 1))]


def _pretty(quantity: str) -> str:
    """`"W2^2"` -> `"$W_2^2$"` (mathtext); other names unchanged."""
    return _PRETTY.get(quantity, quantity)


def _units(quantity: str) -> str | None:
    name = _pretty(quantity)
    if name.upper().startswith("KL"):
        return "nats"
    return _UNITS.get(name)


def _quantity_label(quantity: str, what: str = "") -> str:
    """An axis label with units: `"KL"` -> `"KL divergence (nats)"`, `"W2"` -> `"$W_2$ (data units)"`."""
    name = "KL divergence" if quantity == "KL" else _pretty(quantity)
    units = _units(quantity)
    return f"{name}{what}" + (f" ({units})" if units else "")


def _colors(n: int) -> list:
    """n distinct colours: tab10 up to 10, tab20 beyond (its pairs differ in lightness)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _figure_and_axes(ax, figsize):
    """A new `PlotFigure` (Agg canvas, no pyplot), or `ax` and its figure."""
    if ax is not None:
        return ax.figure, ax
    from ._figure import PlotFigure

    fig = PlotFigure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _legend(ax, handles=None, *, outside: bool):
    """The legend inside the axes, or to their right (for many entries) where it hides no curve."""
    kwargs = {} if handles is None else {"handles": handles}
    if outside:
        return ax.legend(**kwargs, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return ax.legend(**kwargs, fontsize=8)


def _finish(fig, path, dpi):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A constrained layout already fits the labels; "tight" would lay the figure out a second time.
        fig.savefig(path, dpi=dpi, bbox_inches=None if fig.get_layout_engine() is not None else "tight")
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
    figsize: tuple[float, float] | None = None,
    dpi: int = 120,
):
    r"""Noise level $\sigma$ (log axis) or log-SNR along the sampling run, for several schedules or grids.

    **Arguments:**

    - `schedules`: `{label: schedule}` or `{label: (schedule, ts)}`. A bare schedule is drawn as a curve
      against $1 - t$ for $t$ from 1 to 0 (sampling runs from noise to data, left to right); a pair draws
      the grid's levels $\sigma(t_k)$ at the positions $k/N$, $k = 0..N$ (the levels the sampler visits).
      For a uniform grid on $[0, 1]$ both coincide, so grids and schedules share one axis.
    - `quantity`: `"sigma"` (log scale, data units) or `"log_snr"` ($\ell = -2\log\sigma$, linear scale).
    - `optimum`: the same kind of mapping, drawn dashed in black (e.g. the analytic optimum).
    - `highlight`: a label of `schedules` drawn thicker (e.g. the optimized one).
    - `ax`: draw into these matplotlib axes instead of a new figure.
    - `title` (default: what is drawn), `path` (save the figure there; PNG, PDF, SVG by extension),
      `figsize` (inches; default 6.5 x 4.5, wider when the legend goes to the right of the axes), `dpi`
      (of the saved file).

    Every curve gets its own colour (tab10, tab20 beyond ten); with more than six curves the legend
    moves outside the axes. Infinite or zero levels ($\sigma = \infty$ at $\bar\alpha = 0$, $\sigma = 0$
    at the data) cannot be drawn on a log axis and are left out.

    **Returns:** the `matplotlib.figure.Figure` (displayed inline by Jupyter when it is a cell's value).
    """
    if not schedules and not optimum:
        raise ValueError("plot_schedules: nothing to plot (give at least one schedule).")
    if quantity not in ("sigma", "log_snr"):
        raise ValueError(f"plot_schedules: quantity must be 'sigma' or 'log_snr'; got {quantity!r}.")
    outside = len(schedules) + len(optimum or {}) > 6
    fig, ax = _figure_and_axes(ax, figsize or ((9.0 if outside else 6.5), 4.5))
    colors = _colors(len(schedules))
    for color, (label, item) in zip(colors, schedules.items()):
        style = {"linewidth": 2.6, "zorder": 3} if label == highlight else {"linewidth": 1.3, "alpha": 0.9}
        _draw_schedule(ax, label, item, quantity, color=color, **style)
    for label, item in (optimum or {}).items():  # on top: an optimum is often right under a learned curve
        _draw_schedule(ax, label, item, quantity, color="black", linestyle="--", linewidth=1.5, zorder=4)
    if quantity == "sigma":
        ax.set_yscale("log")
        ax.set_ylabel(r"noise level $\sigma$ (data units, log scale)")
    else:
        ax.set_ylabel(r"log-SNR $\ell = -2\log\sigma$")
    ax.set_xlabel(r"sampling progress $k/N$ (= $1 - t$ for a uniform grid on [0, 1])")
    ax.set_xlim(0.0, 1.0)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, outside=outside)
    default = "Noise levels" if quantity == "sigma" else "Log-SNR"
    ax.set_title(title or f"{default} along the sampling run, from noise (left) to data (right)", fontsize=10)
    return _finish(fig, path, dpi)


def _draw_schedule(ax, label, item, quantity, **style):
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"plot_schedules: {label!r} must be a schedule or a (schedule, ts) pair.")
        schedule, ts = item
        ts = np.asarray(ts, dtype=np.float64)
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(f"plot_schedules: the grid of {label!r} must be 1-D with at least 2 points.")
        x = np.arange(ts.shape[0]) / (ts.shape[0] - 1)
        y = _curve_values(schedule, ts, quantity)
        style.update(marker="o", markersize=4)
    else:
        t = np.linspace(1.0, 0.0, 401)
        x = 1.0 - t
        y = _curve_values(item, t, quantity)
    keep = np.isfinite(y) & ((y > 0) if quantity == "sigma" else True)
    ax.plot(x[keep], y[keep], label=label, **style)


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


def _split_label(label) -> tuple[str, str] | None:
    """`(style group, colour group)` of a label `(a, b)` or `"a / b"`, else None."""
    if isinstance(label, tuple) and len(label) == 2:
        return str(label[0]), str(label[1])
    if isinstance(label, str) and label.count(" / ") == 1:
        a, b = label.split(" / ")
        return a, b
    return None


def _nfe_styles(labels: list) -> tuple[dict, list | None]:
    """The colour, line style and marker of each label, and the legend handles when labels are grouped.

    Grouped labels (`"sampler / schedule"` or pairs): colour = the second part, line style and marker =
    the first, and a legend listing each part once. Otherwise one colour per label (and, past ten labels,
    a line style and marker per block of ten), with the ordinary legend (handles None).
    """
    from matplotlib.lines import Line2D

    parts = [_split_label(label) for label in labels]
    if not labels or any(p is None for p in parts):
        colors = _colors(len(labels))
        block = [i // 10 for i in range(len(labels))]  # past ten colours, change the line style and marker
        styles = {
            label: {"color": c, "linestyle": _LINESTYLES[b % len(_LINESTYLES)], "marker": _MARKERS[b % len(_MARKERS)]}
            for label, c, b in zip(labels, colors, block)
        }
        return styles, None
    firsts = list(dict.fromkeys(p[0] for p in parts))
    seconds = list(dict.fromkeys(p[1] for p in parts))
    color_of = dict(zip(seconds, _colors(len(seconds))))
    look_of = {a: (_LINESTYLES[i % len(_LINESTYLES)], _MARKERS[i % len(_MARKERS)]) for i, a in enumerate(firsts)}
    styles = {}
    for label, (a, b) in zip(labels, parts):
        styles[label] = {"color": color_of[b], "linestyle": look_of[a][0], "marker": look_of[a][1]}
    handles = [Line2D([], [], color=color_of[b], linewidth=2.5, label=b) for b in seconds]
    handles += [Line2D([], [], color="0.25", linestyle=ls, marker=m, label=a) for a, (ls, m) in look_of.items()]
    return styles, handles


def plot_error_vs_nfe(
    results: Mapping[Any, tuple[Sequence[float], Sequence[float]]],
    *,
    predictions: Mapping[Any, tuple[Sequence[float], Sequence[float]]] | None = None,
    quantity: str = "KL",
    ax=None,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 120,
):
    r"""Errors against the number of network evaluations, on log-log axes.

    **Arguments:**

    - `results`: `{label: (nfe, values)}`, drawn as lines with markers. Labels of the form
      `"sampler / schedule"` (as `gaussdiff compare` writes them) or pairs `(sampler, schedule)` are
      grouped: colour = schedule, line style and marker = sampler, and the legend lists each schedule
      and each sampler once. Other labels get one distinct colour each.
    - `predictions`: `{label: (nfe, values)}`, e.g. the leading term $\frac1{4N^2}\sum_iI_i^2$ of
      `gdj.kl_leading_term`; drawn as thin dotted lines in the colour of the result with the same
      label (else grey).
    - `quantity`: what is plotted: `"KL"` (nats), `"W2"`, `"W2^2"` (data units) get labels with units;
      any other string is the y-axis label.
    - `ax`, `title` (default: the quantity against NFE), `path`, `figsize`, `dpi` as in `plot_schedules`.

    Non-positive or non-finite points are left out (they have no place on a log axis). With more than
    six legend entries the legend goes to the right of the axes.

    **Returns:** the `matplotlib.figure.Figure`.
    """
    if not results:
        raise ValueError("plot_error_vs_nfe: nothing to plot (results is empty).")
    data = {label: _as_xy(item, str(label)) for label, item in results.items()}
    predicted = {label: _as_xy(item, str(label)) for label, item in (predictions or {}).items()}
    styles, handles = _nfe_styles(list(data))
    entries = len(handles) if handles is not None else len(data) + len(set(predicted) - set(data))
    outside = entries + bool(predicted) > 6
    fig, ax = _figure_and_axes(ax, figsize or ((9.0 if outside else 6.5), 4.5))
    ticks: set[float] = set()
    for label, (x, y) in data.items():
        name = label if handles is None else " / ".join(_split_label(label))
        ax.plot(x, y, markersize=4.5, linewidth=1.5, label=str(name), **styles[label])
        ticks.update(float(v) for v in x)
    for label, (x, y) in predicted.items():
        color = styles[label]["color"] if label in styles else "0.4"
        ax.plot(x, y, linestyle=":", linewidth=1.3, color=color, label=f"{label}: leading term")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if 0 < len(ticks) <= 12:
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

        # Label the budgets that were run, in plain numbers, instead of decades.
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(_quantity_label(quantity))
    ax.grid(True, which="major", alpha=0.3)
    if handles is not None:
        if predicted:
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], color="0.25", linestyle=":", label="leading-term prediction"))
        _legend(ax, handles, outside=outside)
    else:
        _legend(ax, outside=outside)
    ax.set_title(title or f"{_pretty(quantity)} against the number of network evaluations", fontsize=10)
    return _finish(fig, path, dpi)


def _total_text(total: float, quantity: str) -> str:
    text = f"total {_pretty(quantity)} = {total:.4g}"
    if _pretty(quantity) == "$W_2^2$" and total >= 0:
        text += f" ($W_2$ = {np.sqrt(total):.4g})"
    return text


def plot_error_spectrum(
    eigenvalues,
    contributions,
    *,
    quantity: str = "KL",
    cumulative: bool = False,
    ax=None,
    title: str | None = None,
    path: str | Path | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 120,
):
    r"""Per-eigenvalue error contributions against the eigenvalue, on log-log axes.

    **Arguments:**

    - `eigenvalues`: shape `(d,)` (a `GaussianSource`'s eigenvalues or a numpy array), in data units
      squared.
    - `contributions`: an array `(d,)` or `{label: array (d,)}`, e.g. `gdj.kl(src, law, reduce=False)` or
      `gdj.w2_squared(src, law, reduce=False)`.
    - `quantity`: `"KL"` (nats) or `"W2^2"` (data units squared) get labels with units; any other
      string names the quantity in the labels.
    - `cumulative`: plot the running sum from the largest eigenvalue down, as a fraction of the total
      (which eigenvalues carry the error), instead of the per-mode values.
    - `ax`, `title` (default: the quantity per eigenvalue), `path`, `figsize`, `dpi` as in
      `plot_schedules`.

    The legend gives each curve's total (the sum over all modes, i.e. the divergence itself; for
    `"W2^2"` also $W_2$). Modes with eigenvalue 0 have no place on a log axis; their number and their
    summed contribution are given in the legend too.

    **Returns:** the `matplotlib.figure.Figure`.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError(f"plot_error_spectrum: eigenvalues must be a non-empty 1-D array; got shape {lam.shape}.")
    series = contributions if isinstance(contributions, Mapping) else {quantity: contributions}
    if not series:
        raise ValueError("plot_error_spectrum: nothing to plot (contributions is empty).")
    outside = len(series) > 4
    fig, ax = _figure_and_axes(ax, figsize or ((9.0 if outside else 6.5), 4.5))
    positive = lam > 0
    order = np.argsort(lam[positive])[::-1]
    x = lam[positive][order]
    for color, (label, values) in zip(_colors(len(series)), series.items()):
        values = np.asarray(values, dtype=np.float64)
        if values.shape != lam.shape:
            raise ValueError(
                f"plot_error_spectrum: contributions {label!r} have shape {values.shape}, eigenvalues {lam.shape}."
            )
        total = float(np.sum(values))
        text = f"{label}: {_total_text(total, quantity)}"
        if np.any(~positive):
            zero_part = float(np.sum(values[~positive]))
            text += f"\n[{int(np.sum(~positive))} modes with eigenvalue 0 not shown, sum {zero_part:.3g}]"
        y = values[positive][order]
        if cumulative:
            y = np.cumsum(y) / total if total > 0 else np.zeros_like(y)
            ax.plot(x, y, color=color, label=text)
        else:
            keep = np.isfinite(y) & (y > 0)
            ax.plot(x[keep], y[keep], color=color, linewidth=1.0, marker=".", markersize=2, label=text)
    ax.set_xscale("log")
    if not cumulative:
        ax.set_yscale("log")
        ax.set_ylabel(_quantity_label(quantity, " per mode").replace("KL divergence", "KL"))
    else:
        ax.set_ylabel(f"fraction of {_pretty(quantity)} from modes with eigenvalue $\\geq\\lambda$")
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(r"eigenvalue $\lambda_i$ (data units$^2$)")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, outside=outside)
    if not title:
        what = "Cumulative share of the " if cumulative else ""
        title = f"{what}{_pretty(quantity)} per eigenvalue of the data covariance"
    ax.set_title(title, fontsize=10)
    return _finish(fig, path, dpi)
