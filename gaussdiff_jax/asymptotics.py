"""Asymptotics and analytic optima of DDIM's error (MATH.md section 4): leading terms, the tangent law,
the Euler–Lagrange optimum.

A namespace for the analysis area; every name is also available at the top level (`gdj.kl_leading_term`, ...).
"""

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
from ._analysis._optimal import (
    EulerLagrangeSchedule as EulerLagrangeSchedule,
    euler_lagrange_schedule as euler_lagrange_schedule,
    isotropic_optimal_kl as isotropic_optimal_kl,
    tangent_functionals as tangent_functionals,
    tangent_gamma as tangent_gamma,
)
