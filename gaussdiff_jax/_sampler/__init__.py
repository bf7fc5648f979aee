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
from ._kdpm2 import KDPM2 as KDPM2
from ._edm import EDMStochastic as EDMStochastic
from ._euler_ancestral import EulerAncestral as EulerAncestral
from ._flow_match import FlowMatchEuler as FlowMatchEuler, FlowMatchHeun as FlowMatchHeun
from ._dpm_singlestep import DPMSolverSinglestep as DPMSolverSinglestep
from ._diffusers_variants import DiffusersSDEDPMSolver3M as DiffusersSDEDPMSolver3M
from ._relabel import DDIMStep as DDIMStep, Relabeled as Relabeled, Truncated as Truncated
from ._unipc import UniPC as UniPC
from ._deis import DEIS as DEIS
from ._lms import LMS as LMS
from ._pndm import PNDM as PNDM
from ._ipndm import IPNDM as IPNDM
