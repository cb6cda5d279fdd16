"""Hostile lab submissions, as source text, for the grader's tests (tests/test_lab_sandbox.py, test_labs.py).

Guards, so that a broken sandbox cannot harm the machine running the tests: attacks aim only at paths the
test passes in (copies under temporary folders), every process an attack starts carries a marker in its
command line and sleeps a bounded time, and the ``marker`` fixture kills survivors by pid. The memory
attack asks for 2 GiB (a ``bytearray`` that is never touched) where the limit is 512 MiB.
"""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import psutil
import pytest


@pytest.fixture
def marker():
    """A string every process an attack starts carries in its command line; leftovers are killed by pid."""
    tag = f"corolab-hostile-{uuid.uuid4().hex}"
    yield tag
    for proc in carrying(tag):
        proc.kill()


def carrying(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def partial(lab) -> str:
    """Half a solution (one of the lab's broken variants): it earns some points, never all, so a forgery
    that changes its score shows."""
    return lab.mutants()[-1].source


def attack(lab, body: str, base: str = "partial") -> str:
    source = partial(lab) if base == "partial" else lab.solution.read_text()
    return source + "\n\n# --- hostile part ---\n" + textwrap.dedent(body)


def forge_through_descriptors(lab) -> str:
    """(a) Write passing records to every file descriptor this process can write, old format and new."""
    return attack(lab, """
        import json as _json, os as _os
        _names = ["test_read_lines_yields_lines", "test_top_paths"]
        _lines = "".join(_json.dumps({"kind": "test", "name": n, "passed": True, "max_points": 2, "hint": "",
                                      "message": ""}) + "\\n" for n in _names)
        _lines += "".join(_json.dumps({"record": _json.dumps({"kind": "test", "name": n, "passed": True}),
                                       "mac": "0" * 64}) + "\\n" for n in _names)
        if _os.environ.get("COROLAB_RESULTS"):
            open(_os.environ["COROLAB_RESULTS"], "a").write(_lines)
        for _fd in map(int, _os.listdir("/proc/self/fd")):
            try:
                _os.write(_fd, _lines.encode())
            except OSError:
                pass
    """)


def replace_the_writer(lab) -> str:
    """(b) Replace the plugin's writer through sys.modules at import, so every record says "passed"."""
    return attack(lab, """
        import sys as _sys
        _plugin = _sys.modules["corolab.labs.plugin"]
        for _name in ("_write", "_emit"):
            _real = getattr(_plugin, _name)
            setattr(_plugin, _name, lambda record, _real=_real: _real(dict(record, passed=True, message="")))
    """)


CONFTEST = '''
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
'''


def plant_conftest(lab, tests_dirs: list[Path]) -> str:
    """(c) Write a conftest.py that passes every test into the lab's tests folder and the run's own copy."""
    return attack(lab, f"""
        import sys as _sys
        from pathlib import Path as _Path
        _targets = {[str(d) for d in tests_dirs]!r}
        _targets += [str(_Path(m.__file__).parent) for m in list(_sys.modules.values())
                     if getattr(m, "__file__", None) and _Path(m.__file__).name.startswith("test_")]
        for _t in _targets:
            try:
                (_Path(_t) / "conftest.py").write_text({CONFTEST!r})
            except OSError:
                pass
    """)


def escape(lab, tag: str, seconds: int = 60, then_hang: bool = False) -> str:
    """A grandchild in its own session that keeps the inherited descriptors, and one that closes them.

    Each would outlive its grading by ``seconds`` if nothing killed it (bounded, so a broken sandbox
    still cannot leave it running for ever)."""
    return attack(lab, f"""
        import os as _os, subprocess as _sp, sys as _sys
        _sp.Popen([_sys.executable, "-c", "import os, time; os.setsid(); time.sleep({seconds})", {tag!r}], close_fds=False)
        _pid = _os.fork()
        if _pid == 0:
            _os.setsid()
            if _os.fork() == 0:
                _os.closerange(0, 4096)
                _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep({seconds})", {tag!r}])
            _os._exit(0)
        _os.waitpid(_pid, 0)
        while {then_hang!r}:
            pass
    """, base="solution")


def trespass(lab, outside: Path) -> str:
    """Write outside its folder, overwrite the lab's solution, and run the solution read from disk."""
    return attack(lab, f"""
        from pathlib import Path as _Path
        for _target in [{str(outside / "owned.txt")!r}, {str(lab.solution)!r}, {str(lab.tests / "test_extra.py")!r}]:
            try:
                _Path(_target).write_text("# owned\\n")
            except OSError:
                pass
        try:
            exec(compile(_Path({str(lab.solution)!r}).read_text(), "solution", "exec"))
        except OSError:
            pass
    """)


def hog_memory(lab) -> str:
    return attack(lab, """
        _hoard = bytearray(2 << 30)
    """)


def fork_bomb(lab, tag: str) -> str:
    """Start up to 200 processes; each sleeps a bounded time. Exits with how many it got."""
    return attack(lab, f"""
        import os as _os, sys as _sys
        _started = 0
        for _ in range(200):
            try:
                _pid = _os.fork()
            except OSError:
                break
            if _pid == 0:
                _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(30)", {tag!r}])
            _started += 1
        raise SystemExit(f"started {{_started}} processes")
    """)


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    return path
