"""Every notebook page of the built book offers what a reader needs to run it elsewhere: the ``.ipynb``
executed during the build and the MyST ``.md`` source (which JupyterLab opens as a notebook through
jupytext, ``bash scripts/lab.sh``). Each download link must point at a file that exists, and the
notebook must be a valid one holding the chapter's code cells, in order.

Reads ``_build/html`` as ``scripts/build-book.sh`` leaves it; skips until the book is built.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"

pytestmark = pytest.mark.book


def _toc_docs() -> list[str]:
    """Every page in _toc.yml, as docnames (paths without suffix)."""
    yaml = pytest.importorskip("yaml")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    docs = [toc["root"]]

    def walk(entries: list) -> None:
        for entry in entries or ():
            if "file" in entry:
                docs.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    walk(toc.get("chapters", []))
    return docs


def _is_notebook(doc: str) -> bool:
    text = (ROOT / f"{doc}.md").read_text(encoding="utf-8")
    return text.startswith("---\n") and "\nkernelspec:" in text.split("\n---\n", 1)[0]


NOTEBOOK_PAGES = [doc for doc in _toc_docs() if (ROOT / f"{doc}.md").exists() and _is_notebook(doc)]


def check_downloads(html_root: Path, docname: str, source: Path) -> None:
    """The page ``docname`` in ``html_root`` links a valid executed .ipynb of ``source`` and the .md."""
    import jupytext
    import nbformat

    page = html_root / f"{docname}.html"
    html = page.read_text(encoding="utf-8")
    links = {Path(href).suffix: (page.parent / href).resolve()
             for href in re.findall(r'href="([^"]*_sources/[^"]*)"', html)}
    assert ".ipynb" in links, f"{docname}: no .ipynb download"
    assert ".md" in links, f"{docname}: no .md download"
    assert links[".md"].read_bytes() == source.read_bytes()
    notebook = nbformat.read(links[".ipynb"], as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    want = [c.source for c in jupytext.read(source).cells if c.cell_type == "code"]
    got = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert got == want, f"{docname}: the notebook's code cells differ from the chapter's"
    if want:
        assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "executed, with outputs"


def test_the_toc_has_notebook_pages():
    assert len(NOTEBOOK_PAGES) > 10


@pytest.mark.parametrize("edition", ["en", "zh"])
@pytest.mark.parametrize("doc", NOTEBOOK_PAGES)
def test_every_notebook_page_offers_its_ipynb_and_md(doc, edition):
    """In both editions. The Chinese one reads every notebook from the execution cache, as a cached rebuild
    of the English one does; MyST-NB then writes the notebook without its outputs (_ext/ipynb_download.py)."""
    if not (HTML / "index.html").exists():
        if os.environ.get("CI"):
            pytest.fail("the book is not built: run scripts/build-book.sh first")
        pytest.skip("the book is not built: run scripts/build-book.sh first")
    check_downloads(HTML if edition == "en" else HTML / "zh", doc, ROOT / f"{doc}.md")
