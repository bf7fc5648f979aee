"""gaussdiff_jax: exact laws of diffusion samplers on Gaussian data, their KL / W2 errors, and
schedule optimization, in JAX. See README.md and MATH.md for conventions.

The public names, by area (each lives in a private subpackage; import them from here):

- core: sources, schedules, samplers, the engine `sample_law`, divergences;
- analysis: asymptotics, analytic optima, closed forms;
- optimization: learnable modules, `optimize`, time steps for pretrained models;
- interop: grids, export to diffusers / k-diffusion / JSON;
- scale: sweeps, sharding, compression of huge spectra;
- mixtures: Gaussian mixtures, Lipschitz constants, Monte Carlo;
- plots.
"""

from . import asymptotics as asymptotics, grids as grids, mixtures as mixtures, samplers as samplers, spectra as spectra

# --- core: source -> schedule + grid -> sampler -> law -> divergence ---------------------------------
from ._core._divergence import kl as kl, w2 as w2, w2_squared as w2_squared
from ._core._dtype import cast as cast
from ._core._errors import error_message as error_message, readable_errors as readable_errors
from ._core._model_error import ErrorProfile as ErrorProfile
from ._core._law import (
    GaussianLaw as GaussianLaw,
    continuous_limit as continuous_limit,
    sample_law as sample_law,
    validate_grid as validate_grid,
)
from ._core._source import GaussianSource as GaussianSource
from ._sampler import (
    DDIM as DDIM,
    DDPM as DDPM,
    RK4 as RK4,
    AbstractMultistepSampler as AbstractMultistepSampler,
    AbstractRungeKutta as AbstractRungeKutta,
    AbstractSampler as AbstractSampler,
    AffineStep as AffineStep,
    Combination as Combination,
    DPMSolverMultistep as DPMSolverMultistep,
    EDMHeun as EDMHeun,
    Euler as Euler,
    EulerMaruyama as EulerMaruyama,
    ExponentialIntegrator as ExponentialIntegrator,
    Heun as Heun,
    JainZhang as JainZhang,
    Level as Level,
    StepInfo as StepInfo,
)
from ._schedule import (
    EDM as EDM,
    AbstractSchedule as AbstractSchedule,
    Cosine as Cosine,
    Discrete as Discrete,
    LinearBeta as LinearBeta,
    LogSNRLinear as LogSNRLinear,
    RectifiedFlow as RectifiedFlow,
    SigmaFloor as SigmaFloor,
    SubInterval as SubInterval,
    Tangent as Tangent,
)

# --- analysis: asymptotics, analytic optima, closed forms ---------------------------------------------
from ._analysis._asymptotics import (
    EndExponents as EndExponents,
    check_regular as check_regular,
    end_exponents as end_exponents,
    is_singular as is_singular,
    kl_leading_term as kl_leading_term,
    leading_term_functionals as leading_term_functionals,
    w2_leading_term as w2_leading_term,
    w2_squared_leading_term as w2_squared_leading_term,
)
from ._analysis._ddim_closed_form import ddim_law as ddim_law
from ._analysis._jain_zhang import (
    JainZhangBoundTerms as JainZhangBoundTerms,
    chain_rule_kl_bound as chain_rule_kl_bound,
    jain_zhang_bound_terms as jain_zhang_bound_terms,
    jain_zhang_grid as jain_zhang_grid,
    jain_zhang_law as jain_zhang_law,
    ou_schedule as ou_schedule,
)
from ._analysis._optimal import (
    EulerLagrangeSchedule as EulerLagrangeSchedule,
    euler_lagrange_schedule as euler_lagrange_schedule,
    isotropic_optimal_kl as isotropic_optimal_kl,
    tangent_functionals as tangent_functionals,
    tangent_gamma as tangent_gamma,
)

# --- optimization: learnable modules, optimize, time steps for pretrained models ----------------------
from ._optimization._grid_scores import (
    GridComparison as GridComparison,
    GridScore as GridScore,
    format_table as format_table,
    score_grid as score_grid,
    score_grids as score_grids,
)
from ._optimization._learnable import (
    LearnableGrid as LearnableGrid,
    LearnableSchedule as LearnableSchedule,
    TimeWarp as TimeWarp,
    WarpedSchedule as WarpedSchedule,
)
from ._optimization._network_error import (
    GaussianFit as GaussianFit,
    fit_gaussian as fit_gaussian,
    measure_error_profile as measure_error_profile,
)
from ._optimization._optimize import OptimizeResult as OptimizeResult, optimize as optimize
from ._optimization._select import (
    Candidate as Candidate,
    TimestepSelection as TimestepSelection,
    select_timesteps as select_timesteps,
)
from ._optimization._timesteps import (
    GridOptimization as GridOptimization,
    compare_grids as compare_grids,
    interpolation_cost as interpolation_cost,
    optimize_grid as optimize_grid,
)

# --- interop: export to diffusers, k-diffusion, JSON (grids: `gdj.grids`) -----------------------------
from ._interop._export import (
    ExportWarning as ExportWarning,
    from_json as from_json,
    to_diffusers as to_diffusers,
    to_json as to_json,
    to_k_diffusion as to_k_diffusion,
)

# --- scale: sweeps, sharding, compression -------------------------------------------------------------
from ._scale._compress import (
    Compression as Compression,
    compress as compress,
    compress_power_law as compress_power_law,
    deduplicate as deduplicate,
)
from ._scale._sharding import DeviceSharding as DeviceSharding
from ._scale._sweep import Sweep as Sweep, sweep as sweep

# --- mixtures: Gaussian mixtures, Lipschitz constants, Monte Carlo ------------------------------------
from ._mixtures._lipschitz import (
    HessianNormMaximum as HessianNormMaximum,
    LipschitzConstant as LipschitzConstant,
    gaussian_score_lipschitz as gaussian_score_lipschitz,
    hessian_eigenvalue_bounds as hessian_eigenvalue_bounds,
    hessian_norm as hessian_norm,
    maximize_hessian_norm as maximize_hessian_norm,
    score_lipschitz as score_lipschitz,
)
from ._mixtures._mixture import GaussianMixture as GaussianMixture, covariance_crossings as covariance_crossings
from ._mixtures._monte_carlo import (
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

# --- plots ---------------------------------------------------------------------------------------------
from ._plot import (
    plot_error_spectrum as plot_error_spectrum,
    plot_error_vs_nfe as plot_error_vs_nfe,
    plot_schedules as plot_schedules,
)

__version__ = "0.1.0"
