"""Hostile submissions against the grader: each attack scores 0 or is refused, changes nothing that
lasts, and leaves no process behind.

Every attack targets a copy of a lab in a temporary folder (never the repository's labs) and runs under
tight limits; see hostile_submissions.py for the guards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from corolab.labs import get_lab, grade
from corolab.labs.batch import grade_folder
from corolab.labs.registry import load_lab
from corolab.labs.sandbox import NOBODY, Limits, probe
from hostile_submissions import (attack, carrying, escape, forge_through_descriptors, fork_bomb, hog_memory, marker,  # noqa: F401
                                 partial, plant_conftest, replace_the_writer, trespass, write)

FULL_SANDBOX = probe() == "namespaces"
needs_namespaces = pytest.mark.skipif(not FULL_SANDBOX, reason="needs Linux namespaces (root, or user namespaces)")
TIGHT = Limits(memory_mb=512, cpu_s=30, file_mb=8, processes=64, open_files=128)


@pytest.fixture
def arena():
    """A temporary folder anyone may enter, and write where it says so: what keeps attacks out of it must
    be the sandbox, not the permissions of pytest's own (private) temporary folders."""
    folder = Path(tempfile.mkdtemp(prefix="corolab-arena-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def lab_copy(arena: Path):
    """Lab 1, copied: attacks aim at this copy, so even a failed sandbox cannot change the real lab."""
    lab = get_lab(1)
    root = arena / "labs" / lab.name
    shutil.copytree(lab.root, root)
    os.chmod(root.parent, 0o755)
    return load_lab(root)


@needs_namespaces
def test_hostile_submissions_score_nothing_change_nothing_and_leave_nothing(lab_copy, arena: Path, tmp_path: Path,
                                                                           marker) -> None:
    lab = lab_copy
    subs = tmp_path / "subs"
    subs.mkdir()
    outside = arena / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # anyone may write here: only the read-only mounts stop the submission
    solution_before = lab.solution.read_text()
    honest_source = partial(lab) + "\n# my own work, half done\n"
    write(subs, "a_honest_before", honest_source)
    write(subs, "forge_fd", forge_through_descriptors(lab))
    write(subs, "replace_writer", replace_the_writer(lab))
    write(subs, "plant_conftest", plant_conftest(lab, [lab.tests, lab.root.parent]))
    write(subs, "escape", escape(lab, marker))
    write(subs, "trespass", trespass(lab, outside))
    write(subs, "hog_memory", hog_memory(lab))
    write(subs, "fork_bomb", fork_bomb(lab, marker))
    write(subs, "untouched", lab.starter.read_text())
    write(subs, "z_honest_after", honest_source)
    nobody_before = _nobody_processes()

    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    status = {name: r.status for name, r in results.items()}
    score = {name: r.score for name, r in results.items()}
    full = results["escape"].max_score
    honest = score["a_honest_before"]
    assert 0 < honest < full

    # Forged scores: refused, or no more than the starter underneath earns.
    assert status["forge_fd"] == "tampered" and score["forge_fd"] == 0, results["forge_fd"].detail
    assert status["replace_writer"] == "tampered" and score["replace_writer"] == 0
    assert "write" in results["replace_writer"].detail
    assert score["plant_conftest"] == honest
    assert score["z_honest_after"] == honest                       # graded after the planter: unchanged
    assert not list(lab.root.parent.rglob("conftest.py"))
    # Escapes: the run finished normally and took its processes with it.
    assert status["escape"] == "ok" and score["escape"] == full
    assert carrying(marker) == []
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
    hog = write(tmp_path, "hog", hog_memory(lab_copy))
    result = grade(lab_copy, hog, timeout=30, limits=TIGHT)
    assert result.status == "import-error" and "MemoryError" in result.detail and result.score == 0
    escaping = write(tmp_path, "escape", escape(lab_copy, marker))
    result = grade(lab_copy, escaping, timeout=30, limits=TIGHT)
    assert result.full_marks and carrying(marker) == []
    hanging = write(tmp_path, "escape_and_hang", escape(lab_copy, marker, then_hang=True))
    result = grade(lab_copy, hanging, timeout=5, limits=TIGHT)  # killed on time: its grandchildren go too
    assert result.status == "timeout" and result.score == 0 and carrying(marker) == []


@needs_namespaces
def test_the_submission_sees_a_clean_environment_and_no_privileges(lab_copy, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRADER_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("COROLAB_RESULTS", str(tmp_path / "results.jsonl"))
    spy = write(tmp_path, "spy", attack(lab_copy, """
        import os as _os
        raise SystemExit(f"uid={_os.getuid()} env={sorted(_os.environ)}")
    """))
    detail = grade(lab_copy, spy, timeout=30, limits=TIGHT).detail
    names = set(detail.split("env=")[1].strip("[]").replace("'", "").split(", "))
    assert names <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                     "COROLAB_STUDENT", "COROLAB_STUDENT_MODULE", "PYTEST_CURRENT_TEST", "PYTEST_VERSION"}, names
    if os.geteuid() == 0:
        assert f"uid={NOBODY}" in detail


def test_rlimits_fallback_still_grades_and_refuses_forgeries(lab_copy, tmp_path: Path, monkeypatch) -> None:
    """Where namespaces are missing the grader warns, limits memory and still checks every record."""
    from corolab.labs import grading, sandbox

    monkeypatch.setattr(grading.sandbox, "probe", lambda: "rlimits")
    with pytest.warns(grading.SandboxWarning, match="resource limits only"):
        solved = grade(lab_copy, lab_copy.solution, timeout=60, limits=TIGHT)
    assert solved.full_marks
    with pytest.warns(grading.SandboxWarning):
        hog = grade(lab_copy, write(tmp_path, "hog", hog_memory(lab_copy)), timeout=30, limits=TIGHT)
        forged = grade(lab_copy, write(tmp_path, "forge", forge_through_descriptors(lab_copy)), timeout=30,
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
