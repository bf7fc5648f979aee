from ._base import AbstractSchedule as AbstractSchedule
from ._discrete import Discrete as Discrete
from ._standard import (
    EDM as EDM,
    AbstractLogAlphaBarSchedule as AbstractLogAlphaBarSchedule,
    Cosine as Cosine,
    LinearBeta as LinearBeta,
    LogSNRLinear as LogSNRLinear,
    Tangent as Tangent,
)
from ._flow import RectifiedFlow as RectifiedFlow
from ._wrappers import SigmaFloor as SigmaFloor, SubInterval as SubInterval
