"""The pytest plugin the grader loads in its child process.

It gives graded tests a ``student`` fixture (the student's file imported as a module) and writes one
record per finished test to the results descriptor the grader opened for it, as soon as the test ends,
so that a later crash or timeout loses nothing already graded.

Why records are signed: student code runs in this same process. Each record carries an HMAC made with a
key the grader passed through a descriptor that this module reads and closes before any student code
runs, and a sequence number; so a submission that writes records of its own, or replays them, is caught.
What this cannot stop: code in the same process can, with enough effort, find the key in memory or
change pytest's outcomes before they reach this plugin. The grader's docs say so.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

_module: ModuleType | None = None
_import_error: str | None = None


def _make_writer() -> Callable[[dict], None]:
    """Take the results descriptor and the key out of the environment; return the only way to write."""
    fd = os.environ.pop("COROLAB_RESULTS_FD", None)
    key_fd = os.environ.pop("COROLAB_KEY_FD", None)
    if fd is None or key_fd is None:
        return lambda record: None
    with os.fdopen(int(key_fd), "rb") as f:
        key = f.read()
    out = int(fd)
    state = {"seq": 0}

    def write(record: dict) -> None:
        body = dict(record, seq=state["seq"], pid=os.getpid())
        state["seq"] += 1
        text = json.dumps(body, sort_keys=True)
        mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        os.write(out, (json.dumps({"record": text, "mac": mac}) + "\n").encode())

    return write


_emit = _make_writer()


def _write(record: dict) -> None:
    """The writer's old name, kept: the hooks write through ``_emit`` as captured at import, so a
    submission that replaces this changes no record, and the session end reports the replacement."""
    _emit(record)


def _load_student(emit: Callable[[dict], None] = _emit) -> ModuleType:
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
        emit({"kind": "import-error", "message": _import_error})
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


def _params(item: pytest.Item) -> str:
    """The test's parameters as ``name=value`` (for the "why" line): which case failed matters."""
    declared = str(getattr(getattr(item, "function", None), "__corolab_params__", ""))
    callspec = getattr(item, "callspec", None)
    given = [f"{k}={v!r}"[:60] for k, v in callspec.params.items()] if callspec is not None else []
    return ", ".join([declared] * bool(declared) + given)


def _hooks(emit: Callable[[dict], None]):  # type: ignore[no-untyped-def]
    """The hooks, each holding ``emit`` in its closure: pytest registers these function objects when it
    loads the plugin, so replacing ``_write``, ``_emit`` or a hook on this module later changes nothing;
    the session end reports any such replacement, and the grader refuses the run."""
    original: dict[str, object] = {}  # filled below, once every name exists

    def pytest_sessionstart(session: pytest.Session) -> None:
        emit({"kind": "session-start"})

    def pytest_collection_finish(session: pytest.Session) -> None:
        """List every graded test before any runs: the grader needs the full list even if the run dies."""
        for item in session.items:
            max_points, hint = _meta(item)
            emit({"kind": "catalogue", "name": item.name, "max_points": max_points, "hint": hint})

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
                    if call.excinfo.typename == "Failed" and first_line:
                        message = first_line[:300]
            max_points, hint = _meta(item)
            emit({"kind": "test", "name": item.name, "passed": report.passed, "max_points": max_points,
                  "hint": hint, "message": message, "params": _params(item)})

    def pytest_sessionfinish(session: pytest.Session) -> None:
        changed = sorted(name for name, value in original.items() if globals().get(name) is not value)
        emit({"kind": "session-end", "replaced": changed})

    return original, (pytest_sessionstart, pytest_collection_finish, pytest_runtest_makereport, pytest_sessionfinish)


_original, (pytest_sessionstart, pytest_collection_finish, pytest_runtest_makereport, pytest_sessionfinish) = _hooks(_emit)
_original.update({name: value for name, value in dict(globals()).items()
                  if callable(value) and getattr(value, "__module__", None) == __name__})
