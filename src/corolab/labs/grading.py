"""Grade one submission: run the lab's tests on it in a box, then decide every verdict outside the box.

Why outside: the student's code runs in the same interpreter as pytest and the grading plugin, so it can
rewrite both, and any outcome the box reports may be forged. What the box cannot forge cheaply is what the
student's functions *computed*: each graded test ``observe()``s the values the student's code produced
from inputs drawn from a seed the grader picks for this run (:mod:`corolab.labs.plugin`). The grader runs
the lab's reference solution on the same seed, in the same kind of box, and a test earns its points only
if the box reported it passed *and* its observations equal the reference's. A submission that does not
compute the answers cannot produce them for a seed it has never seen.

Where the reference is missing (the student edition handed out without solutions), the box's own word is
all there is: the result says so (``verified`` is False), and only the instructor's grade counts.

Each run gets a fresh folder with its own read-only copy of the tests and of the submission, read once
from the submission without following links (:func:`read_submission`). A test that hangs is stopped after
the lab's per-test limit and the remaining tests run again in a fresh box, so one endless loop costs one
test, not the lab.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import secrets
import shutil
import stat
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
Status = Literal["ok", "timeout", "crash", "import-error", "missing", "not-attempted", "refused", "error"]
Catalogue = dict[str, tuple[int, str]]
Observations = dict[str, list]

#: The largest submission file the grader copies; a larger one is refused.
MAX_SUBMISSION_BYTES = 1 << 20
#: The most of a run's results file the grader reads (records and observations).
MAX_RESULTS_BYTES = 8 << 20
#: How many fresh boxes one submission may get after hangs or crashes inside tests.
MAX_RESUMES = 4


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
    verified: bool = True  # False: no reference solution here, so the verdicts are the box's own word
    seed: int = 0

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


class Refused(Exception):
    """A submission the grader will not copy (a link, a device, a file too large); the message says why."""


def default_limits(lab: Lab, timeout: float) -> sandbox.Limits:
    # CPU seconds per process: the wall-clock timeout is the real bound; this one stops a spinning
    # process that somehow outlived it.
    return sandbox.Limits(memory_mb=lab.memory_mb, cpu_s=int(timeout) + 10)


def new_seed() -> int:
    """A seed for one grading run: drawn when grading starts, so no submission can know it beforehand."""
    return secrets.randbelow(2**63)


_catalogues: dict[tuple[Path, tuple], Catalogue] = {}
_references: dict[tuple[Path, tuple, int], Observations] = {}


def graded_tests(lab: Lab) -> Catalogue:
    """Every graded test of a lab with its points and hint, read without running student code.

    Why: a submission that crashes before a test runs still needs that test listed with 0 points, and
    only these tests count. Cached while the tests' files are unchanged.
    """
    key = (lab.root, _fingerprint(lab.tests))
    if key not in _catalogues:
        require_pytest()
        run = _Run(lab, lab.tests, None, 120, default_limits(lab, 120), seed=0)
        records = run.execute(collect_only=True)
        tests = {r["name"]: (int(r["max_points"]), str(r["hint"])) for r in records if r.get("kind") == "catalogue"}
        if not tests:
            raise LabError(f"{lab.name} has no graded tests in {lab.tests}: {run.output_tail}")
        _catalogues[key] = tests
    return dict(_catalogues[key])


def require_pytest() -> None:
    """The graded tests run under pytest in this interpreter: say so plainly when it is missing."""
    missing = [name for name in ("pytest", "pytest_asyncio") if importlib.util.find_spec(name) is None]
    if missing:
        raise LabError(f"{' and '.join(m.replace('_', '-') for m in missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not installed; the graded tests need "
                       f"{'it' if len(missing) == 1 else 'them'}. Install the labs extra: "
                       f"pip install 'corolab[labs]' (or, from a wheel, 'corolab-0.1.0-py3-none-any.whl[labs]')")


def reference_observations(lab: Lab, seed: int, tests: Path | None = None, limits: sandbox.Limits | None = None,
                           catalogue: Catalogue | None = None) -> Observations | None:
    """What the lab's solution observes in every test for ``seed``; ``None`` where no solution ships.

    Raises :class:`LabError` when the solution itself fails a test: that is a fault of the lab, and no
    submission may be graded against it.
    """
    if not lab.solution.is_file():
        return None
    folder = tests or lab.tests
    key = (lab.root, _fingerprint(folder), seed)
    if key not in _references:
        catalogue = catalogue if catalogue is not None else graded_tests(lab)
        source = lab.solution.read_bytes()
        result, records = _grade_source(lab, source, folder, lab.timeout, limits or default_limits(lab, lab.timeout),
                                        seed, catalogue, reference=None)
        failed = [t for t in result.tests if not t.passed]
        if result.status != "ok" or failed:
            why = "; ".join(f"{t.name}: {t.message}" for t in failed[:3]) or result.detail
            raise LabError(f"{lab.name}: the reference solution does not pass its own tests ({result.status}): {why}")
        observed = {name: record.get("observed", []) for name, record in records.items()}
        blind = [name for name, values in observed.items() if not values]
        if blind:  # its verdict would be the box's word alone, which a submission can forge
            raise LabError(f"{lab.name}: these tests observe nothing, so no verdict on them can be checked: "
                           f"{', '.join(blind)} (each graded test must observe() what the code computed)")
        _references[key] = observed
    return _references[key]


def grade(lab: Lab, student: Path, timeout: float | None = None, catalogue: Catalogue | None = None,
          limits: sandbox.Limits | None = None, tests: Path | None = None, seed: int | None = None,
          reference: Observations | None | Literal["auto"] = "auto") -> LabResult:
    """Grade one submission; never raises for anything the submission holds or does.

    ``tests`` is the folder to copy the tests from (default: the lab's); the batch grader passes a
    snapshot it took before grading anyone, with one ``seed`` and the ``reference`` observations for it.
    """
    started = time.perf_counter()
    student = Path(os.path.abspath(student))
    catalogue = catalogue if catalogue is not None else graded_tests(lab)
    seed = new_seed() if seed is None else seed
    limit = timeout if timeout is not None else lab.timeout
    limits = limits or default_limits(lab, limit)
    try:
        source = read_submission(student)
    except FileNotFoundError:
        result = _fill(LabResult(lab, student, "missing", detail=f"no such file: {student}"), catalogue, {})
    except Refused as exc:
        result = _fill(LabResult(lab, student, "refused", detail=str(exc)), catalogue, {})
    else:
        if _is_untouched_starter(lab, source):
            result = _fill(LabResult(lab, student, "not-attempted",
                                     detail="the file is the untouched starter; edit it, then check again"), catalogue, {})
        else:
            if reference == "auto":
                reference = reference_observations(lab, seed, tests, limits, catalogue)
            result, _ = _grade_source(lab, source, tests or lab.tests, limit, limits, seed, catalogue, reference)
            result.path = student
    result.seed = seed
    result.elapsed = time.perf_counter() - started
    return result


def read_submission(path: Path) -> bytes:
    """The submission's bytes, read without following a link and only from a regular file of bounded size.

    Why so careful: the grader may run as root, and a submission is a folder a student made. A link in it
    could name a classmate's file, the solution or any file root can read; a FIFO would block the grader;
    ``/proc/self/mem`` fails on read. Each is refused with a reason instead.
    """
    path = Path(path)
    parent = path.parent
    if parent.is_symlink():
        raise Refused(f"{parent.name}/ is a symbolic link; submit the folder itself")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if path.is_symlink():
            raise Refused(f"{path.name} is a symbolic link; submit the file itself") from None
        raise Refused(f"{path.name} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{path.name} is not a regular file")
        if info.st_size > MAX_SUBMISSION_BYTES:
            raise Refused(f"{path.name} is larger than {MAX_SUBMISSION_BYTES // 1024} KiB")
        chunks, size = [], 0
        while size <= MAX_SUBMISSION_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SUBMISSION_BYTES:
            raise Refused(f"{path.name} is larger than {MAX_SUBMISSION_BYTES // 1024} KiB")
        return b"".join(chunks)
    except OSError as exc:
        raise Refused(f"{path.name} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _is_untouched_starter(lab: Lab, source: bytes) -> bool:
    if not lab.starter.is_file():
        return False
    normalise = lambda text: "\n".join(line.rstrip() for line in text.strip().splitlines())  # noqa: E731
    return normalise(source.decode("utf-8", errors="replace")) == normalise(lab.starter.read_text(encoding="utf-8"))


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


def _grade_source(lab: Lab, source: bytes, tests: Path, timeout: float, limits: sandbox.Limits, seed: int,
                  catalogue: Catalogue, reference: Observations | None) -> tuple[LabResult, dict[str, dict]]:
    """Run the tests on ``source`` in as many boxes as hangs and crashes need; then judge each test."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict] = {}
    problems: list[str] = []
    status: Status = "ok"
    detail = ""
    for attempt in range(MAX_RESUMES + 1):
        left = deadline - time.monotonic()
        if left <= 0.5:
            break
        run = _Run(lab, tests, source, left, limits, seed=seed, skip=sorted(seen),
                   test_timeout=min(lab.test_timeout, left))
        records = run.execute(collect_only=False)
        tests_seen = [r for r in records if r.get("kind") == "test" and r.get("name") in catalogue]
        for record in tests_seen:
            seen.setdefault(record["name"], record)
        errors = [str(r.get("message", "")) for r in records if r.get("kind") == "import-error"]
        if errors:
            return _judge(LabResult(lab, Path(), "import-error", detail=errors[0][:500]), catalogue, seen,
                          reference), seen
        if run.finished:
            break
        running = run.running if run.running in catalogue and run.running not in seen else None
        imported = any(r.get("kind") == "imported" for r in records)
        if run.hung_test and not imported:  # the import itself hangs: every fresh box would hang the same way
            status, detail = "timeout", f"importing {lab.module} did not finish within {run.test_timeout:g} s"
            break
        if run.hung_test:
            problems.append(f"{running} did not finish within {run.test_timeout:g} s")
            status = "timeout"
        elif run.timed_out:
            status, detail = "timeout", f"stopped after {timeout:g} s"
            if running:
                seen[running] = {"passed": False, "message": f"this test was running when the run ended: {detail}"}
            break
        else:
            status = "crash" if status == "ok" else status
            problems.append(f"the test process ended during {running or 'start-up'} (exit code {run.code}): "
                            f"{run.output_tail}"[:300])
        if running is None:  # nothing to skip: a second box would end the same way
            break
        seen[running] = {"passed": False, "message": problems[-1]}
    else:
        status = "timeout" if status == "ok" else status
    if problems and not detail:
        detail = "; ".join(problems)
    if status == "timeout" and not detail:
        detail = f"stopped after {timeout:g} s"
    result = _judge(LabResult(lab, Path(), status, detail=detail), catalogue, seen, reference)
    return result, seen


def _fill(result: LabResult, catalogue: Catalogue, seen: dict[str, dict]) -> LabResult:
    """A result with every catalogue test listed (0 points where nothing was seen)."""
    return _judge(result, catalogue, seen, None)


def _judge(result: LabResult, catalogue: Catalogue, seen: dict[str, dict], reference: Observations | None) -> LabResult:
    """One line per catalogue test. Outside the box: passed only if observations match the reference."""
    result.verified = reference is not None
    not_run = result.detail if result.status in ("timeout", "crash") else ""
    for name, (max_points, hint) in catalogue.items():
        record = seen.get(name)
        if record is None:
            if result.status == "import-error":
                message = "not run: follows from the import error above"
            elif not_run:
                message = f"not run: the run ended first ({not_run})"[:300]
            else:
                message = f"not run: {result.detail or result.status}"
            result.tests.append(TestResult(name, 0, max_points, False, hint, message))
            continue
        passed = record.get("passed") is True
        message = str(record.get("message", ""))[:300]
        if passed and reference is not None:
            expected = reference.get(name, [])
            got = record.get("observed")
            if got != expected:
                passed, message = False, _difference(got, expected)
        result.tests.append(TestResult(name, max_points if passed else 0, max_points, passed, hint, message,
                                       str(record.get("params", ""))[:200]))
    return result


def _difference(got: object, expected: list) -> str:
    """Say where a submission's observations part from the reference's, briefly."""
    if not isinstance(got, list):
        return "the test's observations were not recorded"
    for i, (mine, theirs) in enumerate(zip(got, expected)):
        if mine != theirs:
            return f"result {i + 1} differs from the reference: yours {_short(mine)}, expected {_short(theirs)}"
    if len(got) != len(expected):
        return f"the test observed {len(got)} results where the reference observes {len(expected)}"
    return "the observations differ from the reference's"


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Run:
    """One sandboxed pytest run in a fresh folder, with its own results descriptor."""

    def __init__(self, lab: Lab, tests: Path, source: bytes | None, timeout: float, limits: sandbox.Limits,
                 seed: int, skip: list[str] | None = None, test_timeout: float | None = None):
        self.lab, self.tests, self.source, self.timeout, self.limits = lab, tests, source, timeout, limits
        self.seed, self.skip = seed, skip or []
        self.test_timeout = test_timeout if test_timeout is not None else lab.test_timeout
        self.output_tail = ""
        self.code: int | None = None
        self.finished = self.timed_out = self.hung_test = False
        self.running: str | None = None

    def execute(self, collect_only: bool) -> list[dict]:
        mode = _mode()
        base = Path(tempfile.mkdtemp(prefix="run-", dir=_private_root()))
        switch = os.geteuid() == 0 and (mode == "namespaces" or sandbox.others_can_reach(sandbox.interpreter_paths()))
        uid = sandbox.box_uid() if switch else None
        fds: list[int] = []
        try:
            os.chmod(base, 0o755)
            work = base / "work"
            work.mkdir(mode=0o755)
            _copy_read_only(self.tests, work / "tests")
            env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                   "PYTHONPATH": _package_root(), "PYTHONHASHSEED": "0", "COROLAB_SEED": str(self.seed),
                   "COROLAB_SKIP": json.dumps(self.skip)}
            if self.source is not None:
                (work / "submission").mkdir(mode=0o755)
                target = work / "submission" / self.lab.module
                target.write_bytes(self.source)
                os.chmod(target, 0o444)
                env["COROLAB_STUDENT"] = f"../submission/{self.lab.module}"
                env["COROLAB_STUDENT_MODULE"] = Path(self.lab.module).stem
            scratch = work / "scratch"
            scratch.mkdir(mode=0o700)
            if uid is not None:
                os.chown(scratch, uid, uid)
            env |= {"HOME": str(scratch), "TMPDIR": str(scratch)}
            results, output = _anonymous_file(base), _anonymous_file(base)
            fds += [results, output]
            env["COROLAB_RESULTS_FD"] = str(results)
            argv = [sys.executable, "-m", "pytest", "../tests", "-p", "corolab.labs.plugin", "-q",
                    "-p", "no:cacheprovider", "--rootdir", "..", "--confcutdir", "..", "-c", os.devnull,
                    "-o", "asyncio_mode=auto", "--basetemp", str(scratch / "pytest")]
            if collect_only:
                argv.append("--collect-only")
            root = base / "root"
            root.mkdir(mode=0o755)
            spec = sandbox.Spec(argv=argv, env=env, cwd=str(scratch), writable=[str(scratch)],
                                readable=sandbox.interpreter_paths() + [str(work)], root=str(root),
                                limits=self.limits, mode=mode, uid=uid)
            watch = _Watch(results, self.test_timeout) if not collect_only else None
            self.code = sandbox.run_boxed(spec, base / "spec.json", self.timeout, output, pass_fds=(results,),
                                          watch=watch)
            self.output_tail = " | ".join(_read_all(output, 1 << 16).decode(errors="replace").strip().splitlines()[-5:])
            records = _parse(_read_all(results, MAX_RESULTS_BYTES))
            self.finished = any(r.get("kind") == "session-end" for r in records) and self.code is not None
            self.hung_test = watch is not None and watch.fired
            self.timed_out = self.code is None and not self.hung_test
            self.running = _running(records)
            return records
        finally:
            for fd in fds:
                os.close(fd)
            shutil.rmtree(base, onerror=_force_remove)


class _Watch:
    """Polled by :func:`sandbox.run_boxed`: stop the box when one test has run longer than its limit."""

    def __init__(self, fd: int, limit: float):
        self.fd, self.limit = fd, limit
        self.size = -1
        self.since = time.monotonic()
        self.fired = False

    def __call__(self) -> bool:
        size = os.fstat(self.fd).st_size
        if size != self.size:  # a record arrived: a test started or ended
            self.size, self.since = size, time.monotonic()
        elif time.monotonic() - self.since > self.limit and _running(_parse(_read_all(self.fd, MAX_RESULTS_BYTES))):
            self.fired = True
        return self.fired


def _running(records: list[dict]) -> str | None:
    """The test that had started and not ended when the records stop."""
    running = None
    for record in records:
        if record.get("kind") == "start":
            running = record.get("name")
        elif record.get("kind") == "test" and record.get("name") == running:
            running = None
    return running if isinstance(running, str) else None


def _parse(raw: bytes) -> list[dict]:
    """The run's records; a line that is not a JSON object is skipped (the box's word is not trusted)."""
    records = []
    for line in raw.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


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


def _read_all(fd: int, limit: int) -> bytes:
    size = min(os.fstat(fd).st_size, limit)
    return os.pread(fd, size, 0) if size else b""


def _force_remove(func, path, exc_info) -> None:  # type: ignore[no-untyped-def]
    os.chmod(os.path.dirname(path), 0o755)
    func(path)
