"""Execute the notebooks in place and store their outputs (figures included), for the docs site.

    PYTHONPATH=$PWD python docs/scripts/execute_notebooks.py            # every notebooks/*.ipynb
    PYTHONPATH=$PWD python docs/scripts/execute_notebooks.py notebooks/01_quick_tour.ipynb

Each notebook runs in a fresh kernel from the repository root's `notebooks/` folder; the script prints
its run time and stored size. CI runs the same notebooks with `pytest --nbmake notebooks` (which does
not write outputs back); `tests/test_docs.py` checks that the stored outputs contain figures.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def execute(path: Path, timeout: int = 600) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(path.parent)}}  # run from notebooks/, as nbmake does
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources=resources).execute()
    seconds = time.perf_counter() - start
    for index, cell in enumerate(notebook.cells):  # execution timestamps would make every rerun a diff
        stamps = cell.get("metadata", {}).pop("execution", None)
        if stamps and "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            took = _seconds(stamps["shell.execute_reply"]) - _seconds(stamps["iopub.execute_input"])
            if took > 2.0:
                print(f"  cell {index}: {took:.1f} s")
    nbformat.write(notebook, path)
    return seconds


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def main(paths: list[str]) -> None:
    notebooks = [Path(p).resolve() for p in paths] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        seconds = execute(path)
        print(f"{path.name}: {seconds:.1f} s, {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
