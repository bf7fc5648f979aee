"""Test configuration: float64 enabled for reference checks; float32 tests cast explicitly (gdj.cast)."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import gc  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def toy_eigenvalues():
    """The MATH.md section 6 toy spectrum."""
    return np.array([0.02, 0.6, 3.0])


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. One process compiles thousands of XLA programs over
    the suite; each keeps its JIT-ed code mapped, and past Linux's default `vm.max_map_count` (65530 mappings) XLA
    segfaults while compiling the next one (seen in CI at ~85% of the suite). Modules share few programs, so
    recompiling across modules costs little."""
    yield
    jax.clear_caches()
    gc.collect()


def pytest_collection_modifyitems(items):
    """Executed notebooks (nbmake) belong to the full suite, not to the fast `-m "not slow"` subset."""
    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
