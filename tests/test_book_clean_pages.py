"""The built book shows readers only what its chapters mean to show.

Every code cell runs at build time, and MyST-NB puts whatever a cell wrote to stderr on the page, in a block
of its own (``<div class="output stderr ...">``). Library progress bars, a kernel build's message or a stray
warning land there, and a reader has to scroll past them. This test reads every page of ``_build/html`` and
fails on any stderr block, and on any warning or traceback in a cell's output, unless the cell is tagged
``intended-stderr`` (MyST-NB writes a cell's tags as classes: ``<div class="cell tag_intended-stderr ...">``).

A chapter that means to show a warning or an error tags the cell::

    ```{code-cell} ipython3
    :tags: [intended-stderr]
    ```

``scripts/build-book.sh`` keeps library output off the pages: it converts the embedded model and builds the
fused kernels before the chapters run, and turns off Hugging Face's progress bars.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
TAG = "tag_intended-stderr"
# A warning as Python prints it ("file.py:3: UserWarning: text"), or a traceback's first line.
UNINTENDED = re.compile(r"\b[A-Z]\w*Warning: |Traceback \(most recent call last\)")

pytestmark = pytest.mark.book


def _pages() -> list[Path]:
    if not (HTML / "index.html").exists():
        reason = "the book is not built: run scripts/build-book.sh first"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sorted(p for p in HTML.rglob("*.html") if not {"_static", "_sources", "_images"} & set(p.parts))


def unintended_outputs(html: str) -> list[str]:
    """What a page shows that no cell meant to show: one line per stderr block, warning or traceback."""
    from bs4 import BeautifulSoup

    found = []
    for cell in BeautifulSoup(html, "html.parser").select("div.cell"):
        if TAG in cell.get("class", []):
            continue
        for output in cell.select("div.cell_output div.output"):
            text = output.get_text()
            classes = output.get("class", [])
            first = next((line for line in text.splitlines() if line.strip()), "")[:160]
            if "stderr" in classes:
                found.append(f"stderr: {first}")
            elif "traceback" in classes:
                found.append(f"error: {first}")
            elif match := UNINTENDED.search(text):
                line = next(line for line in text.splitlines() if match.group(0) in line)
                found.append(f"in output: {line.strip()[:160]}")
    return found


def test_the_check_sees_stderr_warnings_and_tracebacks() -> None:
    page = """
    <div class="cell docutils container"><div class="cell_output docutils container">
      <div class="output stream"><pre>fine</pre></div>
      <div class="output stderr"><pre>Loading weights: 100%</pre></div></div></div>
    <div class="cell docutils container"><div class="cell_output docutils container">
      <div class="output stream"><pre>x.py:1: FutureWarning: old</pre></div></div></div>
    <div class="cell docutils container"><div class="cell_output docutils container">
      <div class="output text_plain"><pre>Traceback (most recent call last):</pre></div></div></div>
    <div class="cell tag_intended-stderr docutils container"><div class="cell_output docutils container">
      <div class="output stderr"><pre>x.py:2: UserWarning: shown on purpose</pre></div></div></div>
    """
    assert unintended_outputs(page) == [
        "stderr: Loading weights: 100%",
        "in output: x.py:1: FutureWarning: old",
        "in output: Traceback (most recent call last):",
    ]


def test_no_page_shows_unintended_stderr_warnings_or_tracebacks() -> None:
    problems = []
    for page in _pages():
        for found in unintended_outputs(page.read_text(encoding="utf-8")):
            problems.append(f"{page.relative_to(HTML)}: {found}")
    assert not problems, (
        "pages show output no chapter meant to show (silence it, or tag the cell intended-stderr):\n"
        + "\n".join(problems)
    )
