"""The pytest plugin the grader loads in its child process.

It gives graded tests a ``student`` fixture (the student's file imported as a module) and appends one JSON
line per test to ``$COROLAB_RESULTS`` as soon as the test ends, so that a later crash or timeout loses
nothing already graded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

_module: ModuleType | None = None
_import_error: str | None = None


def _write(record: dict) -> None:
    path = os.environ.get("COROLAB_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def _load_student() -> ModuleType:
    global _module, _import_error
    if _module is not None:
        return _module
    if _import_error is not None:
        pytest.fail(_import_error, pytrace=False)
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
        _write({"kind": "import-error", "message": _import_error})
        pytest.fail(_import_error, pytrace=False)
    _module = module
    return module


@pytest.fixture
def student() -> ModuleType:
    """The student's module, imported once per grading run."""
    return _load_student()


def _meta(item: pytest.Item) -> tuple[int, str]:
    fn = getattr(item, "function", None)
    return int(getattr(fn, "__corolab_points__", 0)), str(getattr(fn, "__corolab_hint__", ""))


def pytest_collection_finish(session: pytest.Session) -> None:
    """List every graded test before any runs: the grader needs the full list even if the run dies."""
    for item in session.items:
        max_points, hint = _meta(item)
        _write({"kind": "catalogue", "name": item.name, "max_points": max_points, "hint": hint})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    failed_setup = report.when == "setup" and report.failed
    if report.when == "call" or failed_setup:
        message = ""
        if report.failed:
            message = "failed"
            if call.excinfo is not None:
                text = str(call.excinfo.value).strip()
                first_line = text.splitlines()[0] if text else ""
                message = f"{call.excinfo.typename}: {first_line}"[:300] if first_line else call.excinfo.typename
        max_points, hint = _meta(item)
        _write({"kind": "test", "name": item.name, "passed": report.passed, "max_points": max_points,
                "hint": hint, "message": message})


def pytest_sessionfinish(session: pytest.Session) -> None:
    _write({"kind": "session-end"})
