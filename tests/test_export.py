"""Export formats (diffusers timesteps / sigmas / flow sigmas, k-diffusion, JSON): values, conventions, validation."""

import itertools
import json
import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

LINEAR = gdj.Discrete.from_diffusers("linear")


def _table_sigma(table, index):
    ab = np.asarray(table.alphas_cumprod, dtype=np.float64)[index]
    return np.sqrt((1 - ab) / ab)


def test_timesteps_index_convention():
    """t = (i + 1)/T; the final t = 0 is the clean point and is not a timestep."""
    ts = gdj.grids.uniform(LINEAR, 10)
    steps = gdj.to_diffusers(ts, LINEAR, "timesteps")
    assert steps == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert all(isinstance(i, int) for i in steps)
    # The same grid through the trailing spacing (T divisible by N) and back through time_of.
    assert gdj.to_diffusers(gdj.grids.trailing(LINEAR, 10), LINEAR) == steps
    np.testing.assert_allclose(np.asarray(LINEAR.time_of(np.array(steps))), np.asarray(ts[:-1]), rtol=1e-14)
    # alpha_bar of the grid points is the table entry (knots are exact), and 1 at t = 0.
    np.testing.assert_allclose(
        np.asarray(LINEAR.alpha_bar(ts[:-1])), np.asarray(LINEAR.alphas_cumprod)[steps], rtol=1e-12
    )
    assert float(LINEAR.alpha_bar(0.0)) == 1.0


def test_timesteps_validation():
    with pytest.raises(ValueError, match="round_to_indices"):
        gdj.to_diffusers(gdj.grids.karras(LINEAR, 7), LINEAR, "timesteps")
    rounded = gdj.grids.round_to_indices(gdj.grids.karras(LINEAR, 7), LINEAR)
    steps = gdj.to_diffusers(rounded, LINEAR, "timesteps")
    assert len(steps) == 7 and all(a > b for a, b in itertools.pairwise(steps)) and 0 <= steps[-1] and steps[0] < 1000
    with pytest.raises(ValueError, match="clean sample"):
        gdj.to_diffusers(jnp.array([1.0, 0.5, 0.1]), LINEAR, "timesteps")
    with pytest.raises(ValueError, match="Discrete"):
        gdj.to_diffusers(gdj.grids.uniform(None, 4), gdj.LinearBeta(), "timesteps")
    with pytest.raises(ValueError, match="kind must be"):
        gdj.to_diffusers(gdj.grids.uniform(None, 4), LINEAR, "betas")
    with pytest.raises(ValueError, match="strictly decreasing"):
        gdj.to_diffusers(jnp.array([1.0, 0.5, 0.5, 0.0]), LINEAR, "timesteps")


def test_sigmas_values_and_trailing_zero():
    ts = gdj.grids.round_to_indices(gdj.grids.log_snr_uniform(LINEAR, 6), LINEAR)
    sig = gdj.to_diffusers(ts, LINEAR, "sigmas")
    idx = gdj.to_diffusers(ts, LINEAR, "timesteps")
    assert len(sig) == 7 and sig[-1] == 0.0
    np.testing.assert_allclose(sig[:-1], _table_sigma(LINEAR, idx), rtol=1e-12)
    assert gdj.to_k_diffusion(ts, LINEAR) == sig


def test_sigmas_warnings():
    edm = gdj.EDM(0.002, 80.0, 7.0)
    ts = gdj.grids.uniform(edm, 5)
    with pytest.warns(gdj.ExportWarning, match="0.002"):
        sig = gdj.to_diffusers(ts, edm, "sigmas")
    assert sig[-1] == pytest.approx(0.002)
    # Points below training index 0: the model would be evaluated at index 0 instead.
    with pytest.warns(gdj.ExportWarning, match="below training index 0"):
        gdj.to_diffusers(jnp.array([1.0, 0.5, 0.0004, 0.0]), LINEAR, "sigmas")
    # Infinite sigma (alpha_bar(1) = 0) cannot be exported.
    with pytest.raises(ValueError, match="infinite sigma"):
        gdj.to_k_diffusion(gdj.grids.uniform(None, 4), gdj.Tangent(1.0))


def test_k_diffusion_karras_matches_reference_formula():
    """Our Karras grid on a Discrete table gives k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max) + [0]."""
    n, rho = 9, 7.0
    smin, smax = _table_sigma(LINEAR, 0), _table_sigma(LINEAR, 999)
    ramp = np.linspace(0, 1, n)
    expected = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    sig = gdj.to_k_diffusion(gdj.grids.karras(LINEAR, n), LINEAR)
    np.testing.assert_allclose(sig[:-1], expected, rtol=1e-9)
    assert sig[-1] == 0.0 and len(sig) == n + 1


def test_k_diffusion_edm_append_zero():
    edm = gdj.EDM(0.002, 80.0, 7.0)
    ts = gdj.grids.karras(edm, 6)
    np.testing.assert_allclose(np.asarray(ts), np.linspace(1, 0, 7), atol=1e-12)  # uniform t = Karras on EDM
    with pytest.warns(gdj.ExportWarning, match="one more step"):
        sig = gdj.to_k_diffusion(ts, edm, append_zero=True)
    assert len(sig) == 8 and sig[-1] == 0.0 and sig[0] == pytest.approx(80.0) and sig[-2] == pytest.approx(0.002)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_sigmas(shift):
    flow = gdj.RectifiedFlow(shift)
    ts = gdj.grids.uniform(flow, 8)
    s = np.array(gdj.to_diffusers(ts, flow, "flow_sigmas"))
    t = np.asarray(ts[:-1])
    np.testing.assert_allclose(s, shift * t / (1 + (shift - 1) * t), rtol=1e-12)
    assert s.shape == (8,) and s[0] == pytest.approx(1.0) and np.all(s > 0)
    # Pre-inverting a scheduler shift k: the scheduler's map u -> k u / (1 + (k - 1) u) restores s.
    k = 2.5
    u = np.array(gdj.to_diffusers(ts, flow, "flow_sigmas", scheduler_shift=k))
    np.testing.assert_allclose(k * u / (1 + (k - 1) * u), s, rtol=1e-12)
    with pytest.raises(ValueError, match="RectifiedFlow"):
        gdj.to_diffusers(ts, LINEAR, "flow_sigmas")
    with pytest.raises(ValueError, match="terminal"):
        gdj.to_diffusers(jnp.array([1.0, 0.5, 0.2]), flow, "flow_sigmas")


def test_validation_with_scheduler_configs():
    """Config mappings (as loaded from a model repo) are validated without diffusers installed."""
    ts = gdj.grids.uniform(LINEAR, 10)
    with pytest.warns(gdj.ExportWarning, match="no custom timesteps"):
        gdj.to_diffusers(ts, LINEAR, scheduler={"_class_name": "DDIMScheduler", "num_train_timesteps": 1000})
    with pytest.raises(ValueError, match="num_train_timesteps"):
        gdj.to_diffusers(ts, LINEAR, scheduler={"_class_name": "DDPMScheduler", "num_train_timesteps": 500})
    with pytest.raises(ValueError, match="use_karras"):
        gdj.to_diffusers(ts, LINEAR, scheduler={"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True})
    with pytest.warns(gdj.ExportWarning, match="sigma_min"):
        gdj.to_diffusers(
            ts,
            LINEAR,
            scheduler={
                "_class_name": "EulerDiscreteScheduler",
                "final_sigmas_type": "sigma_min",
                "timestep_spacing": "leading",
            },
        )
    flow = gdj.RectifiedFlow(3.0)
    fts = gdj.grids.uniform(flow, 4)
    with pytest.raises(ValueError, match="dynamic"):
        gdj.to_diffusers(fts, flow, "flow_sigmas", scheduler={"use_dynamic_shifting": True})
    with pytest.warns(gdj.ExportWarning, match="shift=3.0"):
        gdj.to_diffusers(fts, flow, "flow_sigmas", scheduler={"shift": 3.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gdj.to_diffusers(fts, flow, "flow_sigmas", scheduler={"shift": 3.0}, scheduler_shift=3.0)
    with pytest.raises(ValueError, match="diffusers scheduler"):
        gdj.to_diffusers(ts, LINEAR, scheduler=42)


@pytest.mark.parametrize(
    "schedule",
    [
        LINEAR,
        gdj.EDM(0.002, 80.0, 7.0),
        gdj.Tangent(0.7),
        gdj.RectifiedFlow(3.0),
        gdj.LinearBeta(0.1, 20.0),
        gdj.Cosine(0.008),
        gdj.LearnableSchedule(4),
    ],
)
def test_json_round_trip(schedule):
    if isinstance(schedule, gdj.Discrete):
        ts = gdj.grids.uniform(schedule, 10)
    else:
        ts = jnp.asarray([0.95, 0.6, 0.3, 0.1, 0.0 if not isinstance(schedule, gdj.EDM) else 0.01])
    text = gdj.to_json(ts, schedule, metadata={"nfe": 4})
    doc = json.loads(text)
    assert doc["format"] == "gaussdiff_jax.grid" and doc["num_steps"] == len(ts) - 1
    back = gdj.from_json(text)
    np.testing.assert_array_equal(np.asarray(back["times"]), np.asarray(ts))
    assert type(back["schedule"]) is type(schedule)
    np.testing.assert_allclose(
        np.asarray(back["schedule"].log_snr(ts[:-1])), np.asarray(schedule.log_snr(ts[:-1])), rtol=1e-14
    )
    assert back["metadata"] == {"nfe": 4}
    if isinstance(schedule, gdj.Discrete):
        assert back["diffusers_timesteps"] == gdj.to_diffusers(ts, schedule)
    assert len(back["sigmas"]) == len(ts)


def test_json_errors():
    with pytest.raises(ValueError, match="not a gaussdiff_jax.grid"):
        gdj.from_json(json.dumps({"times": [1.0, 0.0]}))
    with pytest.raises(ValueError, match="version"):
        gdj.from_json(json.dumps({"format": "gaussdiff_jax.grid", "version": 9, "times": [1.0, 0.0]}))
    bad = json.loads(gdj.to_json(jnp.array([1.0, 0.0]), gdj.Cosine()))
    bad["schedule"]["__class__"] = "Nope"
    with pytest.raises(ValueError, match="unknown schedule class"):
        gdj.from_json(json.dumps(bad))
    with pytest.raises(ValueError, match="strictly decreasing"):
        gdj.from_json(json.dumps({"format": "gaussdiff_jax.grid", "version": 1, "times": [0.0, 1.0]}))
    assert math.isinf(gdj.from_json(gdj.to_json(jnp.array([0.5, 0.0]), gdj.Tangent(1.0)))["schedule"].sigma_max)


def _strict(text: str) -> dict:
    """Parse as strict JSON (no Infinity / NaN literals)."""

    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_reads_candidate_documents():
    """One format: a grid at the top level and/or 'candidates' (what the gaussdiff command writes)."""
    from gaussdiff_jax._interop._export import grid_fields

    tangent = gdj.Tangent(0.7)  # sigma_max = inf: stored as "inf", its first sigma as null
    ts = jnp.asarray([1.0, 0.5, 0.0])
    doc = _strict(gdj.to_json(ts, tangent))
    assert doc["schedule"]["sigma_max"] == "inf" and doc["sigmas"][0] is None
    floor = gdj.SigmaFloor(gdj.LinearBeta(), 0.01)
    result = {
        "format": "gaussdiff_jax.grid",
        "version": 1,
        "command": "optimize",
        "candidates": [
            {"name": "a", **grid_fields(ts, tangent), "kl": 1.0},
            {"name": "b", **grid_fields(jnp.asarray([0.9, 0.2, 0.0]), floor)},
            {"name": "failed", "times": None, "schedule": None, "error": "could not build it"},
        ],
    }
    back = gdj.from_json(json.dumps(result, allow_nan=False))
    a, b, failed = back["candidates"]
    assert isinstance(a["schedule"], gdj.Tangent) and math.isinf(a["schedule"].sigma_max) and a["kl"] == 1.0
    assert isinstance(b["schedule"], gdj.SigmaFloor) and b["schedule"].sigma_min == 0.01
    np.testing.assert_array_equal(np.asarray(b["times"]), [0.9, 0.2, 0.0])
    assert failed["times"] is None and failed["schedule"] is None and failed["error"] == "could not build it"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["schedule"].update(name="tangent"), r"unknown field\(s\) \['name'\]"),
        # gamma has a default: rebuilt with it, the stored sigmas disagree (instead of a silent other grid)
        (lambda d: d["schedule"].pop("gamma"), "'sigmas' differ"),
        (lambda d: d["schedule"].update(gamma=-1.0), "invalid Tangent parameters"),
        (lambda d: d["sigmas"].__setitem__(1, 0.5), "'sigmas' differ from the schedule's sigma"),
        (lambda d: d["times"].__setitem__(1, 0.4), "'sigmas' differ"),
        (lambda d: d.update(schedule=[1, 2]), "'schedule' must be an object"),
        (lambda d: d.pop("times"), "has no 'times'"),
        (lambda d: d.update(candidates=[]), "non-empty list"),
    ],
)
def test_json_edits_are_one_line_errors(change, message):
    doc = json.loads(gdj.to_json(jnp.asarray([1.0, 0.5, 0.0]), gdj.Tangent(0.7, sigma_max=50.0)))
    change(doc)
    with pytest.raises(ValueError, match=message) as info:
        gdj.from_json(json.dumps(doc))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="a JSON list"):
        gdj.from_json(json.dumps([doc]))
    warped = json.loads(gdj.to_json(jnp.asarray([1.0, 0.5, 0.0]), gdj.LearnableSchedule(3)))
    del warped["schedule"]["warp"]
    with pytest.raises(ValueError, match=r"cannot rebuild WarpedSchedule: missing field\(s\) \['warp'\]"):
        gdj.from_json(json.dumps(warped))
    with pytest.raises(ValueError, match="not JSON"):
        gdj.from_json("{")
