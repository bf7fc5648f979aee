"""gaussdiff_jax: exact laws of diffusion samplers on Gaussian data, their KL / W2 errors, and
schedule optimization, in JAX. See README.md and MATH.md for conventions."""

from . import spectra as spectra
from ._divergence import kl as kl, w2 as w2, w2_squared as w2_squared
from ._dtype import cast as cast
from ._law import (
    GaussianLaw as GaussianLaw,
    continuous_limit as continuous_limit,
    sample_law as sample_law,
    validate_grid as validate_grid,
)
from ._sampler import (
    DDIM as DDIM,
    DDPM as DDPM,
    RK4 as RK4,
    AbstractRungeKutta as AbstractRungeKutta,
    AbstractSampler as AbstractSampler,
    AffineStep as AffineStep,
    EDMHeun as EDMHeun,
    Euler as Euler,
    EulerMaruyama as EulerMaruyama,
    ExponentialIntegrator as ExponentialIntegrator,
    Heun as Heun,
)
from ._schedule import (
    EDM as EDM,
    AbstractSchedule as AbstractSchedule,
    Cosine as Cosine,
    Discrete as Discrete,
    LinearBeta as LinearBeta,
    LogSNRLinear as LogSNRLinear,
    Tangent as Tangent,
)
from ._source import GaussianSource as GaussianSource

__version__ = "0.1.0"

# Each area adds its public names below its own marker (keep `X as X` re-exports).
# --- optimization (issue 3) ---
# --- analytic optima and asymptotics (issue 3) ---
# --- real spectra, compression, sweeps, sharding (issue 4) ---
# --- model schedules, grids and export (issue 5) ---
# --- Gaussian mixtures and Jain-Zhang (issue 6) ---
# --- plots (issue 7) ---
