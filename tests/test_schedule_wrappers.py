"""SigmaFloor and SubInterval: noise levels against their defining formulas, beta against finite differences
of log alpha_bar (independent of the closed form), finite where the base starts clean, JSON round trip."""

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

T = jnp.linspace(0.02, 0.98, 25)


def _fd_beta(schedule, t, h=1e-6):
    return -(schedule.log_alpha_bar(t + h) - schedule.log_alpha_bar(t - h)) / (2 * h)


@pytest.fixture(scope="module")
def euler_lagrange():
    lam = np.asarray(gdj.spectra.load("cifar10"), dtype=np.float64) + 0.002**2
    return gdj.euler_lagrange_schedule(gdj.GaussianSource(lam))


@pytest.mark.parametrize("base_name", ["linear", "tangent", "cosine", "euler-lagrange"])
def test_sigma_floor(base_name, euler_lagrange):
    base = {
        "linear": gdj.LinearBeta(),
        "tangent": gdj.Tangent(0.3),
        "cosine": gdj.Cosine(),
        "euler-lagrange": euler_lagrange,
    }[base_name]
    floor = gdj.SigmaFloor(base, 0.01)
    np.testing.assert_allclose(floor.sigma(T) ** 2, base.sigma(T) ** 2 + 0.01**2, rtol=1e-12)
    np.testing.assert_allclose(floor.beta(T), _fd_beta(floor, T), rtol=1e-7)
    # sigma_base = 0 at t = 0: the floored schedule starts at sigma_min, with beta the limit of its values
    # (finite: autodiff of the log-SNR would give 0 * inf there).
    assert float(floor.sigma(0.0)) == pytest.approx(0.01, rel=1e-12)
    near = float(floor.beta(1e-8))
    assert np.isfinite(near) and float(floor.beta(0.0)) == pytest.approx(near, rel=1e-4, abs=1e-6)
    assert gdj.SigmaFloor(base, 0.0).log_snr(0.5) == base.log_snr(0.5)


def test_sub_interval():
    base = gdj.Cosine()
    sub = gdj.SubInterval(base, 0.1, 0.8)
    np.testing.assert_allclose(sub.sigma(T), base.sigma(0.1 + 0.7 * T), rtol=1e-13)
    np.testing.assert_allclose(sub.beta(T), _fd_beta(sub, T), rtol=1e-7)
    np.testing.assert_allclose(sub.alpha_bar_increment(0.6, 0.3), base.alpha_bar_increment(0.52, 0.31), rtol=1e-13)
    assert float(sub.sigma(0.0)) == float(base.sigma(0.1)) and float(sub.sigma(1.0)) == float(base.sigma(0.8))


def test_errors_and_json_round_trip(euler_lagrange):
    with pytest.raises(ValueError, match="sigma_min"):
        gdj.SigmaFloor(gdj.LinearBeta(), -1.0)
    with pytest.raises(ValueError, match="t_lo < t_hi"):
        gdj.SubInterval(gdj.LinearBeta(), 0.5, 0.5)
    nested = gdj.WarpedSchedule(
        gdj.SubInterval(gdj.SigmaFloor(euler_lagrange, 0.002), 0.01, 0.99), gdj.TimeWarp(logits=np.linspace(0, 1, 6))
    )
    ts = jnp.linspace(1.0, 0.0, 7)
    back = gdj.from_json(gdj.to_json(ts, nested))["schedule"]
    assert type(back.base.base.base) is gdj.EulerLagrangeSchedule and back.base.base.sigma_min == 0.002
    np.testing.assert_array_equal(np.asarray(back.sigma(ts)), np.asarray(nested.sigma(ts)))
