"""Hostile submissions against the grader: each attack scores 0 or is refused, changes nothing that
lasts, and leaves no process behind.

Guards, so that a broken sandbox cannot harm the machine running these tests: every attack targets a
copy of a lab under ``tmp_path`` (never the repository's labs), runs under tight limits, and every
process it starts carries a marker, sleeps a bounded time and is killed by pid at teardown if it
survived. The memory attack asks for 2 GiB under a 512 MiB limit (a ``bytearray`` that is never touched).
"""

from __future__ import annotations

import os
import shutil
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest

from corolab.labs import get_lab, grade
from corolab.labs.batch import grade_folder
from corolab.labs.registry import load_lab
from corolab.labs.sandbox import NOBODY, Limits, probe

FULL_SANDBOX = probe() == "namespaces"
needs_namespaces = pytest.mark.skipif(not FULL_SANDBOX, reason="needs Linux namespaces (root, or user namespaces)")
TIGHT = Limits(memory_mb=512, cpu_s=30, file_mb=8, processes=64, open_files=128)


@pytest.fixture
def marker():
    """A string every process an attack starts carries in its command line; leftovers are killed by pid."""
    tag = f"corolab-hostile-{uuid.uuid4().hex}"
    yield tag
    for proc in _carrying(tag):
        proc.kill()


def _carrying(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture
def lab_copy(tmp_path: Path):
    """Lab 1, copied: attacks aim at this copy, so even a failed sandbox cannot change the real lab."""
    lab = get_lab(1)
    root = tmp_path / "labs" / lab.name
    shutil.copytree(lab.root, root)
    return load_lab(root)


def _attack(lab, body: str, base: str = "starter") -> str:
    source = (lab.starter if base == "starter" else lab.solution).read_text()
    return source + "\n\n# --- hostile part ---\n" + textwrap.dedent(body)


def _forge_through_descriptors(lab) -> str:
    """(a) Write passing records to every file descriptor this process can write, old format and new."""
    return _attack(lab, """
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


def _replace_the_writer(lab) -> str:
    """(b) Replace the plugin's writer through sys.modules at import, so every record says "passed"."""
    return _attack(lab, """
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


def _plant_conftest(lab, tests_dirs: list[Path]) -> str:
    """(c) Write a conftest.py that passes every test into the lab's tests folder and the run's own copy."""
    return _attack(lab, f"""
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


def _escape(lab, tag: str) -> str:
    """A grandchild in its own session that keeps the inherited descriptors, and one that closes them."""
    return _attack(lab, f"""
        import os as _os, subprocess as _sp, sys as _sys
        _sp.Popen([_sys.executable, "-c", "import os, time; os.setsid(); time.sleep(60)", {tag!r}], close_fds=False)
        _pid = _os.fork()
        if _pid == 0:
            _os.setsid()
            if _os.fork() == 0:
                _os.closerange(0, 4096)
                _os.execv(_sys.executable, [_sys.executable, "-c", "import time; time.sleep(60)", {tag!r}])
            _os._exit(0)
        _os.waitpid(_pid, 0)
    """, base="solution")


def _trespass(lab, outside: Path) -> str:
    """Write outside its folder, overwrite the lab's solution, and run the solution read from disk."""
    return _attack(lab, f"""
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


def _hog_memory(lab) -> str:
    return _attack(lab, """
        _hoard = bytearray(2 << 30)
    """)


def _fork_bomb(lab, tag: str) -> str:
    """Start up to 200 processes; each sleeps a bounded time. Exits with how many it got."""
    return _attack(lab, f"""
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


def _write(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


@needs_namespaces
def test_hostile_submissions_score_nothing_change_nothing_and_leave_nothing(lab_copy, tmp_path: Path, marker) -> None:
    lab = lab_copy
    subs = tmp_path / "subs"
    subs.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    solution_before = lab.solution.read_text()
    touched_starter = lab.starter.read_text() + "\n# started, not finished\n"
    _write(subs, "a_honest_before", touched_starter)
    _write(subs, "forge_fd", _forge_through_descriptors(lab))
    _write(subs, "replace_writer", _replace_the_writer(lab))
    _write(subs, "plant_conftest", _plant_conftest(lab, [lab.tests, lab.root.parent]))
    _write(subs, "escape", _escape(lab, marker))
    _write(subs, "trespass", _trespass(lab, outside))
    _write(subs, "hog_memory", _hog_memory(lab))
    _write(subs, "fork_bomb", _fork_bomb(lab, marker))
    _write(subs, "untouched", lab.starter.read_text())
    _write(subs, "z_honest_after", touched_starter)
    nobody_before = _nobody_processes()

    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    status = {name: r.status for name, r in results.items()}
    score = {name: r.score for name, r in results.items()}
    full = results["escape"].max_score
    honest = score["a_honest_before"]
    assert honest < full

    # Forged scores: refused, or no more than the starter underneath earns.
    assert status["forge_fd"] == "tampered" and score["forge_fd"] == 0, results["forge_fd"].detail
    assert status["replace_writer"] == "tampered" and score["replace_writer"] == 0
    assert "_write" in results["replace_writer"].detail
    assert score["plant_conftest"] == honest
    assert score["z_honest_after"] == honest                       # graded after the planter: unchanged
    assert not list(lab.root.parent.rglob("conftest.py"))
    # Escapes: the run finished normally and took its processes with it.
    assert status["escape"] == "ok" and score["escape"] == full
    assert _carrying(marker) == []
    assert _nobody_processes() <= nobody_before
    # Trespass: nothing written outside, the solution untouched and unreadable from inside.
    assert list(outside.iterdir()) == [] and lab.solution.read_text() == solution_before
    assert not (lab.tests / "test_extra.py").exists()
    assert score["trespass"] == honest
    # Limits.
    assert status["hog_memory"] == "import-error" and "MemoryError" in results["hog_memory"].detail
    assert status["fork_bomb"] == "import-error", results["fork_bomb"].detail
    started = int(results["fork_bomb"].detail.split("started ")[1].split()[0])
    assert started < 200
    assert status["untouched"] == "not-attempted" and score["untouched"] == 0
    for name, result in results.items():
        assert result.elapsed < 30, f"{name} held the grader for {result.elapsed:.0f} s"


def _nobody_processes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == NOBODY}


@needs_namespaces
def test_limits_apply_to_a_single_check(lab_copy, tmp_path: Path, marker) -> None:
    """`lab check` goes through the same box: the memory limit holds and the escape leaves nothing."""
    hog = _write(tmp_path, "hog", _hog_memory(lab_copy))
    result = grade(lab_copy, hog, timeout=30, limits=TIGHT)
    assert result.status == "import-error" and "MemoryError" in result.detail and result.score == 0
    escape = _write(tmp_path, "escape", _escape(lab_copy, marker))
    result = grade(lab_copy, escape, timeout=30, limits=TIGHT)
    assert result.full_marks and _carrying(marker) == []


def test_rlimits_fallback_still_grades_and_refuses_forgeries(lab_copy, tmp_path: Path, monkeypatch) -> None:
    """Where namespaces are missing the grader warns, limits memory and still checks every record."""
    from corolab.labs import grading, sandbox

    monkeypatch.setattr(grading.sandbox, "probe", lambda: "rlimits")
    with pytest.warns(grading.SandboxWarning, match="resource limits only"):
        solved = grade(lab_copy, lab_copy.solution, timeout=60, limits=TIGHT)
    assert solved.full_marks
    with pytest.warns(grading.SandboxWarning):
        hog = grade(lab_copy, _write(tmp_path, "hog", _hog_memory(lab_copy)), timeout=30, limits=TIGHT)
        forged = grade(lab_copy, _write(tmp_path, "forge", _forge_through_descriptors(lab_copy)), timeout=30,
                       limits=TIGHT)
    assert hog.status == "import-error" and "MemoryError" in hog.detail
    assert forged.status == "tampered" and forged.score == 0
    assert sandbox.probe() in ("namespaces", "rlimits")


def test_records_are_checked_against_the_catalogue() -> None:
    """Signed records that list other tests, repeat one, or come from a second process are refused."""
    import hashlib
    import hmac
    import json

    from corolab.labs.grading import _check_catalogue, _verify

    key = b"k" * 32

    def signed(records: list[dict]) -> bytes:
        out = b""
        for seq, record in enumerate(records):
            text = json.dumps(dict(record, seq=record.get("seq", seq), pid=record.get("pid", 7)), sort_keys=True)
            mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
            out += json.dumps({"record": text, "mac": mac}).encode() + b"\n"
        return out

    start, end = {"kind": "session-start"}, {"kind": "session-end", "replaced": []}
    test = {"kind": "test", "name": "test_a", "passed": True}
    catalogue = {"test_a": (1, "hint"), "test_b": (1, "hint")}
    records, problem = _verify(signed([start, test, end]), key)
    assert problem == "" and _check_catalogue(records, catalogue) == ""
    assert _verify(signed([start, test, end]), b"x" * 32)[1]                       # wrong key
    assert _verify(signed([start, dict(test, seq=5), end]), key)[1]                  # out of order
    assert _verify(signed([start, dict(test, pid=8), end]), key)[1]                  # another process
    assert _verify(signed([start, start, test, end]), key)[1]                        # two sessions
    assert _verify(signed([start, end, test]), key)[1]                               # after the end
    records, _ = _verify(signed([start, test, test, end]), key)
    assert _check_catalogue(records, catalogue)                                      # a test twice
    records, _ = _verify(signed([start, {"kind": "catalogue", "name": "test_z"}, end]), key)
    assert _check_catalogue(records, catalogue)                                      # not the lab's tests
    cut = signed([start, test])[:-10]                                                # cut short by a kill
    assert _verify(cut, key) == ([{"kind": "session-start", "seq": 0, "pid": 7}], "")
