"""Run a lab's graded tests against one student file, in a subprocess, and collect the points.

Why a subprocess: student code may loop forever, crash the interpreter, call ``exit()`` or fail to import.
Each of those must cost that submission its points and nothing else. The child runs pytest with the
:mod:`corolab.labs.plugin` plugin, which appends one JSON line per finished test to a results file; if
the child is killed for running out of time, the tests that finished still count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from corolab.labs.registry import Lab, LabError

F = TypeVar("F", bound=Callable[..., object])
Status = Literal["ok", "timeout", "crash", "import-error", "missing"]


def points(value: int, hint: str) -> Callable[[F], F]:
    """Mark a graded test with its points and the hint a student sees when it fails."""

    def mark(test: F) -> F:
        test.__corolab_points__ = value  # type: ignore[attr-defined]
        test.__corolab_hint__ = hint  # type: ignore[attr-defined]
        return test

    return mark


@dataclass(frozen=True)
class TestResult:
    name: str
    points: int
    max_points: int
    passed: bool
    hint: str
    message: str = ""


@dataclass
class LabResult:
    lab: Lab
    path: Path
    status: Status
    tests: list[TestResult] = field(default_factory=list)
    detail: str = ""

    @property
    def score(self) -> int:
        return sum(t.points for t in self.tests)

    @property
    def max_score(self) -> int:
        return sum(t.max_points for t in self.tests)

    @property
    def full_marks(self) -> bool:
        return self.status == "ok" and self.max_score > 0 and self.score == self.max_score


def graded_tests(lab: Lab) -> dict[str, tuple[int, str]]:
    """Every graded test of a lab with its points and hint, read without running student code.

    Why: a submission that crashes before a test runs still needs that test listed with 0 points.
    """
    result = _run_child(lab, student=None, collect_only=True, timeout=60)
    tests = _catalogue(result)
    if not tests:
        raise LabError(f"{lab.name} has no graded tests in {lab.tests}")
    return tests


def grade(lab: Lab, student: Path, timeout: float | None = None, catalogue: dict[str, tuple[int, str]] | None = None) -> LabResult:
    """Grade one student file against a lab's tests; never raises for anything the student did."""
    student = Path(student).resolve()
    if not student.is_file():
        return _fill(LabResult(lab, student, "missing", detail=f"no such file: {student}"),
                     catalogue if catalogue is not None else graded_tests(lab), {})
    limit = timeout if timeout is not None else lab.timeout
    try:
        lines = _run_child(lab, student=student, collect_only=False, timeout=limit)
        status: Status = "ok"
        detail = ""
    except _ChildTimedOut as exc:
        lines, status, detail = exc.lines, "timeout", f"stopped after {limit:g} s"
    except _ChildDied as exc:
        lines, status, detail = exc.lines, "crash", exc.detail
    if catalogue is None:  # the run lists its tests before running them; collect separately only if it died first
        catalogue = _catalogue(lines) or graded_tests(lab)
    seen = {r["name"]: r for r in lines if r.get("kind") == "test"}
    if any(r.get("kind") == "import-error" for r in lines):
        status = "import-error"
        detail = next(r["message"] for r in lines if r.get("kind") == "import-error")
    return _fill(LabResult(lab, student, status, detail=detail), catalogue, seen)


def _catalogue(lines: list[dict]) -> dict[str, tuple[int, str]]:
    return {r["name"]: (r["max_points"], r["hint"]) for r in lines if r.get("kind") == "catalogue"}


def _fill(result: LabResult, catalogue: dict[str, tuple[int, str]], seen: dict[str, dict]) -> LabResult:
    for name, (max_points, hint) in catalogue.items():
        record = seen.get(name)
        passed = bool(record and record["passed"])
        message = record["message"] if record else ("did not run: " + (result.detail or result.status))
        result.tests.append(TestResult(name, max_points if passed else 0, max_points, passed, hint, message))
    return result


class _ChildTimedOut(Exception):
    def __init__(self, lines: list[dict]):
        self.lines = lines


class _ChildDied(Exception):
    def __init__(self, lines: list[dict], detail: str):
        self.lines = lines
        self.detail = detail


def _run_child(lab: Lab, student: Path | None, collect_only: bool, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="corolab-grade-") as tmp:
        results = Path(tmp) / "results.jsonl"
        env = dict(os.environ)
        env["COROLAB_RESULTS"] = str(results)
        env["COROLAB_STUDENT"] = str(student or "")
        env["COROLAB_STUDENT_MODULE"] = Path(lab.module).stem
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        cmd = [
            sys.executable, "-m", "pytest", str(lab.tests), "-p", "corolab.labs.plugin", "-q", "-p", "no:cacheprovider",
            "--rootdir", str(lab.root), "-c", os.devnull,
            "-o", "asyncio_mode=auto",
        ]
        if collect_only:
            cmd.append("--collect-only")
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills whatever it started too
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise _ChildTimedOut(_read_lines(results)) from None
        lines = _read_lines(results)
        finished = any(r.get("kind") == "session-end" for r in lines)
        if not finished:
            tail = output.decode(errors="replace").strip().splitlines()[-5:]
            raise _ChildDied(lines, f"the test process ended early (exit code {proc.returncode}): " + " | ".join(tail))
        return lines


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return out
