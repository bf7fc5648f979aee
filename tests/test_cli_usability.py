"""What a new user trips over (issue 14), one test per item: help texts, honest errors before any computation,
the cause of a failure named, explanations of surprising numbers, and an optimizer that never hands back
something worse than a candidate it printed. Numbers are checked against the public API."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj
from gaussdiff_jax import cli
from gaussdiff_jax.cli import _diagnose, _problem, _shared

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

os.environ["GAUSSDIFF_NO_COMPILE_CACHE"] = "1"  # in-process runs: no persistent cache for the test session


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, *words):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 40-mode power-law spectrum with two exact zeros."""
    lam = np.concatenate([3.0 * np.arange(1, 39) ** -1.3, [0.0, 0.0]])
    path = tmp_path_factory.mktemp("spectra") / "powerlaw.npy"
    np.save(path, lam)
    return path, lam


@pytest.fixture(scope="module")
def result(tmp_path_factory, small):
    """A small optimize result (ddim, 4 steps) to export and edit."""
    out = tmp_path_factory.mktemp("result")
    path, _ = small
    argv = ["optimize", "--divergence", "kl", "--spectrum", path, "--steps", "4", "--iterations", "15", "--out", out,
            "--quiet"]
    assert cli.main([str(a) for a in argv]) == 0
    return out / "result.json"


# ---------------------------------------------------------------------------------------------- help


def test_help_lists_samplers_spectra_and_grids_in_full(capsys):
    code, out, _ = run(capsys, "eval", "--help")
    assert code == 0
    for name in gdj.samplers.available():  # every registered sampler, with its description (not "ddim D")
        description = gdj.samplers.describe(name)
        assert re.search(rf"^  {re.escape(name)}\s+{re.escape(description)} \[", out, re.MULTILINE), name
    assert re.search(r"^  heun\s+.*\[2 NFE/step, in t", out, re.MULTILINE)
    for name in gdj.grids.available():  # all grids of gdj.grids, not 4 of 9
        assert re.search(rf"^  {name}\s+\S", out, re.MULTILINE), name
    code, out, _ = run(capsys, "--help")
    for name in gdj.spectra.available():
        assert name in out
    assert ".txt" in out and "--no-compile-cache" in out and "GAUSSDIFF_NO_COMPILE_CACHE" in out


def test_every_grid_of_gdj_grids_is_offered(tmp_path, capsys, small):
    """All of gdj.grids.available(): diffusers' spacings on the diffusers tables (their own range, said so),
    a clear error on a continuous schedule, the others on the requested range."""
    path, lam = small
    code, out, err = run(capsys, "eval", "--spectrum", path, "--floor", "1e-4", "--schedule", "table-linear",
                         "--grid", "leading", "--nfe", "10", "--out", tmp_path)  # fmt: skip
    assert code == 0, err
    assert "note: grid 'leading' on table-linear runs from sigma 60.82 to 0, its own range" in out
    doc = json.loads((tmp_path / "eval.json").read_text())
    table = gdj.Discrete.from_diffusers("linear")
    np.testing.assert_allclose(doc["times"], gdj.grids.leading(table, 10), rtol=0, atol=0)
    src = gdj.GaussianSource(np.maximum(lam, 1e-4))
    law = gdj.sample_law(src, table, gdj.DDIM(), jnp.asarray(doc["times"]))
    assert doc["kl"] == pytest.approx(float(gdj.kl(src, law, target="truncated")), rel=1e-10)
    one_error_line(*run(capsys, "eval", "--grid", "trailing")[::2], "Discrete", "EDM")
    for grid in ("quadratic", "log_snr", "karras"):
        code, _, err = run(capsys, "eval", "--spectrum", path, "--schedule", "tangent", "--grid", grid, "--nfe", "5")
        assert code == 0, (grid, err)


# ---------------------------------------------------------------------------------------------- errors


def test_failure_names_the_actual_cause(capsys):
    """heun with sigma_min = 0 on a floored spectrum: the cause is the schedule's beta, not an eigenvalue."""
    argv = ("eval", "--sampler", "heun", "--sigma-min", "0", "--floor", "1e-6", "--target", "data")
    code, out, err = run(capsys, *argv)
    if np.isfinite(float(gdj.EDM(0.0, 80.0, 7.0).beta(0.0))):  # once EDM's beta(0) is fixed, this just works
        assert code == 0 and "KL is infinite" not in out
        return
    line = one_error_line(code, err, "beta", "EDM", "t = 0", "--sigma-min > 0")
    assert "eigenvalue" not in line


def test_diagnosis_of_a_nan_beta_and_of_zero_eigenvalues(small):
    """The diagnosis itself, on a schedule whose beta is NaN at one grid point, and on a clean end."""
    path, _ = small

    class NaNBeta(gdj.LinearBeta):
        def beta(self, t):
            return jnp.where(jnp.asarray(t) == 0.5, jnp.nan, super().beta(t))

    args = cli.build_parser().parse_args(["eval", "--spectrum", str(path), "--sampler", "euler", "--sigma-min", "0"])
    problem = _problem.Problem(args)
    ts = np.array([1.0, 0.5, 0.0])
    line = _diagnose.explain_failure(problem, NaNBeta(), ts, RuntimeError("engine"))
    assert "NaNBeta.beta is nan at t = 0.5 (grid point 1" in line and "ddim" in line
    line = _diagnose.explain_failure(problem, gdj.LinearBeta(), ts, RuntimeError("engine"))
    assert "2 zero eigenvalue(s)" in line and "--floor" in line


def test_engine_failure_is_one_line_with_and_without_the_compile_cache(tmp_path, small):
    """Heun on a grid ending at sigma = 0 with zero eigenvalues: the same one-line cause whether the program
    ran with equinox's checks (no cache) or without them (cache on: the command checks the result)."""
    path, _ = small
    argv = [sys.executable, "-m", "gaussdiff_jax", "eval", "--spectrum", str(path), "--sampler", "heun"]
    argv += ["--schedule", "linear", "--sigma-min", "0", "--target", "truncated", "--steps", "4"]
    lines = []
    for cache in (False, True):
        env = {**os.environ, "GAUSSDIFF_CACHE_DIR": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
        env.pop("GAUSSDIFF_NO_COMPILE_CACHE")
        proc = subprocess.run(argv + ([] if cache else ["--no-compile-cache"]), capture_output=True, text=True,
                              env=env, timeout=300, check=False)  # fmt: skip
        lines.append(one_error_line(proc.returncode, proc.stderr, "zero eigenvalue", "--sigma-min > 0 or --floor"))
    assert lines[0] == lines[1]
    assert any((tmp_path / "cache" / "jax").iterdir())  # the cached run wrote compilations


def test_sigma_max_inf_is_refused_or_used_never_replaced(tmp_path, capsys):
    one_error_line(*run(capsys, "eval", "--sampler", "euler", "--sigma-max", "inf", "--schedule", "cosine")[::2],
                   "--sigma-max inf", "sampler in t")  # fmt: skip
    one_error_line(*run(capsys, "eval", "--sigma-max", "inf", "--schedule", "linear")[::2], "152.2", "--sigma-max")
    one_error_line(*run(capsys, "eval", "--sigma-max", "200", "--schedule", "linear")[::2], "<= 152.2")
    code, _, err = run(capsys, "eval", "--sigma-max", "inf", "--schedule", "cosine", "--nfe", "4", "--out", tmp_path)
    assert code == 0, err
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["problem"]["sigma_max"] == "inf" and doc["sigmas"][0] is None and doc["times"][0] == 1.0


def test_times_must_be_well_formed_and_alone(capsys):
    one_error_line(*run(capsys, "eval", "--times", "1,,0")[::2], "empty entry (position 2)")
    one_error_line(*run(capsys, "eval", "--times", "1,0.5,0", "--nfe", "20")[::2], "drop --nfe")
    one_error_line(*run(capsys, "eval", "--times", "1,0.5,0", "--grid", "karras")[::2], "drop --grid")
    one_error_line(
        *run(capsys, "export", "--schedule", "edm", "--times", "1,0.5,0", "--steps", "3")[::2], "drop --steps"
    )


def test_output_paths_are_checked_before_computing(tmp_path, capsys, monkeypatch):
    def no_computation(*args, **kwargs):
        raise AssertionError("computed before checking --out")

    for module in (cli.eval, cli.optimize, cli.sweep):
        monkeypatch.setattr(module, "evaluate", no_computation)
    existing = tmp_path / "file.txt"
    existing.write_text("x")
    one_error_line(*run(capsys, "eval", "--out", existing)[::2], "existing file")
    one_error_line(*run(capsys, "optimize", "--out", existing)[::2], "existing file")
    one_error_line(*run(capsys, "compare", "--out", existing)[::2], "existing file")
    one_error_line(*run(capsys, "sweep", "--out", tmp_path)[::2], "is a folder", "sweep.jsonl")
    one_error_line(*run(capsys, "export", "--schedule", "edm", "--steps", "3", "--out", tmp_path)[::2], "is a folder")
    assert existing.read_text() == "x"


# ---------------------------------------------------------------------------------------------- export


def _edited(tmp_path, result, edit):
    doc = json.loads(result.read_text())
    doc = edit(doc)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: [d], "(a JSON list)"),
        (lambda d: {k: v for k, v in d.items() if k != "candidates"}, "no 'times'"),
        (lambda d: {**d, "candidates": [{k: v for k, v in d["candidates"][0].items() if k != "times"}]}, "no 'times'"),
        (lambda d: {k: v for k, v in d.items() if k != "format"}, "not a gaussdiff_jax.grid document"),
        (lambda d: _set(d, lambda c: c["schedule"].pop("base"), "euler-lagrange"), "missing field(s) ['base']"),
        (lambda d: _set(d, lambda c: c["schedule"].update(name="edm")), "unknown field(s) ['name']"),
        (lambda d: _set(d, lambda c: c["sigmas"].__setitem__(2, 2 * c["sigmas"][2])), "'sigmas' differ"),
        (lambda d: _set(d, lambda c: c["times"].__setitem__(2, 0.5 * (c["times"][1] + c["times"][2]))), "differ"),
    ],
)
def test_export_from_a_broken_result_is_one_line(edit, words, tmp_path, result, capsys):
    one_error_line(*run(capsys, "export", "--from", _edited(tmp_path, result, edit))[::2], words)


def _set(doc, change, name="optimized"):
    change(next(c for c in doc["candidates"] if c["name"] == name))
    return doc


def test_export_names_flags_and_reads_every_result(result, tmp_path, capsys):
    code, out, err = run(capsys, "export", "--from", result, "--format", "k-diffusion")
    assert code == 0 and "--append-zero" in err and "append_zero" not in err
    back = gdj.from_json(result.read_text())
    np.testing.assert_allclose(json.loads(out), back["candidates"][0]["sigmas"], rtol=1e-12)
    code, out, _ = run(capsys, "export", "--from", result, "--candidate", "edm", "--format", "json")
    assert code == 0 and gdj.from_json(out)["schedule"].__class__ is gdj.EDM


def test_eval_times_reads_a_result(result, capsys, small):
    """--times RESULT.json evaluates the optimized grid on its own schedule: the numbers of the result."""
    path, _ = small
    doc = gdj.from_json(result.read_text())
    code, _, err = run(capsys, "eval", "--spectrum", path, "--times", result, "--out", result.parent / "again")
    assert code == 0, err
    again = json.loads((result.parent / "again" / "eval.json").read_text())
    assert again["kl"] == pytest.approx(doc["candidates"][0]["kl"], rel=1e-12)
    assert again["times"] == list(np.asarray(doc["candidates"][0]["times"]))
    code, _, err = run(capsys, "eval", "--spectrum", path, "--times", f"{result}:edm", "--schedule", "cosine")
    one_error_line(code, err, "carries its schedule", "drop --schedule")


# ---------------------------------------------------------------------------------------------- sweep


def test_failed_sweep_cases_are_run_again(tmp_path, capsys, small):
    path, lam = small
    out = tmp_path / "sweep.jsonl"
    argv = ["sweep", "--spectra", path, "--samplers", "ddim", "--schedules", "edm", "--nfe", "3,5", "--out", out]
    assert run(capsys, *argv, "--no-progress")[0] == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records[0].update(kl=None, w2=None, error="a transient failure")  # as if that case had failed
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, text, err = run(capsys, *argv, "--no-progress")
    assert code == 0, err
    assert "1 already" in text and "1 to run (1 of them failed before and run again)" in text
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(again) == 2 and all(r["error"] is None for r in again)  # the failed record was replaced
    rerun = next(r for r in again if r["nfe"] == records[0]["nfe"])
    kl = gdj.kl(gdj.GaussianSource(lam), gdj.sample_law(gdj.GaussianSource(lam), gdj.EDM(0.002, 80.0, 7.0),
                gdj.DDIM(), jnp.linspace(1.0, 0.0, rerun["steps"] + 1)), target="truncated")  # fmt: skip
    assert rerun["kl"] == pytest.approx(float(kl), rel=1e-10)


# ---------------------------------------------------------------------------------------------- explanations


def test_kl_growing_with_nfe_is_explained(tmp_path, capsys):
    """Euler on EDM, CIFAR-10: KL 1.5e8 at NFE 10, 1.6e9 at 20. One tiny mode whose variance collapses on the
    last step carries it; the command says so, and the API agrees (per-mode KL, independently)."""
    code, out, err = run(capsys, "compare", "--samplers", "euler", "--schedules", "edm", "--nfe", "10,20",
                         "--out", tmp_path)  # fmt: skip
    assert code == 0, err
    note = next(line for line in out.splitlines() if "grows from NFE 10 to 20" in line)
    share = float(re.search(r"At NFE 20, ([0-9.]+)% of the KL", note)[1])
    eigenvalue = float(re.search(r"1 mode \(eigenvalue ([0-9.e+-]+)\)", note)[1])
    assert "step 20 of 20" in note and "collapses its variance" in note
    lam = gdj.spectra.load("cifar10")
    src = gdj.GaussianSource(lam)
    law = gdj.sample_law(src, gdj.EDM(0.002, 80.0, 7.0), gdj.Euler(), jnp.linspace(1.0, 0.0, 21))
    per_mode = np.asarray(gdj.kl(src, law, target="truncated", reduce=False))
    top = int(np.argmax(per_mode))
    assert share == pytest.approx(100 * per_mode[top] / per_mode.sum(), abs=0.06)
    assert eigenvalue == pytest.approx(float(lam[top]), rel=1e-2)
    code, out, _ = run(capsys, "eval", "--sampler", "euler", "--schedule", "edm", "--nfe", "20")
    assert "where the KL comes from: 99." in out and "1 mode" in out


def test_progress_goes_to_stderr_and_quiet_turns_it_off(tmp_path, capsys, monkeypatch, small):
    from rich.console import Console

    path, _ = small
    buffer = io.StringIO()
    monkeypatch.setattr(_shared, "_stderr_console", lambda: Console(file=buffer, force_terminal=True, width=100))
    argv = ["compare", "--spectrum", path, "--samplers", "ddim", "--schedules", "edm", "--nfe", "3", "--out", tmp_path]
    assert run(capsys, *argv)[0] == 0
    assert "compare" in buffer.getvalue()
    buffer.truncate(0)
    assert run(capsys, *argv, "--quiet")[0] == 0 and buffer.getvalue() == ""
    assert run(capsys, "eval", "--spectrum", path, "--nfe", "3")[0] == 0 and "eval ddim" in buffer.getvalue()


# ---------------------------------------------------------------------------------------------- optimize


def _optimized_and_best(doc):
    values = {c["name"]: c["kl"] for c in doc["candidates"] if c["kl"] is not None}
    return values.pop("optimized"), min(values.items(), key=lambda kv: kv[1])


def test_optimize_heun_starts_from_the_best_baseline(tmp_path, capsys):
    """Heun, NFE 10, CIFAR-10: the grid used to end 6.9x worse than the tangent baseline of its own table."""
    code, out, err = run(capsys, "optimize", "--divergence", "kl", "--sampler", "heun", "--nfe", "10",
                         "--iterations", "30", "--out", tmp_path, "--no-progress")  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "result.json").read_text())
    optimized, (best_name, best) = _optimized_and_best(doc)
    assert doc["optimization"]["base_schedule"] == best_name
    assert doc["optimization"]["losses"][0] == pytest.approx(best, rel=1e-9)  # it started there
    assert optimized < best and doc["optimization"]["improved"]
    assert f"best loss {min(doc['optimization']['losses']):.6g}" in out  # the bar's last value is not the result


def test_optimize_that_cannot_improve_says_so(tmp_path, capsys):
    """Euler with --lr 50 diverges: the result is the best baseline (cosine), said plainly, not a worse grid
    labelled 'optimized'."""
    code, out, err = run(capsys, "optimize", "--divergence", "kl", "--sampler", "euler", "--lr", "50",
                         "--iterations", "30", "--out", tmp_path, "--no-progress")  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "result.json").read_text())
    optimized, (best_name, best) = _optimized_and_best(doc)
    assert optimized <= best
    if optimized == best:
        assert f"no improvement on the best baseline ({best_name}" in out and not doc["optimization"]["improved"]
        assert doc["candidates"][0]["note"] == f"= {best_name} (optimizer did not improve)"
        assert doc["candidates"][0]["times"] == next(c for c in doc["candidates"] if c["name"] == best_name)["times"]


def test_compile_cache_directory_and_opt_out(tmp_path):
    """A fresh interpreter writes compilations under $XDG_CACHE_HOME/gaussdiff_jax/jax; --no-compile-cache
    writes none."""
    env = {k: v for k, v in os.environ.items() if k not in ("GAUSSDIFF_NO_COMPILE_CACHE", "GAUSSDIFF_CACHE_DIR")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu")
    argv = [sys.executable, "-m", "gaussdiff_jax", "eval", "--nfe", "3", "--quiet"]
    proc = subprocess.run(
        [*argv, "--no-compile-cache"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "xdg" / "gaussdiff_jax" / "jax").exists()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert any((tmp_path / "xdg" / "gaussdiff_jax" / "jax").iterdir())
    shutil.rmtree(tmp_path / "xdg")
