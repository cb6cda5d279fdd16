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
    """Write passing records, with made-up observations, to every file descriptor this process can write."""
    return attack(lab, """
        import json as _json, os as _os
        _names = ["test_read_lines_yields_lines", "test_top_paths"]
        _lines = "".join(_json.dumps({"kind": "test", "name": n, "passed": True, "message": "", "observed": [[]]})
                         + "\\n" for n in _names)
        for _fd in map(int, _os.listdir("/proc/self/fd")):
            try:
                _os.write(_fd, _lines.encode())
            except OSError:
                pass
    """)


def call_the_plugins_writer(lab, names: list[str]) -> str:
    """(1) Write a passing record for every test through the plugin's own writer, end the session, exit."""
    return attack(lab, f"""
        import os as _os, sys as _sys
        _plugin = _sys.modules["corolab.labs.plugin"]
        for _name in {names!r}:
            _plugin._emit({{"kind": "test", "name": _name, "passed": True, "message": "", "params": "",
                           "observed": []}})
        _plugin._emit({{"kind": "session-end"}})
        _os._exit(0)
    """)


def patch_pytest_reports(lab) -> str:
    """(2) Two lines at import: every report says passed."""
    return attack(lab, """
        import _pytest.reports as _reports
        _reports.BaseReport.passed = property(lambda self: True)
        _reports.BaseReport.failed = property(lambda self: False)
    """)


def hook_through_gc(lab) -> str:
    """(3) Find pytest's Config through gc and register a hook that turns every report into a pass."""
    return attack(lab, """
        import gc as _gc
        import pytest as _pytest
        from _pytest.config import Config as _Config

        class _Flip:
            @_pytest.hookimpl(hookwrapper=True, tryfirst=True)
            def pytest_runtest_makereport(self, item, call):
                outcome = yield
                outcome.get_result().outcome = "passed"

        for _obj in _gc.get_objects():
            if isinstance(_obj, _Config):
                _obj.pluginmanager.register(_Flip(), "flip")
                break
    """)


def replace_the_writer(lab) -> str:
    """Replace the plugin's writer through sys.modules at import, so every record says "passed"."""
    return attack(lab, """
        import sys as _sys
        _plugin = _sys.modules["corolab.labs.plugin"]
        _real = _plugin._emit
        _plugin._emit = lambda record, _real=_real: _real(dict(record, passed=True, message=""))
    """)


def find_and_run_others(lab, roots: list[str], base: str = "starter") -> str:
    """(6, 7) Search the folders it can see for another copy of the lab's module (a classmate's, the
    solution, the repository's) and run the first one found in its own namespace."""
    source = lab.starter.read_text() if base == "starter" else partial(lab)
    return source + "\n\n# --- hostile part ---\n" + textwrap.dedent(f"""
        import os as _os
        _mine = _os.path.realpath(__file__)
        _found = []
        for _root in {roots!r}:
            for _dir, _subdirs, _files in _os.walk(_root):
                if _dir.count(_os.sep) > 12:
                    _subdirs[:] = []
                for _f in _files:
                    _path = _os.path.realpath(_os.path.join(_dir, _f))
                    if _f == {lab.module!r} and _path != _mine:
                        _found.append(_path)
        for _path in _found:
            try:
                exec(compile(open(_path).read(), _path, "exec"), globals())
                break
            except Exception:
                pass
    """)


def keyring(lab, description: str, store: bool) -> str:
    """Store a key in the user's kernel keyring, or look for one an earlier run stored; say what happened."""
    return attack(lab, f"""
        import ctypes as _c, platform as _platform
        _nr = {{"x86_64": (248, 250), "aarch64": (217, 219)}}[_platform.machine()]
        _libc = _c.CDLL(None, use_errno=True)
        if {store!r}:
            _r = _libc.syscall(_nr[0], b"user", {description.encode()!r}, b"secret", 6, -4)
        else:
            _r = _libc.syscall(_nr[1], 10, -4, b"user", {description.encode()!r}, 0)  # KEYCTL_SEARCH
        raise SystemExit(f"keyring call={{_r}} errno={{_c.get_errno()}}")
    """)


def connect_unix(lab, path: str) -> str:
    return attack(lab, f"""
        import socket as _socket
        _s = _socket.socket(_socket.AF_UNIX)
        try:
            _s.connect({path!r})
            _s.sendall(b"hello from the box")
            _outcome = "connected"
        except OSError as _exc:
            _outcome = f"refused: {{_exc.strerror}}"
        raise SystemExit(f"unix socket {{_outcome}}")
    """)


def fork_bomb_for(lab, tag: str, seconds: float) -> str:
    """Keep every process slot it can get for ``seconds``, retrying, then carry on as the partial solution."""
    return attack(lab, f"""
        import os as _os, sys as _sys, time as _time
        _end = _time.monotonic() + {seconds!r}
        while _time.monotonic() < _end:
            try:
                if _os.fork() == 0:
                    _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(20)", {tag!r}])
            except OSError:
                _time.sleep(0.01)
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
