"""MkDocs hook (`hooks:` in mkdocs.yml, MkDocs >= 1.4): the config and CLI reference pages
are generated from the code at every build, so they cannot drift from it.

A page holds a marker line where the generated text goes:
`<!-- generated: config-reference -->` becomes `qfleet.configref.markdown()` (from the
config schema's field docstrings), `<!-- generated: cli-reference -->` becomes
`qfleet.clidoc.cli_markdown()` (from the typer app's commands and options).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qfleet import clidoc, configref

MARKERS: dict[str, Callable[[], str]] = {
    "<!-- generated: config-reference -->": configref.markdown,
    "<!-- generated: cli-reference -->": clidoc.cli_markdown,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Each marker line of the page replaced by the text it names; other pages unchanged."""
    if not any(marker in markdown for marker in MARKERS):
        return markdown
    lines = []
    for line in markdown.splitlines():
        make = MARKERS.get(line.strip())
        lines.append(make().rstrip("\n") if make is not None else line)
    return "\n".join(lines) + ("\n" if markdown.endswith("\n") else "")
