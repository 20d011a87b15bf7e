"""MkDocs hook: the benchmark page's results, rendered from the published result files.

`docs/benchmarks/index.md` holds the marker below; every build replaces it with
`qfleet.bench.published.page_markdown` of `docs/benchmarks/` (one section per
`qfleet bench --save` JSON file), so a figure on the site can only come from a result file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

MARKER = "<!-- generated: benchmarks -->"
PAGE = "benchmarks/index.md"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE}: no {MARKER} marker for the benchmark results")
    docs = Path(config["docs_dir"])
    if str(docs.parent) not in sys.path:  # the checkout's qfleet, installed or not
        sys.path.insert(0, str(docs.parent))
    from qfleet.bench.published import page_markdown

    try:
        results = page_markdown(docs / "benchmarks")
    except ValueError as err:  # a file there that is not a published result
        raise PluginError(str(err)) from None
    return markdown.replace(MARKER, results)
