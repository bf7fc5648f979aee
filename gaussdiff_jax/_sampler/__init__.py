from ._base import (
    AbstractSampler as AbstractSampler,
    AffineStep as AffineStep,
    Marginal as Marginal,
    marginal as marginal,
)
from ._sigma import DDIM as DDIM, EDMHeun as EDMHeun
from ._time import (
    DDPM as DDPM,
    RK4 as RK4,
    AbstractRungeKutta as AbstractRungeKutta,
    Euler as Euler,
    EulerMaruyama as EulerMaruyama,
    ExponentialIntegrator as ExponentialIntegrator,
    Heun as Heun,
    ode_field as ode_field,
)
from ._multistep import (
    AbstractMultistepSampler as AbstractMultistepSampler,
    Combination as Combination,
    Level as Level,
    StepInfo as StepInfo,
)
from ._dpm_solver import DPMSolverMultistep as DPMSolverMultistep
from ._jain_zhang import JainZhang as JainZhang
