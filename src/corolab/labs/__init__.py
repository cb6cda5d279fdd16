"""Classroom labs: start one, check your work, grade a class.

From a notebook cell: ``from corolab.labs import check; check(1)`` prints the same report as
``corolab lab check 1``.
"""

from __future__ import annotations

from pathlib import Path

from corolab.labs.grading import LabResult, grade, points
from corolab.labs.registry import Lab, LabError, all_labs, get_lab
from corolab.labs.report import format_report
from corolab.labs.workspace import default_workspace, find_target, lab_and_target, start


def check(number: int | str | None = None, path: str | Path | None = None) -> LabResult:
    """Grade your file for lab ``number`` (its number or its slug, e.g. ``"toy-event-loop"``) and print the
    report; ``path`` defaults to where `start` put it. Without ``number``, the lab is the one whose folder
    (``corolab-labs/labNN-slug``) the path, or the notebook, is in."""
    lab, target, note = lab_and_target(number, Path(path) if path is not None else None)
    if note:
        print(note)
    result = grade(lab, target)
    print(format_report(result))
    return result


__all__ = ["Lab", "LabError", "LabResult", "all_labs", "check", "format_report", "get_lab", "grade", "points", "start"]
