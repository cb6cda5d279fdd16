"""The lab system, proved in both directions: solutions earn full marks, starters and broken variants
do not, and a hostile submission costs only its own points."""

from __future__ import annotations

import csv
import os
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corolab.cli import main
from corolab.labs import all_labs, get_lab, grade
from corolab.labs.batch import find_submissions, grade_folder
from corolab.labs.grading import graded_tests
from corolab.labs.registry import LabError

LABS = all_labs()


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
def test_untouched_starter_does_not(lab) -> None:
    result = grade(lab, lab.starter)
    assert result.status == "ok"
    assert not result.full_marks
    assert result.score < result.max_score


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_every_graded_test_fails_on_some_broken_variant(lab, tmp_path: Path) -> None:
    catalogue = graded_tests(lab)
    caught: set[str] = set()
    variants = lab.write_mutants(tmp_path)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # each grade is its own subprocess
        results = list(pool.map(lambda variant: grade(lab, variant, catalogue=catalogue), variants))
    for variant, result in zip(variants, results):
        assert result.status == "ok", f"{variant.name} must import and run to prove anything: {result.detail}"
        assert not result.full_marks, f"{variant.name} should not earn full marks"
        caught |= {t.name for t in result.tests if not t.passed}
    assert set(catalogue) - caught == set(), "these tests never fail, so they prove nothing"


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
    results = grade_folder(lab, tmp_path, jobs=2, timeout=8, progress=False)
    full = max(r.max_score for r in results.values())
    status = {name: r.status for name, r in results.items()}
    score = {name: r.score for name, r in results.items()}
    assert status["good"] == "ok" and score["good"] == full
    assert status["dana"] == "ok" and score["dana"] == full       # folder-per-student layout
    assert status["blank"] == "ok" and score["blank"] == 0
    assert status["loops_at_import"] == "timeout" and score["loops_at_import"] == 0
    assert status["exits"] == "import-error" and score["exits"] == 0
    assert status["syntax_error"] == "import-error" and score["syntax_error"] == 0
    # Tests run in file order; top_paths is near the end, so most points survive the hang or crash.
    assert status["loops_in_a_function"] == "timeout" and 0 < score["loops_in_a_function"] < full
    assert status["hard_exit"] == "crash" and 0 < score["hard_exit"] < full
    lost = {t.name for t in results["hard_exit"].tests if not t.passed}
    assert "test_top_paths" in lost


def test_grade_thirty_submissions_to_csv(tmp_path: Path, capsys) -> None:
    lab = get_lab(2)
    subs = tmp_path / "subs"
    subs.mkdir()
    sources = [lab.solution, lab.starter, *lab.write_mutants(tmp_path / "mutants")]
    expected = {}
    catalogue_total = sum(points for points, _ in graded_tests(lab).values())
    for i in range(30):
        source = sources[i % len(sources)]
        shutil.copyfile(source, subs / f"student{i:02d}.py")
        expected[f"student{i:02d}"] = source
    out_csv = tmp_path / "grades.csv"
    assert main(["lab", "grade", "2", str(subs), "--csv", str(out_csv), "--jobs", "2"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 30
    single = {source: grade(lab, source).score for source in sources}
    for row in rows:
        test_columns = [k for k in row if k.startswith("test_")]
        assert sum(int(row[k]) for k in test_columns) == int(row["total"])
        assert int(row["max"]) == catalogue_total
        assert int(row["total"]) == single[expected[row["student"]]]
    assert "graded 30 submissions" in capsys.readouterr().out


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
