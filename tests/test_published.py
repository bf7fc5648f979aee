"""Regression against the published values of MATH.md section 6."""

import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

TOY = {
    "EM": (gdj.EulerMaruyama(), [1.0108693702, 1.0327809411, 1.0229757685], [0.0565294237, 0.6490606587, 3.151431372]),
    "EI": (gdj.ExponentialIntegrator(), [0.9999449874, 0.9999436033, 0.9999364404], [0.0490753474, 0.7182547819, 3.3184445136]),
    "DDPM": (gdj.DDPM(beta="linearized"), [1.0106918108, 1.1296441913, 1.3569220704], [0.0572140731, 0.5921657647, 3.320704122]),
    "Euler": (gdj.Euler(), [1.0160603341, 1.0009988156, 0.960444291], [0.0129007189, 0.5987753824, 2.9080026394]),
    "Heun": (gdj.Heun(), [0.9940517513, 0.9924928771, 0.9860843568], [0.02503301, 0.6016694801, 2.9887922548]),
    "RK4": (gdj.RK4(), [0.9990693354, 0.994855238, 0.988564101], [0.0199540038, 0.6000525002, 2.9995215297]),
}


@pytest.mark.parametrize("name", sorted(TOY))
def test_toy_table(name, toy_eigenvalues):
    sampler, g, v = TOY[name]
    law = gdj.sample_law(gdj.GaussianSource(toy_eigenvalues), gdj.LinearBeta(), sampler, jnp.linspace(1.0, 1e-3, 21))
    np.testing.assert_allclose(law.mean_multiplier, g, rtol=0, atol=1e-8 * 3)
    np.testing.assert_allclose(law.variance, v, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "kind, g, v",
    [
        ("sde", [0.9999441581, 0.9999191113, 0.9998154828], [0.0201077451, 0.6000439779, 2.9997800785]),
        ("ode", [0.9990131441, 0.994854467, 0.9885636135], [0.0201085961, 0.6000543431, 2.999521039]),
    ],
)
def test_toy_continuous_limits(kind, g, v, toy_eigenvalues):
    law = gdj.continuous_limit(gdj.GaussianSource(toy_eigenvalues), gdj.LinearBeta(), 1.0, 1e-3, kind=kind)
    np.testing.assert_allclose(law.mean_multiplier, g, rtol=0, atol=3e-10)
    np.testing.assert_allclose(law.variance, v, rtol=1e-8)


def test_toy_targets(toy_eigenvalues):
    sch = gdj.LinearBeta()
    lam = toy_eigenvalues
    abar = float(sch.alpha_bar(1e-3))
    np.testing.assert_allclose(abar * lam + 1 - abar, [0.0201077451, 0.6000439776, 2.9997801121], rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(abar), 0.9999450265, atol=1e-10)
