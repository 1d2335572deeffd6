"""The Markdown pages: every local link points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweep.testing.stores import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = sorted(p for p in ROOT.rglob("*.md") if not any(part.startswith(".") or part in ("build", "mlruns") for part in p.relative_to(ROOT).parts))


def local_links(page: Path) -> list[str]:
    """The targets of a page's Markdown links that are files of this project (no scheme, no bare anchor)."""
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"^[a-z]+:|^#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_local_links_point_to_files_that_exist(page):
    missing = [t for t in local_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [web](https://optuna.org) [anchor](#top) [gone](nowhere.md#x)\n")
    assert local_links(page) == ["page.md", "nowhere.md#x"]
    assert not (page.parent / "nowhere.md").exists()
