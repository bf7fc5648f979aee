"""The plotting helpers: the drawn data are the library's numbers, files are written, bad input is refused."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_schedules_draws_the_schedule_and_grid_values(tmp_path):
    lin, tan = gdj.LinearBeta(), gdj.Tangent(0.5)
    ts = np.array([0.9, 0.5, 0.3, 0.2, 0.05])
    path = tmp_path / "sub" / "schedules.png"
    fig = gdj.plot_schedules({"linear": lin, "tangent grid": (tan, ts)}, highlight="tangent grid", path=path)
    ax = fig.axes[0]
    lines = lines_by_label(ax)
    # A bare schedule: sigma(t) against 1 - t.
    x, y = lines["linear"].get_data()
    np.testing.assert_allclose(y, np.asarray(lin.sigma(jnp.asarray(1.0 - x))), rtol=1e-12)
    # A grid: the levels it visits at positions k/N.
    x, y = lines["tangent grid"].get_data()
    np.testing.assert_allclose(x, np.arange(5) / 4)
    np.testing.assert_allclose(y, np.asarray(tan.sigma(jnp.asarray(ts))), rtol=1e-12)
    assert lines["tangent grid"].get_linewidth() > lines["linear"].get_linewidth()
    assert ax.get_yscale() == "log"
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_schedules_log_snr_optimum_and_infinite_ends():
    tan = gdj.Tangent(1.0)  # sigma = inf at t = 1, 0 at t = 0: neither can be drawn on a log axis
    fig = gdj.plot_schedules({"grid": (tan, np.linspace(1.0, 0.0, 5))}, optimum={"optimum": tan})
    ax = fig.axes[0]
    x, y = lines_by_label(ax)["grid"].get_data()
    np.testing.assert_allclose(x, [0.25, 0.5, 0.75])  # the two infinite / zero ends are left out
    assert np.all(np.isfinite(y)) and np.all(y > 0)
    assert lines_by_label(ax)["optimum"].get_linestyle() == "--"
    fig = gdj.plot_schedules({"cosine": gdj.Cosine()}, quantity="log_snr")
    x, y = lines_by_label(fig.axes[0])["cosine"].get_data()
    np.testing.assert_allclose(y, np.asarray(gdj.Cosine().log_snr(jnp.asarray(1.0 - x))), rtol=1e-12)
    assert fig.axes[0].get_yscale() == "linear"


def test_plot_error_vs_nfe_sorts_and_matches_predictions(tmp_path):
    results = {"ddim": ([40, 10, 20], [0.1, 1.6, 0.4]), "heun": ([10, 20], [0.0, 0.05])}
    fig = gdj.plot_error_vs_nfe(
        results,
        predictions={"ddim": ([10, 20, 40], [1.5, 0.375, 0.09375])},
        quantity="KL",
        path=tmp_path / "nfe.png",
    )
    ax = fig.axes[0]
    lines = lines_by_label(ax)
    np.testing.assert_allclose(lines["ddim"].get_xdata(), [10, 20, 40])
    np.testing.assert_allclose(lines["ddim"].get_ydata(), [1.6, 0.4, 0.1])
    np.testing.assert_allclose(lines["heun"].get_xdata(), [20])  # KL = 0 has no place on a log axis
    pred = lines["ddim: leading term"]
    assert pred.get_linestyle() == ":" and pred.get_color() == lines["ddim"].get_color()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_ylabel() == "KL divergence (nats)"
    assert "KL" in ax.get_title()  # a default title says what is drawn
    assert (tmp_path / "nfe.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_error_spectrum_uses_the_per_mode_divergence(tmp_path):
    lam = np.array([2.0, 0.0, 0.5, 1e-3, 8.0])
    src = gdj.GaussianSource(lam)
    law = gdj.sample_law(src, gdj.EDM(0.002, 80.0, 7.0), gdj.DDIM(), jnp.linspace(1.0, 0.0, 6))
    per_mode = np.asarray(gdj.kl(src, law, target="truncated", reduce=False))
    fig = gdj.plot_error_spectrum(lam, {"ddim": per_mode}, path=tmp_path / "spec.png")
    (line,) = fig.axes[0].get_lines()
    order = np.argsort(lam)[::-1][:4]  # positive eigenvalues, largest first
    np.testing.assert_allclose(line.get_xdata(), lam[order])
    np.testing.assert_allclose(line.get_ydata(), per_mode[order], rtol=1e-12)
    assert "1 modes with eigenvalue 0" in line.get_label()
    assert f"total KL = {per_mode.sum():.4g}" in line.get_label()  # the divergence itself, in the legend
    assert fig.axes[0].get_title() and "nats" in fig.axes[0].get_ylabel()
    fig = gdj.plot_error_spectrum(lam, per_mode, cumulative=True)
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), np.cumsum(per_mode[order]) / per_mode.sum(), rtol=1e-12)


def test_error_vs_nfe_groups_sampler_and_schedule_labels():
    # As `gaussdiff compare` labels its curves: colour = schedule, line style and marker = sampler.
    samplers, schedules = ["ddim", "heun", "euler", "edm-heun"], ["edm", "tangent", "cosine"]
    results = {
        f"{a} / {b}": ([10, 20, 40], [3.0 + i, 1.0 + i, 0.5 + i])
        for i, (a, b) in enumerate((a, b) for a in samplers for b in schedules)
    }
    predictions = {f"ddim / {b}": ([10, 20, 40], [2.0, 0.5, 0.125]) for b in schedules}
    fig = gdj.plot_error_vs_nfe(results, predictions=predictions)
    ax = fig.axes[0]
    lines = lines_by_label(ax)
    for a in samplers:
        for b in schedules:
            line = lines[f"{a} / {b}"]
            assert line.get_color() == lines[f"ddim / {b}"].get_color()
            assert (line.get_linestyle(), line.get_marker()) == (
                lines[f"{a} / edm"].get_linestyle(),
                lines[f"{a} / edm"].get_marker(),
            )
    assert len({lines[f"ddim / {b}"].get_color() for b in schedules}) == 3
    assert len({(lines[f"{a} / edm"].get_linestyle(), lines[f"{a} / edm"].get_marker()) for a in samplers}) == 4
    # The legend names each schedule and each sampler once (not 24 entries), and sits outside the axes.
    legend = ax.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == schedules + samplers + ["leading-term prediction"]
    assert legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x1 - 1


def test_many_plain_labels_get_distinct_styles():
    results = {f"curve {i}": ([10, 20], [1.0 + i, 0.5 + i]) for i in range(24)}
    ax = gdj.plot_error_vs_nfe(results).axes[0]
    styles = {(line.get_color(), str(line.get_linestyle()), line.get_marker()) for line in ax.get_lines()}
    assert len(styles) == 24


def test_figures_display_in_jupyter_without_pyplot():
    formatter = pytest.importorskip("IPython.core.formatters").DisplayFormatter()
    fig = gdj.plot_schedules({"cosine": gdj.Cosine()})
    data, _ = formatter.format(fig)  # what IPython / Jupyter puts in a cell's output
    assert data["image/png"][:8] == PNG_SIGNATURE
    # ... and in a fresh interpreter, plotting never imports pyplot (no global figure list to leak into).
    code = (
        "import sys, gaussdiff_jax as gdj; gdj.plot_schedules({'c': gdj.Cosine()}); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_plots_draw_into_given_axes_and_leave_the_backend_alone():
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    fig = Figure()
    ax = fig.add_subplot()
    out = gdj.plot_error_vs_nfe({"a": ([1, 2], [1.0, 0.5])}, ax=ax)
    assert out is fig and len(ax.get_lines()) == 1
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gdj.plot_schedules({}), "nothing to plot"),
        (lambda: gdj.plot_schedules({"a": gdj.Cosine()}, quantity="beta"), "quantity"),
        (lambda: gdj.plot_schedules({"a": (gdj.Cosine(), [0.5])}), "at least 2 points"),
        (lambda: gdj.plot_error_vs_nfe({"a": ([1, 2], [1.0])}), "same length"),
        (lambda: gdj.plot_error_vs_nfe({}), "nothing to plot"),
        (lambda: gdj.plot_error_spectrum(np.ones(3), np.ones(4)), "shape"),
    ],
)
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, gaussdiff_jax; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
