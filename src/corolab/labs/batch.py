"""Grade a folder of submissions into a CSV: the instructor's end of the lab workflow.

Layout: ``SUBMISSIONS/<student>.py`` or ``SUBMISSIONS/<student>/<module>.py`` (the lab's module name;
a folder with exactly one ``.py`` file is accepted too). Each submission is graded in its own sandbox,
several at a time, all from one copy of the lab's tests taken before the first submission runs, with one
seed drawn for the class and the reference solution's observations for it computed once.

Grading never stops for one submission: whatever goes wrong with it (a link, an unreadable file, a fault
of the grader's own) becomes that row's status and reason, and the other rows are graded as usual.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from corolab.labs.grading import LabResult, _fill, grade, graded_tests, new_seed, reference_observations, snapshot_tests
from corolab.labs.registry import Lab, LabError
from corolab.labs.sandbox import Limits


def find_submissions(lab: Lab, folder: Path) -> dict[str, Path]:
    """Map each student's name to the file to grade (which may not exist: that grades as missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabError(f"{folder} is not a folder of submissions")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():  # graded as refused: a link is never followed
            found[entry.stem if entry.suffix == ".py" else entry.name] = entry
        elif entry.is_file() and entry.suffix == ".py":
            found[entry.stem] = entry
        elif entry.is_dir():
            candidates = ([entry / lab.module] if os.path.lexists(entry / lab.module)
                          else sorted(entry.glob("*.py")))
            found[entry.name] = candidates[0] if len(candidates) == 1 else entry / lab.module
    if not found:
        raise LabError(f"no submissions in {folder}: expected <student>.py files or <student>/ folders")
    return found


def grade_folder(lab: Lab, folder: Path, jobs: int | None = None, timeout: float | None = None,
                 progress: bool = True, limits: Limits | None = None) -> dict[str, LabResult]:
    submissions = find_submissions(lab, folder)
    catalogue = graded_tests(lab)
    jobs = jobs or os.cpu_count() or 2
    results: dict[str, LabResult] = {}
    private = Path(tempfile.mkdtemp(prefix="corolab-tests-"))
    try:
        tests = snapshot_tests(lab, private)
        seed = new_seed()
        reference = reference_observations(lab, seed, tests, limits, catalogue)
        with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(
                total=len(submissions), desc=f"grading lab {lab.number:02d}", unit="submission",
                disable=not progress) as bar:
            futures = {name: pool.submit(grade, lab, path, timeout, catalogue, limits, tests, seed, reference)
                       for name, path in submissions.items()}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except Exception as exc:  # the grader's own fault: this row says so, the class goes on
                    results[name] = _fill(LabResult(lab, submissions[name], "error", seed=seed,
                                                    detail=f"{type(exc).__name__}: {exc}"), catalogue, {})
                bar.update(1)
    finally:
        for path in sorted(private.rglob("*"), reverse=True):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        shutil.rmtree(private, ignore_errors=True)
    return results


def write_csv(results: dict[str, LabResult], path: Path) -> None:
    names = [t.name for t in next(iter(results.values())).tests]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "status", *names, "total", "max", "seconds", "seed", "detail"])
        for student, result in results.items():
            points = {t.name: t.points for t in result.tests}
            writer.writerow([student, result.status, *(points.get(n, 0) for n in names), result.score,
                             result.max_score, f"{result.elapsed:.1f}", result.seed, result.detail])
