"""Hostile submissions against the grader: each attack earns 0 or its honest share, sees nothing but the
runtime and its own copy, changes nothing that lasts, leaves no process behind, and costs only its own row.

Every attack targets a copy of a lab in a temporary folder (never the repository's labs) and runs under
tight limits; see hostile_submissions.py for the guards.
"""

from __future__ import annotations

import csv
import sys
import os
import shutil
import socket
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

import corolab
from corolab.cli import main
from corolab.labs import get_lab, grade
from corolab.labs.batch import grade_folder
from corolab.labs.grading import _judge, graded_tests, LabResult
from corolab.labs.registry import load_lab
from corolab.labs.sandbox import BOX_UIDS, Limits, probe, seccomp_program
from hostile_submissions import (attack, call_the_plugins_writer, carrying, connect_unix, escape,  # noqa: F401
                                 find_and_run_others, forge_through_descriptors, fork_bomb, fork_bomb_for, hog_memory,
                                 hook_through_gc, keyring, marker, partial, patch_pytest_reports, plant_conftest,
                                 replace_the_writer, trespass, write)

FULL_SANDBOX = probe() == "namespaces"
AS_ROOT = os.geteuid() == 0
needs_namespaces = pytest.mark.skipif(not FULL_SANDBOX, reason="needs Linux namespaces (root, or user namespaces)")
needs_root_box = pytest.mark.skipif(not (FULL_SANDBOX and AS_ROOT), reason="a uid per box needs a grader run as root")
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


def _started(lab) -> str:
    """The starter with one edit: graded for real, the baseline for attacks built on the starter."""
    return lab.starter.read_text() + "\n# started\n"


@needs_namespaces
def test_forged_verdicts_earn_no_more_than_the_code_underneath(lab_copy, arena: Path, tmp_path: Path) -> None:
    """Attacks 1-3 of the grader-verdicts issue, and two older ones: each rewrites what the box reports,
    and each scores exactly what its honest code scores, because the verdict is decided outside."""
    lab = lab_copy
    names = list(graded_tests(lab))
    subs = tmp_path / "subs"
    subs.mkdir()
    write(subs, "honest", partial(lab) + "\n# my own work, half done\n")
    write(subs, "plugin_writer", call_the_plugins_writer(lab, names))
    write(subs, "patched_reports", patch_pytest_reports(lab))
    write(subs, "hook_via_gc", hook_through_gc(lab))
    write(subs, "replace_writer", replace_the_writer(lab))
    write(subs, "forge_fd", forge_through_descriptors(lab))
    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    score = {name: r.score for name, r in results.items()}
    full = results["honest"].max_score
    assert 0 < score["honest"] < full
    assert score["plugin_writer"] == 0, results["plugin_writer"].tests
    for name in ("patched_reports", "hook_via_gc", "replace_writer", "forge_fd"):
        assert score[name] == score["honest"], (name, [t for t in results[name].tests if t.passed])
    forged = next(t for t in results["plugin_writer"].tests if t.name == names[0])
    assert "reference" in forged.message


@needs_namespaces
def test_links_devices_and_large_files_are_refused_and_cost_only_their_row(lab_copy, tmp_path: Path) -> None:
    """Attacks 4 and 5, and /proc/self/mem: nothing is opened through a link, the CSV is written, the
    exit code says rows need a look, and the honest rows grade as they do alone."""
    lab = lab_copy
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "honest").mkdir()
    (subs / "honest" / lab.module).write_text(lab.solution.read_text())
    (subs / "copycat").mkdir()
    (subs / "copycat" / lab.module).symlink_to(Path("..") / "honest" / lab.module)     # a classmate's file
    (subs / "to_solution").mkdir()
    (subs / "to_solution" / lab.module).symlink_to(lab.solution)                       # the solution itself
    (subs / "proc_mem").mkdir()
    (subs / "proc_mem" / lab.module).symlink_to("/proc/self/mem")
    (subs / "linked_folder").symlink_to(subs / "honest")                               # the whole folder
    (subs / "fifo").mkdir()
    os.mkfifo(subs / "fifo" / lab.module)
    (subs / "huge.py").write_text("# " + "x" * (2 << 20) + "\n")
    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    full = results["honest"].max_score
    assert results["honest"].score == full
    for name in ("copycat", "to_solution", "proc_mem", "linked_folder", "fifo", "huge"):
        assert results[name].status == "refused" and results[name].score == 0, (name, results[name].detail)
    assert "link" in results["copycat"].detail and "regular file" in results["fifo"].detail
    assert "larger than" in results["huge"].detail


@needs_namespaces
def test_the_cli_writes_the_csv_and_says_which_rows_need_a_look(tmp_path: Path, capsys) -> None:
    lab = get_lab(1)
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "good.py").write_text(lab.solution.read_text())
    (subs / "proc_mem").mkdir()
    (subs / "proc_mem" / lab.module).symlink_to("/proc/self/mem")
    out_csv = tmp_path / "grades.csv"
    assert main(["lab", "grade", "1", str(subs), "--csv", str(out_csv), "--jobs", "2"]) == 1
    rows = {row["student"]: row for row in csv.DictReader(out_csv.open())}
    assert rows["good"]["status"] == "ok" and int(rows["good"]["total"]) == int(rows["good"]["max"])
    assert rows["proc_mem"]["status"] == "refused" and "link" in rows["proc_mem"]["detail"]
    assert "proc_mem: refused" in capsys.readouterr().out


@pytest.mark.skipif(not AS_ROOT, reason="a root-only file needs a grader run as root")
def test_a_root_only_file_never_reaches_a_grade_or_a_feedback_line(tmp_path: Path, capsys) -> None:
    secret = tmp_path / "secret.py"
    secret.write_text("TOPSECRET_b7f3 = open('/etc/shadow').read()\n")
    os.chmod(secret, 0o600)
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / get_lab(1).module).symlink_to(secret)
    assert main(["lab", "check", "1", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "TOPSECRET" not in out and "refused" in out and "symbolic link" in out


@needs_namespaces
def test_a_box_sees_the_runtime_and_its_own_copy_nothing_else(lab_copy, arena: Path, tmp_path: Path) -> None:
    """Attacks 6 and 7: a walk of every folder for a classmate's file, the class folder, the checkout's
    solution; and a listing of what the box can see, which must hold no host /tmp, /work, /root or /home."""
    lab = lab_copy
    real = get_lab(1)
    subs = arena / "class"
    subs.mkdir()
    os.chmod(subs, 0o755)
    (subs / "classmate.py").write_text(lab.solution.read_text())
    os.chmod(subs / "classmate.py", 0o644)
    roots = ["/tmp", "/work", "/root", "/home", "/srv", "/opt", "/var", str(arena), str(real.root.parent.parent)]
    write(subs, "walker", find_and_run_others(lab, roots))
    write(subs, "started", _started(lab))
    spy = write(tmp_path, "spy", attack(lab, f"""
        import os as _os
        _seen = {{p: sorted(_os.listdir(p)) if _os.path.isdir(p) else None
                 for p in ["/", "/tmp", "/home", "/etc", {str(real.root)!r}, {str(arena)!r}]}}
        raise SystemExit(f"seen={{_seen!r}}")
    """))
    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    assert results["walker"].score == results["started"].score < results["classmate"].score
    detail = grade(lab, spy, timeout=30, limits=TIGHT).detail
    seen = eval(detail.split("seen=", 1)[1])  # noqa: S307 -- our own test's output
    # The system folders, plus the top folder of each path the box binds read-only (the interpreter, the venv,
    # the package): where a clone lives (/work, /check, /home/ci) is the host's choice, not the box's.
    bound = {Path(p).resolve().parts[1] for p in (sys.prefix, sys.base_prefix, corolab.__file__)}
    assert set(seen["/"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc",
                              "tmp"} | bound, seen["/"]
    assert seen[str(real.root)] is None and seen[str(arena)] is None and seen["/home"] is None
    assert "shadow" not in seen["/etc"]
    # The box's /tmp is its own: its run folder, plus the folder on the way to a bound path that lives
    # under the host's /tmp (a clone in /tmp/NAME binds /tmp/NAME/.venv), nothing of the host's.
    bound_in_tmp = {Path(p).resolve().parts[2] for p in (sys.prefix, corolab.__file__)
                    if Path(p).resolve().parts[1] == "tmp"}
    assert all(name.startswith("corolab-grader-") or name in bound_in_tmp for name in seen["/tmp"]), seen["/tmp"]


@needs_namespaces
def test_host_unix_sockets_are_out_of_reach(lab_copy, tmp_path: Path) -> None:
    path = f"/tmp/corolab-sock-{uuid.uuid4().hex[:8]}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    server.settimeout(0.2)
    accepted: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn.recv(100))
            except OSError:
                pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        result = grade(lab_copy, write(tmp_path, "unix", connect_unix(lab_copy, path)), timeout=30, limits=TIGHT)
    finally:
        done.set()
        thread.join()
        server.close()
        os.unlink(path)
    assert "unix socket refused" in result.detail, result.detail
    assert accepted == []


@needs_namespaces
def test_the_kernel_keyring_is_closed_so_no_run_leaves_a_trace_for_the_next(lab_copy, tmp_path: Path) -> None:
    description = f"corolab-{uuid.uuid4().hex[:8]}"
    stored = grade(lab_copy, write(tmp_path, "store", keyring(lab_copy, description, store=True)), timeout=30,
                   limits=TIGHT)
    assert "keyring call=-1 errno=1" in stored.detail, stored.detail          # EPERM from the filter
    found = grade(lab_copy, write(tmp_path, "find", keyring(lab_copy, description, store=False)), timeout=30,
                  limits=TIGHT)
    assert "keyring call=-1" in found.detail, found.detail
    assert description not in Path("/proc/keys").read_text()


def test_the_seccomp_filter_is_well_formed() -> None:
    """Every jump lands inside the program, and it ends in a return (the kernel would refuse it otherwise,
    and the probe would then fall back to rlimits)."""
    for machine in ("x86_64", "aarch64"):
        program = seccomp_program(machine)
        assert program and program[-1][0] == 0x06
        for index, (code, jt, jf, _) in enumerate(program):
            if code & 0x07 == 0x05:  # a jump
                assert index + 1 + max(jt, jf) < len(program)
    assert seccomp_program("sparc") is None


@needs_root_box
def test_a_fork_bomb_beside_an_honest_submission_costs_it_nothing(lab_copy, tmp_path: Path, marker) -> None:
    """Each box has its own uid, so the per-user process limit is the bomb's alone: an honest submission
    that starts a thread in top_paths, graded beside it, keeps full marks."""
    lab = lab_copy
    subs = tmp_path / "subs"
    subs.mkdir()
    honest = lab.solution.read_text() + textwrap.dedent("""

        _top_paths_alone = top_paths


        def top_paths(*args, **kwargs):
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(_top_paths_alone, *args, **kwargs).result()
    """)
    write(subs, "a_honest", honest)
    write(subs, "b_bomb", fork_bomb_for(lab, marker, seconds=8))
    results = grade_folder(lab, subs, jobs=2, timeout=60, progress=False, limits=TIGHT)
    assert results["a_honest"].full_marks, [t for t in results["a_honest"].tests if not t.passed]
    assert carrying(marker) == []


@needs_namespaces
def test_hostile_submissions_change_nothing_and_leave_nothing(lab_copy, arena: Path, tmp_path: Path, marker) -> None:
    lab = lab_copy
    subs = tmp_path / "subs"
    subs.mkdir()
    outside = arena / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # anyone may write here: only the box stops the submission
    solution_before = lab.solution.read_text()
    honest_source = partial(lab) + "\n# my own work, half done\n"
    write(subs, "a_honest_before", honest_source)
    write(subs, "plant_conftest", plant_conftest(lab, [lab.tests, lab.root.parent]))
    write(subs, "escape", escape(lab, marker))
    write(subs, "trespass", trespass(lab, outside))
    write(subs, "hog_memory", hog_memory(lab))
    write(subs, "fork_bomb", fork_bomb(lab, marker))
    write(subs, "untouched", lab.starter.read_text())
    write(subs, "z_honest_after", honest_source)

    results = grade_folder(lab, subs, jobs=2, timeout=30, progress=False, limits=TIGHT)
    status = {name: r.status for name, r in results.items()}
    score = {name: r.score for name, r in results.items()}
    full = results["escape"].max_score
    honest = score["a_honest_before"]
    assert 0 < honest < full
    assert score["plant_conftest"] == honest
    assert score["z_honest_after"] == honest                       # graded after the planter: unchanged
    assert not list(lab.root.parent.rglob("conftest.py"))
    assert status["escape"] == "ok" and score["escape"] == full
    assert carrying(marker) == []                                  # every process an attack started is gone
    assert list(outside.iterdir()) == [] and lab.solution.read_text() == solution_before
    assert not (lab.tests / "test_extra.py").exists()
    assert score["trespass"] == honest
    assert status["hog_memory"] == "import-error" and "MemoryError" in results["hog_memory"].detail
    assert status["fork_bomb"] == "import-error", results["fork_bomb"].detail
    started = int(results["fork_bomb"].detail.split("started ")[1].split()[0])
    assert started < 200
    assert status["untouched"] == "not-attempted" and score["untouched"] == 0
    for name, result in results.items():
        assert result.elapsed < 30, f"{name} held the grader for {result.elapsed:.0f} s"


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
    spy = write(tmp_path, "spy", attack(lab_copy, """
        import os as _os
        raise SystemExit(f"uid={_os.getuid()} env={sorted(_os.environ)}")
    """))
    detail = grade(lab_copy, spy, timeout=30, limits=TIGHT).detail
    names = set(detail.split("env=")[1].strip("[]").replace("'", "").split(", "))
    assert names <= {"PATH", "LANG", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                     "COROLAB_STUDENT", "COROLAB_STUDENT_MODULE", "COROLAB_SEED", "COROLAB_SKIP",
                     "PYTEST_CURRENT_TEST", "PYTEST_VERSION"}, names
    if AS_ROOT:
        uid = int(detail.split("uid=")[1].split()[0])
        assert uid in BOX_UIDS


def test_rlimits_fallback_still_grades_and_decides_outside(lab_copy, tmp_path: Path, monkeypatch) -> None:
    """Where namespaces are missing the grader warns and limits memory; forged verdicts still earn nothing."""
    from corolab.labs import grading, sandbox

    monkeypatch.setattr(grading.sandbox, "probe", lambda: "rlimits")
    with pytest.warns(grading.SandboxWarning, match="resource limits only"):
        solved = grade(lab_copy, lab_copy.solution, timeout=60, limits=TIGHT)
    assert solved.full_marks
    with pytest.warns(grading.SandboxWarning):
        hog = grade(lab_copy, write(tmp_path, "hog", hog_memory(lab_copy)), timeout=30, limits=TIGHT)
        forged = grade(lab_copy, write(tmp_path, "forge", call_the_plugins_writer(lab_copy, list(graded_tests(lab_copy)))),
                       timeout=30, limits=TIGHT)
    assert hog.status == "import-error" and "MemoryError" in hog.detail
    assert forged.score == 0
    assert sandbox.probe() in ("namespaces", "rlimits")


def test_verdicts_come_from_observations_not_from_the_box(tmp_path: Path) -> None:
    """The judge, alone: a record that says "passed" earns points only with the reference's observations;
    a test reported twice counts once (the first); tests the lab does not have are ignored."""
    lab = get_lab(1)
    catalogue = {"test_a": (2, "hint a"), "test_b": (1, "hint b"), "test_c": (1, "hint c")}
    reference = {"test_a": [[1, 2]], "test_b": ["x"], "test_c": [True]}
    seen = {"test_a": {"passed": True, "observed": [[1, 2]]},            # right: earns its points
            "test_b": {"passed": True, "observed": ["y"]},               # forged pass, wrong result: 0
            "test_z": {"passed": True, "observed": []}}                  # not the lab's: ignored
    result = _judge(LabResult(lab, tmp_path, "ok"), catalogue, seen, reference)
    by_name = {t.name: t for t in result.tests}
    assert [t.name for t in result.tests] == ["test_a", "test_b", "test_c"]
    assert by_name["test_a"].points == 2 and by_name["test_b"].points == 0 and by_name["test_c"].points == 0
    assert 'yours "y", expected "x"' in by_name["test_b"].message
    unverified = _judge(LabResult(lab, tmp_path, "ok"), catalogue, seen, None)
    assert not unverified.verified and unverified.score == 3                 # the student edition: the box's word
