"""mkdocs hook: put the `gaussdiff` command's help texts into the page that asks for them.

A line `<!-- gaussdiff-help -->` in a page becomes the top-level help and then one section per
subcommand with its `--help` text, as the installed command prints it (generated from
`gaussdiff_jax.cli.build_parser()` at build time, so the page never goes stale; a new subcommand
appears by itself).
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- gaussdiff-help -->"


def _help_sections() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps the help text to this width
    from gaussdiff_jax.cli import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, sub in subparsers.choices.items():
        parts += ["", f"## `gaussdiff {name}`", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _help_sections())
