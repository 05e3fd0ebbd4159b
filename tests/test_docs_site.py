"""The docs site builds with ``mkdocs build --strict`` (a broken link, a page missing
from the nav, a docstring mkdocstrings can't read: each fails it), and what it builds
fetches nothing from elsewhere. Its code blocks run in test_readme.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
#: What the build reads: its configuration, its pages, the root files its hook includes,
#: and the library's sources, which mkdocstrings reads without importing them.
BUILD_INPUTS = [
    "mkdocs.yml",
    "docs",
    "breaker",
    "BENCHMARKS.md",
    "RELIABILITY.md",
    "CONTRIBUTING.md",
]
_TIMEOUT = 120


def pages() -> dict[str, str]:
    return {
        path.relative_to(DOCS).as_posix(): path.read_text()
        for path in DOCS.rglob("*.md")
        if "hooks" not in path.parts
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built from a copy of the tree, so the build writes nothing shared.

    docs/architecture.md is written with the packages it draws; until it is here, the
    copy gets a stub, so the nav entry for it is tested and nothing else is hidden.
    """
    tree = tmp_path_factory.mktemp("docs-tree")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tree / name)
    stub = tree / "docs" / "architecture.md"
    if not stub.exists():
        stub.write_text("# Architecture\n")
    built = tree / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=tree,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return built


@pytest.mark.slow
def test_mkdocs_build_strict_passes(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "reference" / "api" / "breaker" / "index.html").is_file()


@pytest.mark.slow
def test_the_api_reference_documents_the_public_names(site: Path) -> None:
    import breaker

    html = (site / "reference" / "api" / "breaker" / "index.html").read_text()
    missing = [name for name in breaker.__all__ if f'id="breaker.{name}"' not in html]
    assert not missing


@pytest.mark.slow
def test_the_built_site_loads_nothing_from_elsewhere(site: Path) -> None:
    """No CDN at view time: no script, stylesheet, font or image from another host."""
    remote = re.compile(r"<(?:script|link|img|iframe)\b[^>]*(?:src|href)=\"(?:https?:)?//", re.I)
    for page in site.rglob("*.html"):
        found = remote.search(page.read_text())
        assert found is None, f"{page.relative_to(site)}: {found}"
    for sheet in site.rglob("*.css"):
        assert not re.search(r"url\((['\"]?)(https?:)?//", sheet.read_text()), sheet


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    listed = set(re.findall(r":\s+(\S+\.md)$", nav, re.MULTILINE))
    assert set(pages()) - {"architecture.md"} <= listed
    assert "architecture.md" in listed


@pytest.mark.slow  # it runs the console script
def test_the_cli_reference_names_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetbreaker", "--help"],
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=True,
    )
    listed = result.stdout.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    commands = re.findall(r"^    (\S+)", listed, re.MULTILINE)
    reference = (DOCS / "reference" / "cli.md").read_text()
    assert len(commands) >= 8
    assert [c for c in commands if f"fleetbreaker {c} " not in reference] == []


def test_every_metric_the_docs_name_is_exported() -> None:
    """The alerts and tables name only families of tests/golden/metrics.txt."""
    golden = (ROOT / "tests" / "golden" / "metrics.txt").read_text()
    exported = set(re.findall(r"^(fleetbreaker_\w+) ", golden, re.MULTILINE))
    named = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for text in pages().values()
        for name in re.findall(r"\b(fleetbreaker_[a-z_]+[a-z])\b(?!<)", text)
    }
    assert named - exported == set()
