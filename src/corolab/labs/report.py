"""Print a lab result the way a student reads it: each test, its points, and a hint where it failed."""

from __future__ import annotations

from corolab.labs.grading import LabResult

_STATUS_NOTE = {
    "timeout": "your code ran out of time (an endless loop, or waiting for something that never comes)",
    "crash": "the test process died (os._exit, a crash, or a killed interpreter)",
    "import-error": "your file could not be imported",
    "missing": "the file to check does not exist",
    "not-attempted": "not attempted",
    "refused": "refused: the grader will not copy this submission",
    "error": "the grader failed on this submission (not your code's fault); tell your instructor",
}
_UNVERIFIED = ("self-check: this copy of the labs has no reference solution, so these verdicts are the tests' "
               "own word; your instructor's grader also compares your results with the reference's")


def format_report(result: LabResult) -> str:
    lab = result.lab
    lines = [f"Lab {lab.number} ({lab.slug}): {lab.title}", f"checking {result.path}", ""]
    if result.status != "ok":
        lines += [f"!! {_STATUS_NOTE[result.status]}", f"   {result.detail}", ""]
    width = max((len(t.name) for t in result.tests), default=10)
    for test in result.tests:
        mark = "PASS" if test.passed else "FAIL"
        lines.append(f"  {mark}  {test.name:<{width}}  {test.points}/{test.max_points}")
        if not test.passed:
            lines.append(f"        hint: {test.hint}")
            if test.message:
                where = f"with {test.params}: " if test.params else ""
                lines.append(f"        why:  {where}{test.message}")
    lines += ["", f"score: {result.score}/{result.max_score}" + ("  full marks!" if result.full_marks else "")]
    if not result.verified and result.status == "ok":
        lines.append(_UNVERIFIED)
    return "\n".join(lines)
