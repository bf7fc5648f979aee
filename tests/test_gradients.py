r"""Reverse-mode gradients of KL and $W_2^2$ against central finite differences (float64).

For each schedule family the differentiable parameters (LinearBeta $\beta_{\min}, \beta_{\max}$; Tangent
$\gamma$; LogSNRLinear end points; EDM $\sigma_{\min}, \sigma_{\max}, \rho$) and the interior grid times
are packed in one vector $x$; `jax.jacrev` of (KL(target‖sample) to $p_0$, KL(sample‖target) to
$p_{t_{\min}}$, $W_2^2$ to $p_0$) is compared entry by entry with $(f(x + h e_j) - f(x - h e_j))/2h$.
The pairs cover the samplers DDIM, Heun, DDPM and EM and every parametric schedule, on a non-uniform
grid, with a nonzero mean (so the mean terms are differentiated too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gaussdiff_jax as gdj

LAM = jnp.array([0.05, 0.6, 3.0, 12.0])
MEAN = jnp.array([0.5, -1.0, 0.3, 2.0])
STEPS = 8

CASES = {
    # name: (schedule from parameters, parameters, sampler, t0, t_min)
    "LinearBeta-EM": (lambda p: gdj.LinearBeta(p[0], p[1]), [0.1, 20.0], gdj.EulerMaruyama(), 1.0, 1e-3),
    "Tangent-DDIM": (lambda p: gdj.Tangent(p[0]), [1.3], gdj.DDIM(), 1.0, 0.0),
    "LogSNRLinear-DDPM": (lambda p: gdj.LogSNRLinear(p[0], p[1]), [9.0, -8.0], gdj.DDPM(), 1.0, 0.0),
    "EDM-Heun": (lambda p: gdj.EDM(p[0], p[1], p[2]), [0.01, 50.0, 7.0], gdj.Heun(), 1.0, 0.0),
}


def _problem(name):
    make, params, sampler, t0, t_min = CASES[name]
    source = gdj.GaussianSource(LAM, mean=MEAN)
    k = len(params)

    def losses(x):
        ts = jnp.concatenate([jnp.array([t0]), x[k:], jnp.array([t_min])])
        law = gdj.sample_law(source, make(x[:k]), sampler, ts, init="standard")
        return jnp.stack(
            [
                gdj.kl(source, law, target="data"),
                gdj.kl(source, law, target="truncated", direction="sample_to_target"),
                gdj.w2_squared(source, law, target="data"),
            ]
        )

    interior = t0 - (t0 - t_min) * (np.arange(1, STEPS) / STEPS) ** 1.5  # non-uniform
    return losses, np.concatenate([params, interior])


def _value_and_jacrev(f):
    """x -> (f(x), jacobian of f by reverse mode): one compilation serves the gradient and the differences."""

    def value_and_jac(x):
        y, pullback = jax.vjp(f, x)
        (jac,) = jax.vmap(pullback)(jnp.eye(y.shape[0], dtype=y.dtype))
        return y, jac

    return jax.jit(value_and_jac)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_central_differences(name):
    losses, x0 = _problem(name)
    value_and_jac = _value_and_jacrev(losses)
    _, jac = value_and_jac(jnp.asarray(x0))
    jac = np.asarray(jac)  # (3 losses, parameters + interior times)
    assert np.all(np.isfinite(jac))
    h = 1e-6 * np.maximum(np.abs(x0), 1e-2)
    fd = np.empty_like(jac)
    for j in range(len(x0)):
        e = np.zeros_like(x0)
        e[j] = h[j]
        f_plus, f_minus = value_and_jac(jnp.asarray(x0 + e))[0], value_and_jac(jnp.asarray(x0 - e))[0]
        fd[:, j] = (np.asarray(f_plus) - np.asarray(f_minus)) / (2 * h[j])
    # Relative 1e-6 per entry, with a floor of 1e-9 of the row's largest entry (central differences lose
    # about 1e-10 absolute to rounding, which is not relative for entries near zero).
    scale = np.abs(jac).max(axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(jac - fd), 1e-6 * np.abs(jac) + 1e-9 * scale)
    # Every parameter matters: no gradient is identically zero (a dropped dependence would show here).
    assert np.all(np.abs(jac).max(axis=0) > 0)
