"""Test configuration: float64 enabled for reference checks; float32 tests cast explicitly (gdj.cast)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def toy_eigenvalues():
    """The MATH.md section 6 toy spectrum."""
    return np.array([0.02, 0.6, 3.0])
