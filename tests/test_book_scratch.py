"""A chapter's scratch files go when its kernel does: running the book leaves nothing in the reader's /tmp.

Why: chapters that wrote sample logs or results into ``tempfile.mkdtemp()`` left one folder behind per
run (about a dozen after a day of builds here). They now hold a ``tempfile.TemporaryDirectory``, which
removes itself when the kernel exits (JupyterLab's shut-down or restart, the book build's end).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAKY = re.compile(r"\bmkdtemp\(|\bmkstemp\(|NamedTemporaryFile\([^)]*delete\s*=\s*False")

pytestmark = pytest.mark.book


def chapters() -> list[Path]:
    return sorted(p for p in (ROOT / "book").rglob("*.md") if "_build" not in p.parts)


def test_no_chapter_creates_scratch_that_outlives_it() -> None:
    leaky = [f"{p.relative_to(ROOT)}:{n}" for p in chapters()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if LEAKY.search(line)]
    assert not leaky, f"use tempfile.TemporaryDirectory (removed when the kernel exits) instead: {leaky}"


def test_a_chapter_leaves_its_temporary_folder_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute a chapter that writes a sample log, as the book build does, with its own TMPDIR."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    source = ROOT / "book/part1-generators/07-cleanup.md"
    notebook = jupytext.read(source)
    first = next(c for c in notebook.cells if c.cell_type == "code")
    first.source += "\nimport tempfile as _t\nprint('scratch in', _t.gettempdir())"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(source.parent)}})
    client.execute()  # shuts the kernel down at the end, as the book build does
    printed = "".join(o.get("text", "") for o in first.get("outputs", []))
    assert f"scratch in {tmp_path}" in printed  # the kernel really wrote under our TMPDIR
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("corolab-")]
    assert not left, f"left behind: {left}"
