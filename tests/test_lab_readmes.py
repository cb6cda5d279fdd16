"""The labs' Markdown reads well in three places: the book, GitHub, and the copy ``corolab lab start`` puts
in a student's folder (or the wheel ships). So no MyST roles such as ``{doc}`` (shown raw outside the
book), and every relative link names a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "labs" / "index.md", *(ROOT / "labs").glob("lab[0-9][0-9]-*/README.md")])
ROLE = re.compile(r"\{(doc|ref|numref|download|term)\}`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lab_page_uses_plain_links_that_resolve(page: Path):
    text = page.read_text(encoding="utf-8")
    assert not ROLE.search(text), f"{page.name}: a MyST role shows raw outside the book; use a Markdown link"
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).resolve().is_file(), f"{page.name}: broken link {target}"
