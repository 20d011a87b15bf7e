"""The docs hold together: README stays an index, every page the site's nav names exists,
every command block the tests run is where they look for it, and the site builds in strict
mode (a broken link or a page outside the nav fails it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_docs_blocks import PAGES, block, token_line

DOCS = ROOT / "docs"


def nav_pages(entries) -> list[str]:
    """Every page (a docs-relative path) named in a MkDocs nav, nested sections included."""
    pages = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages += nav_pages(value)
            elif not re.match(r"[a-z]+://", value):
                pages.append(value)
    return pages


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_readme_is_an_index_of_at_most_150_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move prose into docs/"
    text = "\n".join(lines)
    assert "<!-- headline:begin -->" in text and "<!-- headline:end -->" in text


def test_readme_and_ci_run_the_same_test_command():
    command = ('pip install torch==2.13.0 -e ".[dev]" && ruff check . && mkdocs build --strict'
               " && pytest")
    assert command in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command


def test_every_page_in_the_nav_exists():
    config = mkdocs_config()
    assert config["docs_dir"] == "docs"
    pages = nav_pages(config["nav"])
    assert pages and len(pages) == len(set(pages)), pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"named in mkdocs.yml's nav, not in docs/: {missing}"


def test_every_hook_named_in_mkdocs_yml_is_a_file():
    missing = [hook for hook in mkdocs_config()["hooks"] if not (ROOT / hook).is_file()]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(PAGES))
def test_every_block_the_tests_run_is_on_its_page(name):
    assert block(name).strip()


def test_the_token_command_is_on_its_page():
    assert "umask 077" in token_line()


def test_every_marked_block_in_the_docs_is_run_by_a_test():
    marked = {m for page in DOCS.rglob("*.md")
              for m in re.findall(r"<!-- test: ([\w-]+) -->", page.read_text())}
    assert marked == set(PAGES), f"marked but not run: {marked - set(PAGES)}"


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
