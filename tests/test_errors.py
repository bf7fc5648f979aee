"""Bad input gets a clear error (ValueError outside jit, an equinox runtime error inside), never a NaN."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

LAM = np.array([0.1, 1.0, 3.0])
TS = jnp.linspace(1.0, 1e-3, 11)


@pytest.mark.parametrize(
    "eigenvalues, match",
    [(np.array([0.1, -1.0]), "negative or NaN"), (np.array([0.1, np.nan]), "negative or NaN"), (np.array([np.inf]), "finite")],
)
def test_bad_eigenvalues(eigenvalues, match):
    with pytest.raises(ValueError, match=match):
        gdj.GaussianSource(eigenvalues)
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(eqx.filter_jit(lambda lam: gdj.GaussianSource(lam).eigenvalues)(jnp.asarray(eigenvalues)))


@pytest.mark.parametrize(
    "ts, match",
    [
        (jnp.array([1.0, 0.5, 0.5, 0.0]), "strictly decreasing"),
        (jnp.array([0.0, 0.5, 1.0]), "strictly decreasing"),
        (jnp.array([1.5, 0.5, 0.0]), r"\[0, 1\]"),
        (jnp.array([1.0, 0.5, -0.1]), r"\[0, 1\]"),
        (jnp.array([1.0, jnp.nan, 0.0]), "NaN"),
    ],
)
def test_bad_grids(ts, match):
    src = gdj.GaussianSource(LAM)
    with pytest.raises(ValueError, match=match):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.Heun(), ts)
    jitted = eqx.filter_jit(lambda ts: gdj.sample_law(src, gdj.LinearBeta(), gdj.Heun(), ts).variance)
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(jitted(ts))


def test_fewer_than_one_step():
    src = gdj.GaussianSource(LAM)
    with pytest.raises(ValueError, match="at least 2 points"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), jnp.array([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), jnp.ones((2, 3)))


def test_mismatched_batch_shapes():
    with pytest.raises(ValueError, match="does not broadcast"):
        gdj.GaussianSource(np.ones((3, 4)), mean=np.ones((2, 4)))
    law = gdj.sample_law(gdj.GaussianSource(np.ones((2, 4))), gdj.LinearBeta(), gdj.DDIM(), TS)
    with pytest.raises(ValueError, match="same source"):
        gdj.kl(gdj.GaussianSource(np.ones((3, 4))), law)


def test_kl_against_singular_target_names_the_fix():
    src = gdj.GaussianSource(np.array([0.0, 1.0]))
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), TS)
    with pytest.raises(ValueError, match="target='truncated'"):
        gdj.kl(src, law, target="data")
    assert np.isfinite(gdj.kl(src, law, target="truncated"))
    assert np.isfinite(gdj.w2(src, law, target="data"))
    with pytest.raises(Exception, match="singular target"):
        jax.block_until_ready(eqx.filter_jit(lambda s, l: gdj.kl(s, l, target="data"))(src, law))


def test_heun_at_t_zero_with_zero_eigenvalue_raises_instead_of_nan():
    src = gdj.GaussianSource(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="t_min > 0"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.Heun(), jnp.linspace(1.0, 0.0, 11))
    # Euler only evaluates the score at the start of each step: fine down to t = 0.
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.Euler(), jnp.linspace(1.0, 0.0, 11))
    assert np.all(np.isfinite(law.variance))


def test_time_sampler_on_schedule_with_infinite_beta_raises():
    src = gdj.GaussianSource(LAM)
    with pytest.raises(ValueError, match="finite beta"):
        gdj.sample_law(src, gdj.Tangent(1.0), gdj.Euler(), jnp.linspace(1.0, 1e-3, 11))
    # DDIM only needs abar at the grid points.
    law = gdj.sample_law(src, gdj.Tangent(1.0), gdj.DDIM(), jnp.linspace(1.0, 1e-3, 11))
    assert np.all(np.isfinite(law.variance))


def test_bad_options():
    src = gdj.GaussianSource(LAM)
    with pytest.raises(ValueError, match="init"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), TS, init="noise")
    law = gdj.sample_law(src, gdj.LinearBeta(), gdj.DDIM(), TS)
    with pytest.raises(ValueError, match="target"):
        gdj.kl(src, law, target="p0")
    with pytest.raises(ValueError, match="direction"):
        gdj.kl(src, law, direction="forward")
    with pytest.raises(ValueError, match="eta"):
        gdj.DDIM(eta=1.5)
    with pytest.raises(ValueError, match="beta"):
        gdj.DDPM(beta="linear")
    with pytest.raises(ValueError, match="beta_max"):
        gdj.LinearBeta(1.0, 0.5)
    # Checked per step inside the scan, so it surfaces as equinox's runtime error carrying the message.
    with pytest.raises(Exception, match="linearized"):
        gdj.sample_law(src, gdj.LinearBeta(), gdj.DDPM(beta="linearized"), jnp.array([1.0, 0.0]))


def test_batched_spectra_match_the_loop_and_vmap():
    lams = np.array([[0.1, 1.0, 3.0], [0.5, 2.0, 8.0]])
    run = lambda lam: gdj.kl(gdj.GaussianSource(lam), gdj.sample_law(gdj.GaussianSource(lam), gdj.LinearBeta(), gdj.Heun(), TS))
    batched = gdj.kl(gdj.GaussianSource(lams), gdj.sample_law(gdj.GaussianSource(lams), gdj.LinearBeta(), gdj.Heun(), TS))
    vmapped = jax.vmap(run)(jnp.asarray(lams))
    looped = np.array([run(lam) for lam in lams])
    np.testing.assert_allclose(batched, looped, rtol=1e-13)
    np.testing.assert_allclose(vmapped, looped, rtol=1e-13)
