"""A "Try it" solution folds its prose, its code and the code's output behind one click (_ext/fold_solutions.py).

A solution is a ``Solution N`` dropdown admonition followed by a ``hide-input`` code cell. The built HTML
must hold that cell inside the dropdown, without a toggle of its own: a closed dropdown shows none of the
answer, and opening it shows all of it. Two checks: a one-page build of a small notebook (independent of
the book), and every page of the built book in ``_build/html`` (skips until the book is built).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"

pytestmark = pytest.mark.book

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict, parent: Element | None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], []

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


class Tree(HTMLParser):
    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = self.current = Element("root", {}, None)
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text.append(data)


def solutions(html: str) -> list[tuple[Element, Element | None]]:
    """Each Solution dropdown on the page (参考答案 in the Chinese edition), with the element right after it."""
    found = []
    for element in Tree(html).root.walk():
        if element.tag == "div" and {"dropdown", "admonition"} <= element.classes:
            title = next((c for c in element.children if "admonition-title" in c.classes), None)
            if title is not None and title.all_text().strip().startswith(("Solution", "参考答案")):
                siblings = element.parent.children
                after = siblings[siblings.index(element) + 1:]
                found.append((element, after[0] if after else None))
    return found


def check_page(html: str, where: str) -> int:
    """Assert no solution's cell is outside its dropdown; return how many cells are folded inside."""
    folded = 0
    for dropdown, after in solutions(html):
        if after is not None and after.tag == "div":
            assert not ({"cell", "tag_hide-input"} <= after.classes), \
                f"{where}: a solution's code cell (and its output) sits outside its dropdown"
        for inner in dropdown.walk():
            if {"cell", "solution-cell"} <= inner.classes:
                assert not any(e.tag == "details" for e in inner.walk()), f"{where}: a second toggle inside"
                folded += 1
    return folded


PAGE = textwrap.dedent('''\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # Folding

    ````{admonition} Solution 1
    :class: dropdown

    The prose of the answer.
    ````

    ```{code-cell} ipython3
    :tags: [hide-input]

    print("the answer is" + " 42")
    ```

    ```{code-cell} ipython3
    :tags: [hide-input]

    print("a setup cell after the solution's own, still part of it")
    ```

    ```{code-cell} ipython3
    print("a visible cell")
    ```

    ```{code-cell} ipython3
    :tags: [hide-input]

    print("hidden input, but no solution before it")
    ```
    ''')


def test_a_one_page_build_folds_source_and_output_into_the_dropdown(tmp_path):
    if shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("jupyter-book is not installed")
    (tmp_path / "_config.yml").write_text(
        "execute:\n  execute_notebooks: force\n"
        f"sphinx:\n  local_extensions:\n    fold_solutions: {ROOT / '_ext'}/\n")
    (tmp_path / "page.md").write_text(PAGE)
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(tmp_path / "page.md"),
                            "--config", str(tmp_path / "_config.yml"), "--path-output", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    pages = list((tmp_path / "out").rglob("page.html"))
    assert build.returncode == 0 and pages, build.stdout[-3000:] + build.stderr[-3000:]
    html = pages[0].read_text(encoding="utf-8")
    (dropdown, after), = solutions(html)
    inside = dropdown.all_text()
    assert "The prose of the answer." in inside
    assert "the answer is 42" in inside and "still part of it" in inside      # output of both cells, inside
    assert check_page(html, "page.html") == 2
    assert "a visible cell" in after.all_text()                                # the next visible cell stays out
    assert html.count("Show code cell source") == 1                            # the last cell keeps its toggle


def test_every_solution_in_the_built_book_is_folded_with_its_output():
    if not (HTML / "index.html").exists():
        if os.environ.get("CI"):
            pytest.fail("the book is not built: run scripts/build-book.sh first")
        pytest.skip("the book is not built: run scripts/build-book.sh first")
    folded = sum(check_page(page.read_text(encoding="utf-8"), str(page.relative_to(HTML)))
                 for page in HTML.rglob("*.html") if "_sources" not in page.parts)
    assert folded > 20
