"""Gaussian mixtures: the diffused law, score and Hessian, Lipschitz constants, Monte Carlo (MATH.md section 5).

A namespace for the mixture area; every name is also available at the top level (`gdj.GaussianMixture`, ...).
"""

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
