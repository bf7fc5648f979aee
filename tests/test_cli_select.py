"""`gaussdiff select`: the recommendation equals `gdj.select_timesteps`, its numbers are recomputed with the public
API, the per-mode report adds up, the model-aware path loads a user's network from `MODULE:FUNCTION`, and bad
input is one line with exit code 2."""

import json
import os
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj
from gaussdiff_jax import cli

pytestmark = pytest.mark.slow  # end-to-end / sweeps: the full suite only (`-m "not slow"` skips them)

os.environ["GAUSSDIFF_NO_COMPILE_CACHE"] = "1"  # in-process runs: no persistent cache for the test session
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def spectrum_file(tmp_path_factory):
    """A 24-mode power-law spectrum with three modes below the 8-bit dequantization floor (one exactly zero)."""
    lam = np.concatenate([2.0 * np.arange(1, 22) ** -1.5, [1e-6, 2e-7, 0.0]])
    path = tmp_path_factory.mktemp("spectra") / "powerlaw.npy"
    np.save(path, lam)
    return path, lam


def test_closed_form_recommendation_equals_the_api(tmp_path, capsys, spectrum_file):
    path, lam = spectrum_file
    out = tmp_path / "sel"
    code, stdout, _ = run(capsys, "select", "--spectrum", path, "--nfe", 5, "--out", out)
    assert code == 0
    doc = json.loads((out / "result.json").read_text())
    schedule = gdj.Discrete.from_diffusers("linear")
    source = gdj.GaussianSource(jnp.asarray(lam))
    expected = gdj.select_timesteps(schedule, gdj.DDIM(), 5, source=source)
    assert doc["timesteps"] == expected.timesteps.tolist()
    assert f"recommended timesteps: [{', '.join(str(i) for i in expected.timesteps)}]" in stdout
    assert "scheduler.set_timesteps(timesteps=" in stdout
    # The recommendation's W2 recomputed from its time steps; it is no worse than any listed grid.
    ts = jnp.asarray(np.append((np.asarray(doc["timesteps"]) + 1.0) / 1000, 0.0))
    w2 = float(gdj.w2(source, gdj.sample_law(source, schedule, gdj.DDIM(), ts)))
    assert doc["candidates"][0]["w2"] == pytest.approx(w2, rel=1e-9)
    assert doc["candidates"][0]["predicted"] == min(c["predicted"] for c in doc["candidates"])
    assert {"uniform", "leading", "karras"} <= {c["name"] for c in doc["candidates"]}
    for name in ("timesteps.png", "contributions.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_per_mode_report_adds_up(tmp_path, capsys, spectrum_file):
    """The shares below the floor are those of the per-mode W2^2 and KL (floored spectrum) of the recommendation."""
    path, lam = spectrum_file
    out = tmp_path / "sel"
    assert run(capsys, "select", "--spectrum", path, "--nfe", 4, "--out", out, "--quiet")[0] == 0
    doc = json.loads((out / "result.json").read_text())
    c = doc["contributions"]
    floor = (2 / 255) ** 2 / 12
    assert c["floor"] == pytest.approx(floor) and c["modes_below_floor"] == 3
    schedule = gdj.Discrete.from_diffusers("linear")
    ts = jnp.asarray(np.append((np.asarray(doc["timesteps"]) + 1.0) / 1000, 0.0))
    source = gdj.GaussianSource(jnp.asarray(lam))
    w2sq = np.asarray(gdj.w2_squared(source, gdj.sample_law(source, schedule, gdj.DDIM(), ts), reduce=False))
    floored = gdj.GaussianSource(jnp.maximum(jnp.asarray(lam), floor))
    kl = np.asarray(gdj.kl(floored, gdj.sample_law(floored, schedule, gdj.DDIM(), ts), reduce=False))
    below = lam < floor
    assert c["w2_share_below_floor"] == pytest.approx(w2sq[below].sum() / w2sq.sum(), rel=1e-6)
    assert c["kl_share_below_floor"] == pytest.approx(kl[below].sum() / kl.sum(), rel=1e-6)
    # The point of the report: the tiny modes carry much more of the KL than of the W2.
    assert c["kl_share_below_floor"] > 10 * c["w2_share_below_floor"]


def test_model_aware_loads_the_network(tmp_path, capsys, monkeypatch):
    """An exact Gaussian eps-network of its own held-out data, loaded as MODULE:FUNCTION: the measured error is
    ~0 and the model-aware objective is the closed-form W2 of the fitted Gaussian."""
    rng = np.random.default_rng(0)
    d = 4
    data = (rng.standard_normal((800, d)) * np.array([1.0, 0.5, 0.2, 0.05])) + 0.1
    np.save(tmp_path / "held_out.npy", data)
    fit = gdj.fit_gaussian(data)
    np.savez(tmp_path / "fit.npz", mean=fit.mean, lam=fit.eigenvalues, U=fit.eigenvectors)
    (tmp_path / "my_net.py").write_text(textwrap.dedent(f"""
        import jax.numpy as jnp, numpy as np
        import gaussdiff_jax as gdj
        _f = np.load({str(tmp_path / "fit.npz")!r})
        _ac = jnp.asarray(gdj.Discrete.from_diffusers("linear").alphas_cumprod)
        def denoiser(x, t):
            ab = _ac[t][:, None]
            a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
            mean, lam, U = (jnp.asarray(_f[k]) for k in ("mean", "lam", "U"))
            D = mean + ((a * lam / (ab * lam + 1 - ab)) * ((x - a * mean) @ U)) @ U.T
            return (x - a * D) / s
    """))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sel"
    code, stdout, err = run(capsys, "select", "--model", "my_net:denoiser", "--data", "held_out.npy", "--nfe", 4,
                            "--out", out)  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "result.json").read_text())
    assert doc["objective"] == "w2+network error" and doc["model"] == "my_net:denoiser"
    assert max(c["network_error"] for c in doc["candidates"]) < 1e-6
    assert doc["candidates"][0]["predicted"] == pytest.approx(doc["candidates"][0]["w2"], rel=1e-4)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--data", "x.npy"], "give --model too"),
        (["--model", "nocolon"], "MODULE:FUNCTION"),
        (["--model", "no_such_module_xyz:f", "--data", "x.npy"], "no_such_module_xyz"),
        (["--model", "os:getcwd"], "--model needs --data"),
        (["--nfe", "0"], "--nfe must be a positive integer"),
    ],
)
def test_user_errors_are_one_line(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((10, 3)))
    code, _, err = run(capsys, "select", *argv, "--out", tmp_path / "o")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
