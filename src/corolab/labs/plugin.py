"""The pytest plugin the grader loads in its child process, next to the student's code.

It gives graded tests three fixtures:

``student``
    the student's file imported as a module (once per run);
``rng`` and ``seed``
    a random generator and an integer drawn from the run's seed (``COROLAB_SEED``, chosen by the grader
    for each grading run) and the test's name, so inputs change from run to run but not with test order;
``observe``
    ``observe(value)`` records plain data (None, bool, int, float, str, lists, tuples, dicts with string
    keys) that the student's code produced.

It writes one record per test to the results descriptor the grader opened: when the test starts (so a
hang can be named) and when it ends (its outcome, message and observations).

Nothing here is trusted. Student code runs in this process and can rewrite this module, pytest or the
records. The grader decides each verdict outside the box: a test passes only if its observations equal
those the reference solution gives for the same seed (see :mod:`corolab.labs.grading`). A record can lie
about an outcome; it cannot know the reference's observations for a seed drawn after it was written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

#: One test's observations, as JSON, may take this many characters; more fails the test.
MAX_OBSERVED_CHARS = 64_000

_module: ModuleType | None = None
_import_error: str | None = None
_observed: dict[str, list] = {}


def _writer() -> Callable[[dict], None]:
    fd = os.environ.pop("COROLAB_RESULTS_FD", None)
    if fd is None:
        return lambda record: None
    out = int(fd)

    def write(record: dict) -> None:
        os.write(out, (json.dumps(record, sort_keys=True) + "\n").encode())

    return write


_emit = _writer()
_SEED = os.environ.get("COROLAB_SEED", "0")


def _load_student() -> ModuleType:
    global _module, _import_error
    if _module is not None:
        return _module
    if _import_error is not None:
        pytest.fail("not run: follows from the import error above", pytrace=False)
    path = Path(os.environ["COROLAB_STUDENT"])
    name = os.environ.get("COROLAB_STUDENT_MODULE", "student")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit from exit() too: the import failed either way
        sys.modules.pop(name, None)
        _import_error = f"importing {path.name} failed: {type(exc).__name__}: {exc}"
        _emit({"kind": "import-error", "message": _import_error})
        pytest.fail(_import_error, pytrace=False)
    _module = module
    _emit({"kind": "imported"})
    return module


@pytest.fixture
def student() -> ModuleType:
    """The student's module, imported once per grading run."""
    return _load_student()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A generator seeded by the run's seed and this test's name: the same in any order or process."""
    return random.Random(f"{_SEED}:{request.node.name}")


@pytest.fixture
def seed(rng: random.Random) -> int:
    return rng.randrange(1, 2**31)


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Callable[[object], None]:
    """Record what the student's code produced; the grader compares it with the reference's."""
    found = _observed.setdefault(request.node.nodeid, [])

    def record(value: object) -> None:
        found.append(_plain(value))
        if len(json.dumps(found)) > MAX_OBSERVED_CHARS:
            pytest.fail(f"more than {MAX_OBSERVED_CHARS} characters observed in one test", pytrace=False)

    return record


def _plain(value: object, depth: int = 0) -> object:
    """``value`` as JSON data; anything else fails the test, so no two different objects look alike."""
    if depth > 20:
        pytest.fail("an observed value is nested too deeply", pytrace=False)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, depth + 1) for k, v in value.items()}
    pytest.fail(f"observed a {type(value).__name__}, which is not plain data (the test should convert it)",
                pytrace=False)


def _meta(item: pytest.Item) -> tuple[int, str]:
    fn = getattr(item, "function", None)
    return int(getattr(fn, "__corolab_points__", 0)), str(getattr(fn, "__corolab_hint__", ""))


def _params(item: pytest.Item) -> str:
    """The test's parameters as ``name=value`` (for the "why" line): which case failed matters."""
    declared = str(getattr(getattr(item, "function", None), "__corolab_params__", ""))
    callspec = getattr(item, "callspec", None)
    given = [f"{k}={v!r}"[:60] for k, v in callspec.params.items()] if callspec is not None else []
    return ", ".join([declared] * bool(declared) + given)


def _message(call: pytest.CallInfo) -> str:
    if call.excinfo is None:
        return "failed"
    text = str(call.excinfo.value).strip()
    first_line = text.splitlines()[0] if text else ""
    if call.excinfo.typename == "Failed" and first_line:
        return first_line[:300]
    return f"{call.excinfo.typename}: {first_line}"[:300] if first_line else call.excinfo.typename


def pytest_sessionstart(session: pytest.Session) -> None:
    _emit({"kind": "session-start"})


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the tests an earlier box of this grading already ran (``COROLAB_SKIP``, a JSON list)."""
    skip = set(json.loads(os.environ.get("COROLAB_SKIP", "[]")))
    if skip:
        kept = [item for item in items if item.name not in skip]
        config.hook.pytest_deselected(items=[item for item in items if item.name in skip])
        items[:] = kept


def pytest_collection_finish(session: pytest.Session) -> None:
    """List every graded test before any runs: the grader needs the full list even if the run dies."""
    for item in session.items:
        max_points, hint = _meta(item)
        _emit({"kind": "catalogue", "name": item.name, "max_points": max_points, "hint": hint})


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    _emit({"kind": "start", "name": nodeid.rsplit("::", 1)[-1]})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    failed_setup = report.when == "setup" and report.failed
    if report.when == "call" or failed_setup:
        _emit({"kind": "test", "name": item.name, "passed": report.passed,
               "message": _message(call) if report.failed else "", "params": _params(item),
               "observed": _observed.pop(item.nodeid, [])})


def pytest_sessionfinish(session: pytest.Session) -> None:
    _emit({"kind": "session-end"})
