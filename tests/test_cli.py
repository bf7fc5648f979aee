"""End-to-end tests of the `gaussdiff` command: every subcommand in a temporary directory.

Each test runs `gaussdiff_jax.cli.main` in-process (one JAX start-up for the whole file), checks that
the files it promises exist and follow their schema, and recomputes its numbers with the public API.
One test runs the real console entry (`python -m gaussdiff_jax`) in a subprocess for the exit code.
"""

import csv
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj
from gaussdiff_jax import cli

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# In-process runs must not switch on JAX's persistent cache for the rest of the test session.
os.environ["GAUSSDIFF_NO_COMPILE_CACHE"] = "1"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, path


def api_errors(lam, schedule, sampler, ts, *, target="truncated", init="standard"):
    """The same numbers through the public API, with the general engine (never the DDIM closed form)."""
    src = gdj.GaussianSource(lam)
    law = gdj.sample_law(src, schedule, sampler, jnp.asarray(ts), init=init)
    return float(gdj.kl(src, law, target=target)), float(gdj.w2(src, law, target=target))


@pytest.fixture(scope="module")
def small_spectrum(tmp_path_factory):
    """A 40-mode power-law spectrum with two exact zeros, saved as .npy (like a user's file)."""
    lam = np.concatenate([3.0 * np.arange(1, 39) ** -1.3, [0.0, 0.0]])
    path = tmp_path_factory.mktemp("spectra") / "powerlaw.npy"
    np.save(path, lam)
    return path, lam


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """`optimize` for the KL (its Euler-Lagrange and tangent-law baselines are the KL's optima), shortened (6 steps,
    60 iterations) on the bundled CIFAR-10 spectrum."""
    out = tmp_path_factory.mktemp("quickstart")
    code = cli.main(
        [
            "optimize",
            "--divergence",
            "kl",
            "--spectrum",
            "cifar10",
            "--sampler",
            "ddim",
            "--steps",
            "6",
            "--iterations",
            "60",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


# ---------------------------------------------------------------------------------------------- optimize


def test_optimize_writes_schema_and_plot(quickstart):
    doc = json.loads((quickstart / "result.json").read_text())
    assert doc["command"] == "optimize"
    assert doc["spectrum"] == {
        "name": "cifar10",
        "dim": 3072,
        "num_zero": 9,
        "trace": pytest.approx(761.61955, rel=1e-6),
        "min": 0.0,
        "max": pytest.approx(221.4533, rel=1e-6),
        "floor": None,
    }
    problem = doc["problem"]
    assert problem["sampler"] == "ddim" and problem["num_steps"] == 6 and problem["nfe"] == 6
    assert problem["target"] == "truncated" and problem["init"] == "standard"
    assert problem["sigma_min"] == 0.002 and problem["sigma_max"] == 80.0
    opt = doc["optimization"]
    assert opt["parameterization"] == "grid" and opt["optimizer"] == "adam" and opt["iterations"] == 60
    # The optimizer starts from the best baseline (its schedule is the base) and never ends above it.
    assert len(opt["losses"]) == 61 and min(opt["losses"]) <= opt["losses"][0]
    names = [c["name"] for c in doc["candidates"]]
    assert names == ["optimized", "linear", "cosine", "edm", "tangent", "euler-lagrange"]
    for c in doc["candidates"]:
        assert set(c) >= {"name", "schedule", "times", "sigmas", "kl", "w2", "error", "note"}
        assert c["error"] is None
        assert len(c["times"]) == 7 and len(c["sigmas"]) == 7
        # Every candidate runs over the same noise range, so all are scored against the same target.
        assert c["sigmas"][0] == pytest.approx(80.0, rel=1e-7)
        assert c["sigmas"][-1] == pytest.approx(0.002, rel=1e-7)
        assert np.all(np.diff(c["times"]) < 0)
    kls = {c["name"]: c["kl"] for c in doc["candidates"]}
    assert opt["base_schedule"] == doc["best_baseline"] == min((v, k) for k, v in kls.items() if k != "optimized")[1]
    assert all(kls["optimized"] < v for k, v in kls.items() if k != "optimized")
    assert doc["ratio_to_best_baseline"] == pytest.approx(kls["optimized"] / kls[doc["best_baseline"]])
    # The loss ran on the spectrum's quadrature compression, which reproduces the exact KL of the start.
    assert opt["loss_modes"] == 204
    assert opt["losses"][0] == pytest.approx(kls[opt["base_schedule"]], rel=1e-9)
    assert_png(quickstart / "schedule.png")


def test_optimize_numbers_equal_the_api(quickstart):
    # The one JSON format: gdj.from_json rebuilds every candidate's grid and schedule.
    doc = gdj.from_json((quickstart / "result.json").read_text())
    lam = gdj.spectra.load("cifar10")
    by_name = {c["name"]: c for c in doc["candidates"]}
    for c in doc["candidates"]:
        kl, w2 = api_errors(lam, c["schedule"], gdj.DDIM(), c["times"])
        assert c["kl"] == pytest.approx(kl, rel=1e-9) and c["w2"] == pytest.approx(w2, rel=1e-9)
    # The optimized grid lives on the best baseline's schedule.
    assert type(by_name["optimized"]["schedule"]) is type(by_name[doc["best_baseline"]]["schedule"])
    # Baselines, independently: the tangent law with gamma* of lam + sigma_min^2, EDM on its uniform grid,
    # linear beta between t(80) and t(0.002).
    shifted = lam + 0.002**2
    gamma = (shifted.sum() / (1 / shifted).sum()) ** 0.25
    tangent = by_name["tangent"]["schedule"]
    assert isinstance(tangent, gdj.Tangent) and float(tangent.gamma) == pytest.approx(gamma, rel=1e-12)
    kl, w2 = api_errors(lam, gdj.EDM(0.002, 80.0, 7.0), gdj.DDIM(), np.linspace(1.0, 0.0, 7))
    assert by_name["edm"]["kl"] == pytest.approx(kl, rel=1e-9) and by_name["edm"]["w2"] == pytest.approx(w2, rel=1e-9)
    lin = by_name["linear"]
    sch = gdj.LinearBeta()
    np.testing.assert_allclose(np.asarray(sch.sigma(jnp.asarray(lin["times"])))[[0, -1]], [80.0, 0.002], rtol=1e-8)
    np.testing.assert_allclose(lin["times"], np.linspace(lin["times"][0], lin["times"][-1], 7), rtol=0, atol=1e-15)
    kl, _ = api_errors(lam, sch, gdj.DDIM(), lin["times"])
    assert lin["kl"] == pytest.approx(kl, rel=1e-9)
    el = by_name["euler-lagrange"]["schedule"]
    assert isinstance(el, gdj.SigmaFloor) and isinstance(el.base, gdj.EulerLagrangeSchedule) and el.sigma_min == 0.002


def test_optimize_schedule_parameterization_with_a_sampler_in_t(tmp_path, capsys, small_spectrum):
    path, lam = small_spectrum
    code, out, err = run(
        capsys,
        "optimize",
        "--spectrum",
        path,
        "--sampler",
        "euler",
        "--nfe",
        "4",
        "--param",
        "schedule",
        "--knots",
        "8",
        "--iterations",
        "25",
        "--baselines",
        "linear",
        "--out",
        tmp_path,
        "--no-progress",
    )
    assert code == 0, err
    assert "optimized" in out and "linear" in out
    doc = gdj.from_json((tmp_path / "result.json").read_text())
    assert doc["problem"]["num_steps"] == 4 and doc["problem"]["nfe"] == 4
    opt = doc["candidates"][0]
    schedule = opt["schedule"]
    # The warp reshapes the best baseline (here the only one, linear beta) between t(80) and t(0.002).
    assert isinstance(schedule, gdj.WarpedSchedule) and isinstance(schedule.base, gdj.SubInterval)
    assert isinstance(schedule.base.base, gdj.LinearBeta)
    assert np.ptp(np.asarray(schedule.warp.logits)) > 0.1  # it moved
    np.testing.assert_allclose(np.asarray(schedule.sigma(jnp.array([1.0, 0.0]))), [80.0, 0.002], rtol=1e-8)
    np.testing.assert_allclose(opt["times"], np.linspace(1, 0, 5), rtol=0, atol=0)
    kl, w2 = api_errors(lam, schedule, gdj.Euler(), opt["times"])
    assert opt["kl"] == pytest.approx(kl, rel=1e-9) and opt["w2"] == pytest.approx(w2, rel=1e-9)
    linear = doc["candidates"][1]
    assert linear["name"] == "linear" and linear["sigmas"][-1] == pytest.approx(0.002, rel=1e-9)
    assert opt["kl"] < linear["kl"]  # beats linear beta on a uniform grid over the same noise range
    assert_png(tmp_path / "schedule.png")


# ---------------------------------------------------------------------------------------------- eval


def test_eval_json_equals_api_in_float64_and_float32(tmp_path, capsys):
    code, out, err = run(capsys, "eval", "--sampler", "heun", "--schedule", "edm", "--nfe", "20", "--out", tmp_path)
    assert code == 0, err
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["num_steps"] == 10 and doc["nfe"] == 20 and doc["dtype"] == "float64"
    kl, w2 = api_errors(gdj.spectra.load("cifar10"), gdj.EDM(0.002, 80.0, 7.0), gdj.Heun(), np.linspace(1, 0, 11))
    assert doc["kl"] == pytest.approx(kl, rel=1e-10) and doc["w2"] == pytest.approx(w2, rel=1e-10)
    assert f"{kl:.6g}" in out
    assert_png(tmp_path / "error_spectrum.png")
    code, _, err = run(
        capsys, "eval", "--sampler", "heun", "--schedule", "edm", "--nfe", "20", "--float32", "--out", tmp_path / "f32"
    )
    assert code == 0, err
    doc32 = json.loads((tmp_path / "f32" / "eval.json").read_text())
    assert doc32["dtype"] == "float32"
    assert doc32["kl"] == pytest.approx(kl, rel=2e-3) and doc32["w2"] == pytest.approx(w2, rel=2e-3)


def test_eval_custom_times_and_singular_kl(tmp_path, capsys, small_spectrum):
    path, lam = small_spectrum
    code, out, err = run(
        capsys,
        "eval",
        "--spectrum",
        path,
        "--schedule",
        "linear",
        "--sigma-min",
        "0",
        "--times",
        "1,0.5,0.2,0.05,0",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "eval.json").read_text())
    # sigma_min = 0 targets p_0, where two zero eigenvalues make the KL infinite: reported as null.
    assert doc["problem"]["target"] == "data" and doc["kl"] is None and doc["grid"] == "custom"
    src = gdj.GaussianSource(lam)
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), jnp.array([1, 0.5, 0.2, 0.05, 0.0]))
    assert doc["w2"] == pytest.approx(float(gdj.w2(src, law, target="data")), rel=1e-10)
    assert "KL is infinite" in out


# ---------------------------------------------------------------------------------------------- compare


def test_compare_table_csv_and_plot(tmp_path, capsys, small_spectrum):
    path, lam = small_spectrum
    code, _, err = run(
        capsys,
        "compare",
        "--spectrum",
        path,
        "--samplers",
        "ddim,euler",
        "--schedules",
        "edm,tangent",
        "--nfe",
        "4,8",
        "--out",
        tmp_path,
    )
    assert code == 0, err
    with open(tmp_path / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {(r["sampler"], r["schedule"], r["nfe"]) for r in rows} == {
        (a, b, c) for a in ("ddim", "euler") for b in ("edm", "tangent") for c in ("4", "8")
    }
    row = next(r for r in rows if (r["sampler"], r["schedule"], r["nfe"]) == ("euler", "edm", "8"))
    kl, w2 = api_errors(lam, gdj.EDM(0.002, 80.0, 7.0), gdj.Euler(), np.linspace(1, 0, 9))
    assert float(row["kl"]) == pytest.approx(kl, rel=1e-10) and float(row["w2"]) == pytest.approx(w2, rel=1e-10)
    ddim = [r for r in rows if r["sampler"] == "ddim" and r["schedule"] == "edm"]
    assert float(ddim[1]["kl"]) < float(ddim[0]["kl"])  # more steps, smaller error
    assert_png(tmp_path / "error_vs_nfe.png")


# ---------------------------------------------------------------------------------------------- sweep


def test_sweep_resumes_and_survives_a_torn_line(tmp_path, capsys, small_spectrum):
    path, lam = small_spectrum
    out = tmp_path / "sweep.jsonl"
    other = tmp_path / "other.npy"  # a second spectrum of the same size: the compiled programs are reused
    np.save(other, 2.0 * lam)
    argv = [
        "sweep",
        "--spectra",
        f"{other},{path}",
        "--samplers",
        "ddim,em",
        "--schedules",
        "edm",
        "--nfe",
        "3,6",
        "--out",
        out,
        "--no-progress",
    ]
    code, text, err = run(capsys, *argv, "--limit", "3")
    assert code == 0, err
    assert "8 cases, 0 already" in text
    assert len(out.read_text().splitlines()) == 3
    with open(out, "a") as f:
        f.write('{"spectrum": "other.npy", "sampl')  # an interrupted write
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "3 already" in text and "5 to run" in text
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8
    keys = {(r["spectrum"], r["sampler"], r["nfe"]) for r in records}
    assert len(keys) == 8
    for r in records:
        assert r["error"] is None and r["steps"] == r["nfe"] and r["schedule"] == "edm"
    rec = next(r for r in records if r["spectrum"] == str(path) and r["sampler"] == "em" and r["nfe"] == 6)
    kl, w2 = api_errors(lam, gdj.EDM(0.002, 80.0, 7.0), gdj.EulerMaruyama(), np.linspace(1, 0, 7))
    assert rec["kl"] == pytest.approx(kl, rel=1e-10) and rec["w2"] == pytest.approx(w2, rel=1e-10)
    code, text, _ = run(capsys, *argv)  # nothing left to do
    assert code == 0 and "8 already" in text and len(out.read_text().splitlines()) == 8


# ---------------------------------------------------------------------------------------------- export


def test_export_formats_from_an_optimize_result(quickstart, tmp_path, capsys):
    doc = json.loads((quickstart / "result.json").read_text())
    opt = doc["candidates"][0]
    code, out, err = run(capsys, "export", "--from", quickstart / "result.json", "--format", "k-diffusion")
    assert code == 0
    sigmas = json.loads(out)
    np.testing.assert_allclose(sigmas, opt["sigmas"], rtol=1e-12)
    assert sigmas[0] == pytest.approx(80.0) and "warning" in err  # ends at sigma_min, not 0
    code, out, _ = run(
        capsys, "export", "--from", quickstart / "result.json", "--format", "k-diffusion", "--append-zero"
    )
    assert json.loads(out)[-1] == 0.0 and len(json.loads(out)) == 8
    code, _, _ = run(
        capsys, "export", "--from", quickstart / "result.json", "--format", "json", "--out", tmp_path / "grid.json"
    )
    assert code == 0
    back = gdj.from_json((tmp_path / "grid.json").read_text())
    np.testing.assert_allclose(np.asarray(back["times"]), opt["times"], rtol=0, atol=0)
    stored = gdj.from_json((quickstart / "result.json").read_text())["candidates"][0]["schedule"]
    assert type(back["schedule"]) is type(stored)
    code, out, _ = run(
        capsys,
        "export",
        "--from",
        quickstart / "result.json",
        "--format",
        "diffusers",
        "--kind",
        "sigmas",
        "--candidate",
        "edm",
    )
    assert code == 0
    edm = next(c for c in doc["candidates"] if c["name"] == "edm")
    np.testing.assert_allclose(json.loads(out), edm["sigmas"], rtol=1e-12)


def test_export_diffusers_timesteps_from_a_named_schedule(capsys):
    # A continuous schedule has no training indices: the export refuses with the reason.
    code, _, err = run(
        capsys,
        "export",
        "--schedule",
        "linear",
        "--steps",
        "4",
        "--sigma-min",
        "0",
        "--format",
        "diffusers",
        "--kind",
        "timesteps",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Discrete" in err


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "text.npy").write_text("these are not eigenvalues\n")
    np.save(root / "matrix.npy", np.eye(3))
    np.save(root / "negative.npy", np.array([1.0, -0.5, 2.0]))
    np.save(root / "nan.npy", np.array([1.0, np.nan]))
    return root


@pytest.mark.parametrize(
    "argv, words",
    [
        (["eval", "--spectrum", "{root}/text.npy"], "cannot read spectrum file"),
        (["eval", "--spectrum", "{root}/matrix.npy"], "1-D"),
        (["eval", "--spectrum", "{root}/negative.npy"], "negative"),
        (["eval", "--spectrum", "{root}/nan.npy"], "NaN"),
        (["eval", "--spectrum", "{root}/missing.npy"], "not found"),
        (["eval", "--spectrum", "cifar100"], "unknown spectrum"),
        (["eval", "--sampler", "dpm++"], "unknown sampler 'dpm++'"),
        (["compare", "--samplers", "ddim,nonsense", "--out", "{root}/c"], "unknown sampler 'nonsense'"),
        (["eval", "--schedule", "sigmoid"], "unknown schedule"),
        (["eval", "--times", "1.0,0.5,0.7,0.0"], "strictly decreasing"),
        (["eval", "--times", "1.5,0.5,0.0"], "[0, 1]"),
        (["eval", "--grid", "random"], "unknown grid"),
        (["eval", "--sigma-min", "90"], "--sigma-min"),
        (["optimize", "--divergence", "kl", "--sigma-min", "0", "--out", "{root}/o"], "--sigma-min > 0"),
        (["export", "--from", "{root}/missing.json"], "not found"),
        (["eval", "--init", "noise"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, words, bad_files, capsys):
    code, _, err = run(capsys, *[a.format(root=bad_files) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert words in lines[0] and "Traceback" not in err
    assert lines[0].startswith("gaussdiff")


def test_console_entry_exit_code_and_help():
    # The real entry point in a fresh interpreter: exit status 2 and a single stderr line.
    proc = subprocess.run(
        [sys.executable, "-m", "gaussdiff_jax", "eval", "--sampler", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    # The sampler list is the package's registry (samplers added there appear here with no CLI change).
    assert proc.stderr.strip().splitlines() == [
        f"gaussdiff eval: error: unknown sampler 'nope'; choose one of: {', '.join(gdj.samplers.available())}"
    ]


@pytest.mark.parametrize("sub", [None, "eval", "optimize", "compare", "sweep", "export"])
def test_help_texts(sub, capsys):
    code, out, _ = run(capsys, *([sub] if sub else []), "--help")
    assert code == 0
    assert "Example" in out or "Start here" in out
    if sub in ("eval", "optimize", "compare"):
        assert "samplers:" in out and "schedules:" in out and "ddim" in out


def test_time_of_sigma_inverts_the_schedule_and_refuses_what_it_does_not_reach():
    """The one time_of_sigma (gdj.grids): exact ends, and an error (not a clamp) outside the schedule's range."""
    for schedule in (gdj.LinearBeta(), gdj.Cosine(), gdj.Tangent(0.3, sigma_min=0.002, sigma_max=80.0)):
        for sigma in (0.002, 0.37, 12.0, 80.0):
            t = gdj.grids.time_of_sigma(schedule, sigma)
            assert float(schedule.sigma(jnp.asarray(t))) == pytest.approx(sigma, rel=1e-9)
    assert float(gdj.grids.time_of_sigma(gdj.EDM(0.002, 80.0, 7.0), 0.002)) == 0.0
    assert float(gdj.grids.time_of_sigma(gdj.EDM(0.002, 80.0, 7.0), 80.0)) == 1.0
    assert float(gdj.grids.time_of_sigma(gdj.LinearBeta(), 0.0)) == 0.0  # its clean end
    assert float(gdj.grids.time_of_sigma(gdj.Cosine(), math.inf)) == 1.0  # alpha_bar(1) = 0
    with pytest.raises(ValueError, match=r"does not reach sigma = 1e\+06.*152\.1"):
        gdj.grids.time_of_sigma(gdj.LinearBeta(), 1e6)
    with pytest.raises(ValueError, match="does not reach sigma = inf"):
        gdj.grids.time_of_sigma(gdj.LinearBeta(), math.inf)
    with pytest.raises(ValueError, match="does not reach sigma = 0"):
        gdj.grids.time_of_sigma(gdj.EDM(0.002, 80.0, 7.0), 0.0)
    assert float(gdj.grids.time_of_sigma(gdj.LinearBeta(), 1e6, clip=True)) == 1.0
