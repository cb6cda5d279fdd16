"""Run a lab's graded tests against one student file, in a sandbox, and collect the points.

Why a sandbox: student code may loop forever, crash the interpreter, call ``exit()``, fail to import --
or try to cheat or to harm the machine. Each of those must cost that submission its points and nothing
else. Each run gets a fresh folder holding its own read-only copy of the lab's tests and of the
submission; pytest runs there inside :mod:`corolab.labs.sandbox` with the :mod:`corolab.labs.plugin`
plugin, which writes one signed record per finished test to a descriptor the grader opened. If the run
is killed for running out of time, the tests that finished still count. The grader trusts a record only
if its signature holds, the records come in order from one process in one session, and their tests are
exactly the lab's catalogue (collected separately, with no student code loaded).
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from corolab.labs import sandbox
from corolab.labs.registry import Lab, LabError

F = TypeVar("F", bound=Callable[..., object])
Status = Literal["ok", "timeout", "crash", "import-error", "missing", "not-attempted", "tampered"]
Catalogue = dict[str, tuple[int, str]]


def points(value: int, hint: str, params: str = "") -> Callable[[F], F]:
    """Mark a graded test with its points and the hint a student sees when it fails.

    ``params`` names the case the test tries (``"max_idle_polls=3"``): the report's "why" line starts
    with it, so a student can rerun that case by hand. Parametrized tests add their parameters too.
    """

    def mark(test: F) -> F:
        test.__corolab_points__ = value  # type: ignore[attr-defined]
        test.__corolab_hint__ = hint  # type: ignore[attr-defined]
        test.__corolab_params__ = params  # type: ignore[attr-defined]
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
    params: str = ""


@dataclass
class LabResult:
    lab: Lab
    path: Path
    status: Status
    tests: list[TestResult] = field(default_factory=list)
    detail: str = ""
    elapsed: float = 0.0

    @property
    def score(self) -> int:
        return sum(t.points for t in self.tests)

    @property
    def max_score(self) -> int:
        return sum(t.max_points for t in self.tests)

    @property
    def full_marks(self) -> bool:
        return self.status == "ok" and self.max_score > 0 and self.score == self.max_score


class SandboxWarning(UserWarning):
    """The grader had to run submissions with resource limits only (no namespaces here)."""


def default_limits(lab: Lab, timeout: float) -> sandbox.Limits:
    # CPU seconds per process: the wall-clock timeout is the real bound; this one stops a spinning
    # process that somehow outlived it.
    return sandbox.Limits(memory_mb=lab.memory_mb, cpu_s=int(timeout) + 10)


_catalogues: dict[tuple[Path, tuple], Catalogue] = {}


def graded_tests(lab: Lab) -> Catalogue:
    """Every graded test of a lab with its points and hint, read without running student code.

    Why: a submission that crashes before a test runs still needs that test listed with 0 points, and
    a run is trusted only if it reports exactly these tests. Cached while the tests' files are unchanged.
    """
    key = (lab.root, _fingerprint(lab.tests))
    if key not in _catalogues:
        run = _Run(lab, lab.tests, student=None, timeout=120, limits=default_limits(lab, 120))
        records, problem = run.execute(collect_only=True)
        tests = {r["name"]: (r["max_points"], r["hint"]) for r in records if r["kind"] == "catalogue"}
        if not tests:
            raise LabError(f"{lab.name} has no graded tests in {lab.tests}: {problem or run.output_tail}")
        _catalogues[key] = tests
    return dict(_catalogues[key])


def grade(lab: Lab, student: Path, timeout: float | None = None, catalogue: Catalogue | None = None,
          limits: sandbox.Limits | None = None, tests: Path | None = None) -> LabResult:
    """Grade one student file against a lab's tests; never raises for anything the student did.

    ``tests`` is the folder to copy the tests from (default: the lab's); the batch grader passes a
    snapshot it took before grading anyone.
    """
    started = time.perf_counter()
    student = Path(student).resolve()
    catalogue = catalogue if catalogue is not None else graded_tests(lab)
    if not student.is_file():
        result = _fill(LabResult(lab, student, "missing", detail=f"no such file: {student}"), catalogue, {})
    elif _is_untouched_starter(lab, student):
        result = _fill(LabResult(lab, student, "not-attempted", detail="the file is the untouched starter; edit it, then check again"),
                       catalogue, {})
    else:
        limit = timeout if timeout is not None else lab.timeout
        run = _Run(lab, tests or lab.tests, student, limit, limits or default_limits(lab, limit))
        result = run.grade(catalogue)
    result.elapsed = time.perf_counter() - started
    return result


def _is_untouched_starter(lab: Lab, student: Path) -> bool:
    if not lab.starter.is_file():
        return False
    normalise = lambda text: "\n".join(line.rstrip() for line in text.strip().splitlines())  # noqa: E731
    return normalise(student.read_text(encoding="utf-8", errors="replace")) == normalise(
        lab.starter.read_text(encoding="utf-8"))


def snapshot_tests(lab: Lab, folder: Path) -> Path:
    """Copy the lab's tests once, before any submission runs: every submission is graded from this copy."""
    target = Path(folder) / "tests"
    _copy_read_only(lab.tests, target)
    return target


def _fingerprint(folder: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts))


def _copy_read_only(source: Path, target: Path) -> None:
    # mutants.toml holds pieces of the solution: it never goes where student code can read it.
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "mutants.toml", ".*"))
    for path in sorted(target.rglob("*"), reverse=True):
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    os.chmod(target, 0o555)


def _fill(result: LabResult, catalogue: Catalogue, seen: dict[str, dict]) -> LabResult:
    """One line per catalogue test; a test that never reported says why it did not run."""
    first_missing = True
    for name, (max_points, hint) in catalogue.items():
        record = seen.get(name)
        passed = bool(record and record["passed"])
        if record:
            message = record["message"]
        elif result.status in ("timeout", "crash") and first_missing:
            message = f"this test was running when the run ended: {result.detail}"
            first_missing = False
        elif result.status in ("timeout", "crash"):
            message = "not run: follows from the earlier test that ended the run"
        elif result.status == "tampered":
            message = "refused (see above)"
        else:
            message = f"not run: {result.detail or result.status}"
        result.tests.append(TestResult(name, max_points if passed else 0, max_points, passed, hint, message,
                                       record.get("params", "") if record else ""))
    return result


class _Run:
    """One sandboxed pytest run in a fresh folder, with its own results descriptor and signing key."""

    def __init__(self, lab: Lab, tests: Path, student: Path | None, timeout: float, limits: sandbox.Limits):
        self.lab, self.tests, self.student, self.timeout, self.limits = lab, tests, student, timeout, limits
        self.output_tail = ""
        self.status: Status = "ok"
        self.detail = ""

    def grade(self, catalogue: Catalogue) -> LabResult:
        records, problem = self.execute(collect_only=False)
        result = LabResult(self.lab, self.student or Path(), self.status, detail=self.detail)
        if not problem:
            problem = _check_catalogue(records, catalogue)
        if problem:
            result.status, result.detail = "tampered", problem
            return _fill(result, catalogue, {})
        seen = {r["name"]: r for r in records if r["kind"] == "test"}
        errors = [r["message"] for r in records if r["kind"] == "import-error"]
        if errors:
            result.status, result.detail = "import-error", errors[0]
        return _fill(result, catalogue, seen)

    def execute(self, collect_only: bool) -> tuple[list[dict], str]:
        mode = _mode()
        switch_user = os.geteuid() == 0 and (mode == "namespaces" or sandbox.nobody_can_reach(sandbox.interpreter_paths()))
        base = Path(tempfile.mkdtemp(prefix="run-", dir=_private_root()))
        key = secrets.token_bytes(32)
        fds: list[int] = []
        try:
            os.chmod(base, 0o755)
            work = base / "work"
            work.mkdir(mode=0o755)
            _copy_read_only(self.tests, work / "tests")
            env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": _package_root(), "PYTHONHASHSEED": "0"}
            if self.student is not None:
                (work / "submission").mkdir(mode=0o755)
                shutil.copyfile(self.student, work / "submission" / self.lab.module)
                os.chmod(work / "submission" / self.lab.module, 0o444)
                env["COROLAB_STUDENT"] = f"../submission/{self.lab.module}"
                env["COROLAB_STUDENT_MODULE"] = Path(self.lab.module).stem
            scratch = work / "scratch"
            scratch.mkdir(mode=0o700)
            if switch_user:
                os.chown(scratch, sandbox.NOBODY, sandbox.NOBODY)
            env |= {"HOME": str(scratch), "TMPDIR": str(scratch)}
            results, key_fd, output = (_anonymous_file(base) for _ in range(3))
            fds += [results, key_fd, output]
            os.write(key_fd, key)
            os.lseek(key_fd, 0, os.SEEK_SET)
            env |= {"COROLAB_RESULTS_FD": str(results), "COROLAB_KEY_FD": str(key_fd)}
            argv = [sys.executable, "-m", "pytest", "../tests", "-p", "corolab.labs.plugin", "-q",
                    "-p", "no:cacheprovider", "--rootdir", "..", "--confcutdir", "..", "-c", os.devnull, "-o", "asyncio_mode=auto",
                    "--basetemp", str(scratch / "pytest")]
            if collect_only:
                argv.append("--collect-only")
            spec = sandbox.Spec(argv=argv, env=env, cwd=str(scratch), writable=[str(scratch)],
                                hidden=[str(self.lab.root.resolve().parent)],
                                reachable=sandbox.interpreter_paths() + [str(work)], limits=self.limits,
                                mode=mode, switch_user=switch_user)
            code = sandbox.run_boxed(spec, base / "spec.json", self.timeout, output, pass_fds=(results, key_fd))
            self.output_tail = " | ".join(_read_all(output).decode(errors="replace").strip().splitlines()[-5:])
            records, problem = _verify(_read_all(results), key)
            if code is None:
                self.status, self.detail = "timeout", f"stopped after {self.timeout:g} s"
            elif not any(r["kind"] == "session-end" for r in records):
                self.status = "crash"
                self.detail = f"the test process ended early (exit code {code}): {self.output_tail}"
            return records, problem
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(base, onerror=_force_remove)


def _mode() -> str:
    mode = sandbox.probe()
    if mode != "namespaces":
        warnings.warn("corolab lab: Linux namespaces are not available here, so submissions run with "
                      "resource limits only: a submission can read and write whatever this user can, and a "
                      "process that leaves its session can outlive its grading. Grade as root on Linux for the "
                      "full sandbox.", SandboxWarning, stacklevel=3)
    return mode


@lru_cache(maxsize=1)
def _private_root() -> Path:
    """Where every run's folder goes: others may pass through it, never list it, so no submission can
    find another's folder (their names are random)."""
    root = Path(tempfile.mkdtemp(prefix="corolab-grader-"))
    os.chmod(root, 0o711)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _package_root() -> str:
    import corolab

    return str(Path(corolab.__file__).resolve().parents[1])


def _anonymous_file(folder: Path) -> int:
    """A file with no name: the child inherits the descriptor, and no path to it exists to find."""
    fd, path = tempfile.mkstemp(dir=folder)
    os.unlink(path)
    return fd


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _force_remove(func, path, exc_info) -> None:  # type: ignore[no-untyped-def]
    os.chmod(os.path.dirname(path), 0o755)
    func(path)


def _verify(raw: bytes, key: bytes) -> tuple[list[dict], str]:
    """The records, if every one is signed, in order, and from one process; else a reason to refuse."""
    records: list[dict] = []
    lines = raw.split(b"\n")
    for line in lines[:-1]:  # the last piece has no newline: empty, or cut short by a kill
        try:
            outer = json.loads(line)
            text, mac = outer["record"], outer["mac"]
            expected = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        except (ValueError, KeyError, TypeError, AttributeError):
            return [], "the results hold a line the grading plugin did not write"
        if not hmac.compare_digest(expected, str(mac)):
            return [], "the results hold a record the grading plugin did not sign"
        record = json.loads(text)
        if record.get("seq") != len(records):
            return [], "records are missing, repeated or out of order"
        if records and record.get("pid") != records[0].get("pid"):
            return [], "a record came from a second process"
        records.append(record)
    kinds = [r["kind"] for r in records]
    if records and kinds[0] != "session-start":
        return [], "the results do not start with the test session"
    if kinds.count("session-start") > 1 or kinds.count("session-end") > 1:
        return [], "more than one test session reported"
    if "session-end" in kinds and kinds[-1] != "session-end":
        return [], "records arrived after the session ended"
    replaced = next((r.get("replaced") for r in records if r["kind"] == "session-end"), None)
    if replaced:
        return [], f"the grading plugin was changed while it ran ({', '.join(replaced)})"
    return records, ""


def _check_catalogue(records: list[dict], catalogue: Catalogue) -> str:
    listed = [r["name"] for r in records if r["kind"] == "catalogue"]
    tested = [r["name"] for r in records if r["kind"] == "test"]
    if listed and sorted(listed) != sorted(catalogue):
        return "the run's tests are not the lab's tests"
    if len(tested) != len(set(tested)) or not set(tested) <= set(catalogue):
        return "the run reported tests twice, or tests the lab does not have"
    return ""
