"""Build the student edition of the labs: what an instructor hands out (nbgrader's "release" step).

Why a separate copy: the repository keeps each lab's solution and its broken variants (``mutants.toml``
holds pieces of the solution) next to the starter. The student edition keeps the task, the starter and
the graded tests -- students run ``corolab lab check`` against those -- and nothing that gives the answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from corolab.labs.registry import Lab, LabError

LEFT_OUT = ("solution", "mutants.toml", "__pycache__", ".*")


def release(labs: list[Lab], target: Path, force: bool = False) -> list[Path]:
    """Copy each lab into ``target/<lab folder>`` without solutions; return the folders written."""
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not force:
        raise LabError(f"{target} is not empty; use --force to replace the labs in it")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for lab in labs:
        folder = target / lab.name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(lab.root, folder, ignore=shutil.ignore_patterns(*LEFT_OUT))
        written.append(folder)
    index = labs[0].root.parent / "index.md" if labs else None
    if index is not None and index.exists():
        shutil.copyfile(index, target / "index.md")
    return written
