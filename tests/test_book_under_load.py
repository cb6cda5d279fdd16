"""The timing-sensitive chapters execute without a failure while a busy process holds one core.

Why: a chapter cell that asserted a measured ratio (Part VII ch. 1's ``ratios["ttft"] > 1``, 0.96 on a busy
machine) failed the whole book build on a first run. The chapters now assert only what is structural
(counts, errors, order, lower bounds that sleeps guarantee) and check timing claims with
``corolab.bench.settle``, which measures again or warns. This test executes those chapters with a
CPU-bound process pinned to one core, as on a shared two-core machine, and fails on any cell error.

Trade-off, to stay within about 6 minutes of CI: two rounds of Part VII's chapters 1-3 (the ones whose
claims are ratios of a few short measurements, about 70 s a round on a quiet 2-core machine). Chapters
4 and 5 (one and two minutes each), the notebooks (the real model) and Parts I-III (whose asserts are
about order, memory and virtual clocks, not wall-clock time) run once, in the book build. More rounds
would find rarer flips; ``COROLAB_LOAD_ROUNDS`` sets the number.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    "book/part7-load-testing/01-why-load-test.md",
    "book/part7-load-testing/02-metrics-and-traps.md",
    "book/part7-load-testing/03-build-the-load-generator.md",
]
ROUNDS = int(os.environ.get("COROLAB_LOAD_ROUNDS", "2"))

pytestmark = pytest.mark.book

BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


@pytest.fixture(scope="module")
def busy_core():
    """A process spinning on one core for the whole module; stopped (by its own handle) afterwards."""
    core = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", BUSY, str(core)])
    try:
        yield core
    finally:
        hog.kill()
        hog.wait(10)


@pytest.mark.parametrize("round_", range(1, ROUNDS + 1))
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: Path(c).stem)
def test_chapter_executes_beside_a_busy_core(chapter, round_, busy_core):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    source = ROOT / chapter
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(source.parent)}})
    client.execute()        # raises CellExecutionError, with the cell and its traceback, if any cell fails
    texts = ["".join(o.get("text", "")) for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    warned = [t for t in texts if "WARNING (a busy machine" in t]
    if warned:   # not a failure: the chapter said so to its reader; shown in the test log
        print(f"{chapter} round {round_}: {len(warned)} timing warnings", *warned, sep="\n")
