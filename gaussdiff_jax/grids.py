"""Time discretizations (grids) by name: the `t_0 > t_1 > ... > t_N` a sampler visits.

The public face of `gaussdiff_jax._interop._grid` and `._inverse` (see the former's docstring for where
the model is evaluated, diffusers' spacings on `Discrete` tables and the NFE accounting):

```python
import gaussdiff_jax as gdj
ts = gdj.grids.karras(gdj.EDM(), 10)                 # or gdj.grids.make("karras", schedule, nfe=10)
gdj.grids.available(gdj.Discrete.from_diffusers())   # every grid name that applies to a schedule
```
"""

from ._interop._grid import (
    AYS_SIGMAS as AYS_SIGMAS,
    Grid as Grid,
    align_your_steps as align_your_steps,
    available as available,
    describe as describe,
    interpolate as interpolate,
    karras as karras,
    leading as leading,
    linspace as linspace,
    log_snr_uniform as log_snr_uniform,
    loglinear_interp as loglinear_interp,
    make as make,
    num_evaluations as num_evaluations,
    quadratic as quadratic,
    range_options as range_options,
    round_to_indices as round_to_indices,
    steps_for_nfe as steps_for_nfe,
    trailing as trailing,
    training_indices as training_indices,
    uniform as uniform,
)
from ._interop._inverse import is_clean as is_clean, time_of_log_snr as time_of_log_snr, time_of_sigma as time_of_sigma
