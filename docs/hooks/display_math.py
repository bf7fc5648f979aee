"""mkdocs hook: display equations written inside a paragraph (`MATH.md` style) become display blocks.

GitHub renders `$$...$$` anywhere; pymdownx.arithmatex only treats it as display math when it is a block
of its own (blank lines around), and otherwise leaves stray dollars around an inline formula. This hook
puts blank lines around every `$$...$$` that starts and ends a line, so the page renders as on GitHub.
"""

from __future__ import annotations

import re

# `$$ ... $$` from the start of a line (after indentation) to the end of a line, possibly over several lines.
_DISPLAY = re.compile(r"^[ \t]*\$\$(?P<tex>.+?)\$\$[ \t]*$", re.MULTILINE | re.DOTALL)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return _DISPLAY.sub(lambda m: "\n$$" + m.group("tex") + "$$\n", markdown)
