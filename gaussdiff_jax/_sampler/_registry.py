"""Samplers by name: the one table the CLI, grids and docs read (adding a sampler = one `@register` line).

```python
@register("dpmpp-2m", "DPM-Solver++(2M), Stable Diffusion's default")
class DPMSolverPlusPlus2M(AbstractMultistepSampler): ...

gdj.samplers.make("dpmpp-2m")          # an instance
gdj.samplers.available()               # every registered name
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple


class Entry(NamedTuple):
    """One registered sampler name."""

    name: str
    """The canonical name (lower case, words joined by `-`)."""
    cls: type
    """The sampler class."""
    description: str
    """One line for help texts."""
    defaults: Mapping[str, Any]
    """Constructor options this name fixes (e.g. `ddpm-pg` = `DDPM(beta="linearized")`)."""


_ENTRIES: dict[str, Entry] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register(
    name: str,
    description: str,
    cls: type | None = None,
    *,
    aliases: tuple[str, ...] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[type], type] | type:
    """Register a sampler class under `name` (a class decorator, or a call with `cls` for a preset variant).

    **Arguments:**

    - `name`: the canonical name, e.g. `"dpmpp-2m"`; case and `_`/`-` do not matter when looking it up.
    - `description`: one line for `--help` and the docs.
    - `cls`: the class (omit when used as a decorator).
    - `aliases`: other accepted spellings.
    - `defaults`: constructor options this name fixes (a preset variant of the class).
    """

    def add(klass: type) -> type:
        key = _key(name)
        if key in _ENTRIES and _ENTRIES[key].cls is not klass:
            raise ValueError(f"sampler name {name!r} is already registered for {_ENTRIES[key].cls.__name__}.")
        _ENTRIES[key] = Entry(key, klass, description, dict(defaults or {}))
        for alias in aliases:
            _ALIASES[_key(alias)] = key
        return klass

    return add if cls is None else add(cls)


def available() -> list[str]:
    """Every registered sampler name, in registration order."""
    return list(_ENTRIES)


def entry(name: str) -> Entry:
    """The `Entry` registered under `name` (or an alias). **Raises:** `ValueError` naming the choices."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _ENTRIES:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(_ENTRIES)}.")
    return _ENTRIES[key]


def make(name: str, **options):
    """A sampler instance by name, with `options` passed to its constructor (over the name's `defaults`)."""
    found = entry(name)
    try:
        return found.cls(**{**found.defaults, **options})
    except TypeError as error:
        raise ValueError(f"sampler {found.name!r} ({found.cls.__name__}) does not take these options: {error}") from None


def name_of(sampler) -> str:
    """The registered name of a sampler instance (the most specific entry whose defaults it matches)."""
    best = None
    for e in _ENTRIES.values():
        if type(sampler) is e.cls and all(getattr(sampler, k, None) == v for k, v in e.defaults.items()):
            if best is None or len(e.defaults) > len(best.defaults):
                best = e
    if best is None:
        raise ValueError(f"{type(sampler).__name__} is not a registered sampler (see gdj.samplers.register).")
    return best.name
