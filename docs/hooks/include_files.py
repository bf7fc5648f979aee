"""mkdocs hook: a page that is one line `<!-- include: PATH -->` shows the repository file PATH.

`MATH.md` and `CONTRIBUTING.md` live at the repository root (GitHub shows them there); the site shows the
same text, read at build time, so there is one copy to keep up to date. The file's first `# ` heading is
the page title.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r"^<!-- include: (?P<path>[^ ]+) -->\s*$", re.MULTILINE)


def on_page_markdown(markdown: str, page, config, files) -> str:
    root = Path(config["config_file_path"]).parent

    def read(match: re.Match) -> str:
        return (root / match.group("path")).read_text(encoding="utf-8")

    return _INCLUDE.sub(read, markdown)
