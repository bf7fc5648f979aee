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
from ._learnable import (
    LearnableGrid as LearnableGrid,
    LearnableSchedule as LearnableSchedule,
    TimeWarp as TimeWarp,
    WarpedSchedule as WarpedSchedule,
)
from ._optimize import OptimizeResult as OptimizeResult, optimize as optimize
# --- analytic optima and asymptotics (issue 3) ---
from ._asymptotics import (
    EndExponents as EndExponents,
    check_regular as check_regular,
    end_exponents as end_exponents,
    is_singular as is_singular,
    kl_leading_term as kl_leading_term,
    leading_term_functionals as leading_term_functionals,
    w2_leading_term as w2_leading_term,
    w2_squared_leading_term as w2_squared_leading_term,
)
from ._ddim_closed_form import ddim_law as ddim_law
from ._optimal import (
    EulerLagrangeSchedule as EulerLagrangeSchedule,
    euler_lagrange_schedule as euler_lagrange_schedule,
    isotropic_optimal_kl as isotropic_optimal_kl,
    tangent_functionals as tangent_functionals,
    tangent_gamma as tangent_gamma,
)
# --- real spectra, compression, sweeps, sharding (issue 4) ---
from ._compress import (
    Compression as Compression,
    compress as compress,
    compress_power_law as compress_power_law,
    deduplicate as deduplicate,
)
from ._sharding import DeviceSharding as DeviceSharding
from ._sweep import Sweep as Sweep, sweep as sweep
# --- model schedules, grids and export (issue 5) ---
from . import _grid as grids
from ._export import (
    ExportWarning as ExportWarning,
    from_json as from_json,
    to_diffusers as to_diffusers,
    to_json as to_json,
    to_k_diffusion as to_k_diffusion,
)
from ._pretrained import (
    GridOptimization as GridOptimization,
    GridScore as GridScore,
    compare_grids as compare_grids,
    format_table as format_table,
    interpolation_cost as interpolation_cost,
    optimize_grid as optimize_grid,
    score_grid as score_grid,
    score_grids as score_grids,
)
from ._schedule import RectifiedFlow as RectifiedFlow
# --- Gaussian mixtures and Jain-Zhang (issue 6) ---
from ._jain_zhang import (
    JainZhang as JainZhang,
    JainZhangBoundTerms as JainZhangBoundTerms,
    chain_rule_kl_bound as chain_rule_kl_bound,
    jain_zhang_bound_terms as jain_zhang_bound_terms,
    jain_zhang_grid as jain_zhang_grid,
    jain_zhang_law as jain_zhang_law,
    ou_schedule as ou_schedule,
)
from ._lipschitz import (
    HessianNormMaximum as HessianNormMaximum,
    LipschitzConstant as LipschitzConstant,
    gaussian_score_lipschitz as gaussian_score_lipschitz,
    hessian_eigenvalue_bounds as hessian_eigenvalue_bounds,
    hessian_norm as hessian_norm,
    maximize_hessian_norm as maximize_hessian_norm,
    score_lipschitz as score_lipschitz,
)
from ._mixture import GaussianMixture as GaussianMixture, covariance_crossings as covariance_crossings
from ._monte_carlo import (
    Estimate as Estimate,
    LinearScore as LinearScore,
    MixtureDenoiser as MixtureDenoiser,
    MixtureScore as MixtureScore,
    W2Estimate as W2Estimate,
    cross_entropy as cross_entropy,
    kl_estimate as kl_estimate,
    linear_score as linear_score,
    mixture_denoiser as mixture_denoiser,
    mixture_score as mixture_score,
    simulate as simulate,
    sliced_w2 as sliced_w2,
    w2_exact_ot as w2_exact_ot,
)
# --- plots (issue 7) ---
from ._plot import (
    plot_error_spectrum as plot_error_spectrum,
    plot_error_vs_nfe as plot_error_vs_nfe,
    plot_schedules as plot_schedules,
)
