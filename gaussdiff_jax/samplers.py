"""Samplers by name, and the classes to build new ones.

```python
import gaussdiff_jax as gdj
gdj.samplers.available()                  # ['ddim', 'ddpm', 'ddpm-pg', 'euler', 'heun', ...]
gdj.samplers.make("ddim", eta=0.5)        # == gdj.DDIM(eta=0.5)
gdj.samplers.describe("heun")             # one line for help texts
```
Every sampler class is also a top-level name (`gdj.DDIM`, `gdj.Heun`, ...). A new sampler is a class in
`gaussdiff_jax/_sampler/` with one `@register(...)` line (see CONTRIBUTING.md).
"""

from ._sampler import (
    AbstractSampler as AbstractSampler,
    AffineStep as AffineStep,
)
from ._sampler._registry import (
    Entry as Entry,
    available as available,
    entry as entry,
    make as make,
    name_of as name_of,
    register as register,
)


def describe(name: str) -> str:
    """The one-line description registered for `name`."""
    return entry(name).description
