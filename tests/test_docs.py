"""The docs stay complete: every public name has an API entry, and the committed notebooks show figures.

The site itself is built (and its cross-references checked) by `mkdocs build --strict`; this test needs no
docs dependency, so it runs with the test suite and fails as soon as a new public name has no page entry.
"""

import __future__

import importlib
import json
import re
import types
from pathlib import Path

import pytest

import gaussdiff_jax as gdj

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FACADES = ("grids", "samplers", "spectra", "mixtures", "asymptotics")
# One `::: gaussdiff_jax.<path>` line per documented object (mkdocstrings' syntax).
ENTRY = re.compile(r"^:::\s+(gaussdiff_jax(?:\.\w+)*)\s*$", re.MULTILINE)


def _entries() -> list[str]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        found += ENTRY.findall(page.read_text(encoding="utf-8"))
    return found


def _public(module) -> list[str]:
    """Names a user reaches as `module.NAME`: no underscore, no module object, no `from __future__` flag."""
    return [
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType | __future__._Feature)
    ]


def _missing() -> list[str]:
    documented = set(_entries())
    missing = [f"gdj.{n}" for n in _public(gdj) if f"gaussdiff_jax.{n}" not in documented]
    for facade in FACADES:
        if f"gaussdiff_jax.{facade}" not in documented:
            missing.append(f"gdj.{facade} (the module itself)")
        module = getattr(gdj, facade)
        for name in _public(module):
            same_as_top_level = getattr(gdj, name, None) is getattr(module, name)
            if same_as_top_level and f"gaussdiff_jax.{name}" in documented:
                continue  # documented once, under its top-level name
            if f"gaussdiff_jax.{facade}.{name}" not in documented:
                missing.append(f"gdj.{facade}.{name}")
    return missing


def test_every_public_name_has_an_api_entry():
    missing = _missing()
    assert not missing, (
        f"{len(missing)} public name(s) have no API entry: {', '.join(missing)}. Add one line "
        "`::: gaussdiff_jax.NAME` (or `::: gaussdiff_jax.FACADE.NAME`) to the right page of docs/api/."
    )


def test_every_api_entry_names_something_that_exists():
    for entry in _entries():
        parts = entry.split(".")
        # The longest importable module prefix, then attributes.
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"docs entry `::: {entry}` names nothing: remove or fix it."
                obj = getattr(obj, attr)
            break


def test_no_api_entry_is_repeated():
    entries = _entries()
    repeated = sorted({e for e in entries if entries.count(e) > 1})
    assert not repeated, f"documented twice (one entry per name): {repeated}"


def test_the_check_notices_a_missing_name(monkeypatch):
    monkeypatch.setattr(gdj, "brand_new_sampler", object(), raising=False)
    assert "gdj.brand_new_sampler" in _missing()


def test_notebooks_are_numbered():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert re.match(r"^\d\d_\w+\.ipynb$", path.name), f"{path.name}: name notebooks NN_topic.ipynb"


def test_every_notebook_is_in_the_site_navigation():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    absent = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in config]
    assert not absent, f"add {absent} to the Notebooks section of `nav:` in mkdocs.yml (one line each)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_executed_with_a_figure(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    outputs = [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell.get("outputs", [])]
    fix = f"run `PYTHONPATH=$PWD python docs/scripts/execute_notebooks.py notebooks/{path.name}` and commit it"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} stores no figure: {fix}."
    errors = [o.get("ename") for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name} stores errors {errors}: {fix}."
    # The repository stays light: few, small figures (lower dpi) per notebook.
    assert path.stat().st_size < 400 * 1024, f"{path.name} is {path.stat().st_size // 1024} KiB; shrink its figures."
