"""A MkDocs hook: a page includes a Markdown file of the repository's root.

A line ``--8<-- "BENCHMARKS.md"`` in a page is replaced by that file, so generated
reports (BENCHMARKS.md by bench/report.py, RELIABILITY.md by
tests/support/reliability.py) and CONTRIBUTING.md are shown on the site without a copy
that could drift. Their links are written for the root, where GitHub shows them: a
link into ``docs/`` is made relative to the page, and a link to another root file
that the site includes points at its page.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: The root files the site includes, and the page of each.
PAGES = {
    "BENCHMARKS.md": "benchmarks.md",
    "RELIABILITY.md": "reliability.md",
    "CONTRIBUTING.md": "contributing.md",
}
_DIRECTIVE = re.compile(r'^--8<-- "([^"]+)"$', re.MULTILINE)
_LINK = re.compile(r"\]\((?!https?:|#)([^)\s]+)\)")


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    folder = posixpath.dirname(page.file.src_uri)

    def relative(target: str) -> str:
        return posixpath.relpath(target, folder or ".")

    def rebased(match: re.Match[str]) -> str:
        target = match[1]
        if target in PAGES:
            return f"]({relative(PAGES[target])})"
        if target.startswith("docs/"):
            return f"]({relative(target.removeprefix('docs/'))})"
        return match[0]

    def included(match: re.Match[str]) -> str:
        name = match[1]
        if name not in PAGES:
            raise ValueError(f"{page.file.src_uri}: {name} is not a root file the site includes")
        return _LINK.sub(rebased, (ROOT / name).read_text())

    return _DIRECTIVE.sub(included, markdown)
