"""The lab system, proved in both directions: solutions earn full marks, starters and broken variants
do not, and a hostile submission costs only its own points."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corolab.cli import main
from corolab.labs import all_labs, format_report, get_lab, grade
from corolab.labs.batch import find_submissions, grade_folder
from corolab.labs.grading import graded_tests, reference_observations
from corolab.labs.registry import LabError
from corolab.labs.sandbox import probe

import hostile_submissions as hostile
from hostile_submissions import marker  # noqa: F401  (a fixture)

LABS = all_labs()
#: The seeds every lab's broken variants are graded with (two, so a test blind to some inputs shows up).
MUTANT_SEEDS = (1207, 90210)


def test_labs_are_discovered_with_titles_and_chapters() -> None:
    assert [lab.number for lab in LABS][:5] == [1, 2, 3, 4, 5]
    for lab in LABS:
        assert lab.title and lab.chapter
        assert lab.starter.exists() and lab.solution.exists() and (lab.root / "README.md").exists()
        assert lab.mutants(), f"{lab.name} keeps no broken variants (tests/mutants.toml)"


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_solution_scores_full_marks(lab) -> None:
    result = grade(lab, lab.solution)
    assert result.status == "ok"
    assert result.full_marks, [t for t in result.tests if not t.passed]


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_starter_does_not(lab, tmp_path: Path) -> None:
    untouched = grade(lab, lab.starter)
    assert untouched.status == "not-attempted" and untouched.score == 0
    begun = tmp_path / lab.module           # one edit away from the starter: graded for real, not full marks
    begun.write_text(lab.starter.read_text() + "\n# started\n")
    result = grade(lab, begun)
    assert result.status == "ok"
    assert not result.full_marks
    assert result.score < result.max_score


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
@pytest.mark.parametrize("seed", MUTANT_SEEDS)
def test_every_graded_test_fails_on_some_broken_variant(lab, seed: int, tmp_path: Path) -> None:
    """Under each seed: a test that no broken variant fails proves nothing for a student graded with that
    seed. The seeds are fixed, so a run is repeatable; a lab whose test is blind for some seeds (a bug
    that only some inputs expose) is fixed in the lab, not by drawing luckier seeds."""
    catalogue = graded_tests(lab)
    caught: set[str] = set()
    variants = lab.write_mutants(tmp_path)
    reference = reference_observations(lab, seed, catalogue=catalogue)  # one seed for every variant
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # each grade is its own subprocess
        results = list(pool.map(lambda variant: grade(lab, variant, catalogue=catalogue, seed=seed,
                                                      reference=reference), variants))
    for variant, result in zip(variants, results):
        assert result.status == "ok", f"{variant.name} must import and run to prove anything: {result.detail}"
        assert not result.full_marks, f"{variant.name} should not earn full marks with seed {seed}"
        caught |= {t.name for t in result.tests if not t.passed}
    assert set(catalogue) - caught == set(), f"with seed {seed}, these tests never fail, so they prove nothing"


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_every_graded_test_observes_what_the_code_computed_from_the_seed(lab) -> None:
    """The verdict is decided outside the box by comparing observations with the reference's, so each
    test must observe something (else any submission whose box says "passed" would pass it), the same
    thing twice for one seed (else an honest submission could fail by chance), and something else for
    another seed (else a submission could carry the answers in)."""
    from corolab.labs import grading

    def observations(seed: int) -> dict[str, list]:
        grading._references.clear()  # run the reference again, not from the cache
        return grading.reference_observations(lab, seed)

    first, again, other = observations(1234), observations(1234), observations(98765)
    assert set(first) == set(graded_tests(lab))
    for name in first:
        assert first[name], f"{lab.name}::{name} observes nothing"
        assert first[name] == again[name], f"{lab.name}::{name} observes different values for one seed"
        assert first[name] != other[name], f"{lab.name}::{name} observes the same values for two seeds"


def test_every_graded_test_has_points_and_a_hint() -> None:
    for lab in LABS:
        for name, (max_points, hint) in graded_tests(lab).items():
            assert max_points > 0, f"{lab.name}::{name} has no points"
            assert len(hint) > 10, f"{lab.name}::{name} has no useful hint"


def test_unknown_lab_is_a_clear_error() -> None:
    with pytest.raises(LabError, match="no lab '99'"):
        get_lab("99")


# -- the command line --------------------------------------------------------------------------------

def test_cli_list(capsys) -> None:
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert "A lazy log pipeline" in out and "Part I" in out
    lines = out.splitlines()
    assert len(lines) == len(all_labs())
    assert len({line.index("chapter:") for line in lines}) == 1, "the chapter column lines up"


def test_cli_start_copies_the_starter_never_the_solution(tmp_path: Path, capsys) -> None:
    lab = get_lab(1)
    assert main(["lab", "start", "1", "--dir", str(tmp_path)]) == 0
    copied = tmp_path / lab.module
    assert copied.read_text() == lab.starter.read_text()
    assert copied.read_text() != lab.solution.read_text()
    assert (tmp_path / "README.md").exists()
    copied.write_text("# my work\n")
    assert main(["lab", "start", "1", "--dir", str(tmp_path)]) == 2       # refuses to overwrite
    assert copied.read_text() == "# my work\n"
    assert "already exists" in capsys.readouterr().err
    assert main(["lab", "start", "1", "--dir", str(tmp_path), "--force"]) == 0
    assert copied.read_text() == lab.starter.read_text()


def test_cli_check_exit_code_is_zero_only_at_full_marks(tmp_path: Path, capsys) -> None:
    lab = get_lab(2)
    assert main(["lab", "check", "2", str(lab.solution)]) == 0
    assert "18/18" in capsys.readouterr().out
    assert main(["lab", "check", "2", str(lab.starter)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "hint:" in out
    assert main(["lab", "check", "2", str(tmp_path / "nothing.py")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_cli_check_finds_the_file_from_inside_the_lab_folder_or_given_the_folder(tmp_path: Path, capsys,
                                                                                monkeypatch) -> None:
    lab = get_lab(2)
    folder = tmp_path / "corolab-labs" / lab.name
    assert main(["lab", "start", "2", "--dir", str(folder)]) == 0
    (folder / lab.module).write_text(lab.solution.read_text())
    capsys.readouterr()
    assert main(["lab", "check", "2", str(folder)]) == 0                   # given the folder
    assert f"checking {folder / lab.module}" in capsys.readouterr().out
    monkeypatch.chdir(folder)
    assert main(["lab", "check", "2"]) == 0                                # run inside it
    assert f"checking {folder / lab.module}" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "check", "2"]) == 0                                # the default workspace
    assert "full marks" in capsys.readouterr().out


def test_cli_release_writes_a_student_edition_without_solutions(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "handout"
    assert main(["lab", "release", str(out)]) == 0
    for lab in LABS:
        copy = out / lab.name
        assert (copy / "README.md").exists() and (copy / "starter" / lab.module).exists()
        assert not (copy / "solution").exists() and not (copy / "tests" / "mutants.toml").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and p.read_bytes() == LABS[0].solution.read_bytes()]
    assert main(["lab", "release", str(out)]) == 2                         # not over a previous handout
    assert "--force" in capsys.readouterr().err
    monkeypatch.setenv("COROLAB_LABS_DIR", str(out))                       # students check against it
    begun = tmp_path / "mine.py"
    begun.write_text(LABS[1].starter.read_text() + "\n# started\n")
    assert main(["lab", "check", "2", str(begun)]) == 1
    assert "hint:" in capsys.readouterr().out


def test_a_failure_that_follows_from_an_earlier_one_says_so(tmp_path: Path) -> None:
    lab = get_lab(1)
    broken = tmp_path / lab.module
    broken.write_text("raise RuntimeError('half-typed')\n")
    result = grade(lab, broken)
    assert result.status == "import-error"
    first, *rest = result.tests
    assert "RuntimeError: half-typed" in first.message
    assert rest and all("follows from the import error" in t.message for t in rest)


def test_a_test_that_hangs_costs_that_test_only_and_is_named(tmp_path: Path) -> None:
    """One endless loop stops its test at the lab's per-test limit; the tests after it run in a fresh box
    and score; the report and the result's detail name the test that hung."""
    import dataclasses

    lab = dataclasses.replace(get_lab(1), test_timeout=3)
    stuck = tmp_path / lab.module
    stuck.write_text(lab.solution.read_text() + "\n\ndef top_paths(records, n=3):\n    while True:\n        pass\n")
    result = grade(lab, stuck, timeout=60)
    hung = [t for t in result.tests if not t.passed]
    assert result.status == "timeout"
    assert [t.name for t in hung] == ["test_top_paths"], [(t.name, t.message) for t in hung]
    assert "did not finish within 3 s" in hung[0].message and "test_top_paths" in result.detail
    assert result.score == result.max_score - hung[0].max_points
    names = [t.name for t in result.tests]
    assert names.index("test_top_paths") < len(names) - 1, "a test after the hang must exist to prove the resume"
    assert "test_top_paths did not finish" in format_report(result)


def test_the_why_line_names_the_case(tmp_path: Path) -> None:
    lab = get_lab(1)
    variant = next(path for path in lab.write_mutants(tmp_path) if path.stem == "follow_naive")
    report = format_report(grade(lab, variant))
    assert "why:  with " in report and "max_idle_polls=" in report


# -- grading a class ---------------------------------------------------------------------------------

def _hostile_folder(lab, folder: Path) -> None:
    solution = lab.solution.read_text()
    (folder / "good.py").write_text(solution)
    (folder / "blank.py").write_text(lab.starter.read_text())
    (folder / "loops_at_import.py").write_text("while True:\n    pass\n")
    (folder / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (folder / "syntax_error.py").write_text("def read_lines(:\n")
    # Correct everywhere except one function that never returns: only the tests after it are lost.
    (folder / "loops_in_a_function.py").write_text(solution + textwrap.dedent("""
        def top_paths(records, n=3):
            while True:
                pass
    """))
    # Kills the interpreter from inside a test: the tests graded before it keep their points.
    (folder / "hard_exit.py").write_text(solution + textwrap.dedent("""
        def top_paths(records, n=3):
            import os
            os._exit(1)
    """))
    student_dir = folder / "dana"
    student_dir.mkdir()
    (student_dir / lab.module).write_text(solution)


def test_grading_a_hostile_folder_costs_each_submission_only_its_own_points(tmp_path: Path) -> None:
    lab = get_lab(1)
    _hostile_folder(lab, tmp_path)
    lab = dataclasses.replace(lab, test_timeout=4)
    results = grade_folder(lab, tmp_path, jobs=2, timeout=30, progress=False)
    full = max(r.max_score for r in results.values())
    status = {name: r.status for name, r in results.items()}
    score = {name: r.score for name, r in results.items()}
    assert status["good"] == "ok" and score["good"] == full
    assert status["dana"] == "ok" and score["dana"] == full       # folder-per-student layout
    assert status["blank"] == "not-attempted" and score["blank"] == 0
    assert status["loops_at_import"] == "timeout" and score["loops_at_import"] == 0
    assert status["exits"] == "import-error" and score["exits"] == 0
    assert status["syntax_error"] == "import-error" and score["syntax_error"] == 0
    # A hang or a crash inside one test costs that test: the rest run again in a fresh box.
    top = graded_tests(lab)["test_top_paths"][0]
    assert status["loops_in_a_function"] == "timeout" and score["loops_in_a_function"] == full - top
    assert status["hard_exit"] == "crash" and score["hard_exit"] == full - top
    lost = {t.name for t in results["hard_exit"].tests if not t.passed}
    assert lost == {"test_top_paths"}
    assert "during test_top_paths" in results["hard_exit"].detail


def test_grade_a_class_of_thirty_with_three_hostile_submissions_to_csv(tmp_path: Path, capsys, marker) -> None:
    """27 honest submissions and 3 hostile ones (a forger through the plugin's own writer, a conftest
    planter, and one whose grandchildren would outlive it by ten minutes): each honest one scores what it
    scores alone, and each hostile one what its real code earns."""
    lab = get_lab(2)
    subs = tmp_path / "subs"
    subs.mkdir()
    sources = [lab.solution, lab.starter, *lab.write_mutants(tmp_path / "mutants")]
    expected = {}
    catalogue_total = sum(points for points, _ in graded_tests(lab).values())
    for i in range(27):
        source = sources[i % len(sources)]
        shutil.copyfile(source, subs / f"student{i:02d}.py")
        expected[f"student{i:02d}"] = source
    hostile.write(subs, "student27", hostile.call_the_plugins_writer(lab, list(graded_tests(lab))))
    hostile.write(subs, "student28", hostile.plant_conftest(lab, []))   # its own copy only: never the repository
    hostile.write(subs, "student29", hostile.escape(lab, marker, seconds=600))
    timeout = 30
    out_csv = tmp_path / "grades.csv"
    # Exit 1: the untouched starters are rows to look at (not-attempted); the CSV is written all the same.
    assert main(["lab", "grade", "2", str(subs), "--csv", str(out_csv), "--jobs", "2", "--timeout", str(timeout)]) == 1
    rows = {row["student"]: row for row in csv.DictReader(out_csv.open())}
    assert len(rows) == 30
    if probe() == "namespaces":  # with rlimits only, a process that leaves its session survives (the docs say so)
        assert hostile.carrying(marker) == []
    assert not (lab.tests / "conftest.py").exists()
    seeds = {row["seed"] for row in rows.values()}
    assert len(seeds) == 1, "one seed for the whole class"
    seed = int(seeds.pop())  # a mutant's score may depend on the inputs drawn, so compare under the same seed
    single = {source: grade(lab, source, seed=seed).score for source in sources}
    for name, row in rows.items():
        test_columns = [k for k in row if k.startswith("test_")]
        assert sum(int(row[k]) for k in test_columns) == int(row["total"])
        assert int(row["max"]) == catalogue_total
        assert float(row["seconds"]) < timeout, f"{name} held the grader"
        if name in expected:
            assert int(row["total"]) == single[expected[name]]
    assert rows["student27"]["total"] == "0"
    assert int(rows["student28"]["total"]) == single[sources[-1]]          # the half solution it was built on
    assert rows["student29"]["status"] == "ok" and int(rows["student29"]["total"]) == catalogue_total
    out = capsys.readouterr().out
    assert "graded 30 submissions" in out and "not-attempted" in out


def test_a_mutant_that_no_longer_matches_the_solution_is_reported(tmp_path: Path) -> None:
    lab = get_lab(2)
    fake = tmp_path / "lab02-coroutine-scheduler"
    shutil.copytree(lab.root, fake)
    (fake / "solution" / lab.module).write_text("# rewritten\n")
    from corolab.labs.registry import load_lab

    with pytest.raises(LabError, match="no longer matches"):
        load_lab(fake).mutants()


def test_find_submissions_rejects_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no submissions"):
        find_submissions(get_lab(1), tmp_path)
