"""Lab numbers follow the book, and a lab's slug is its stable name.

The labs were renumbered once (December 2026) so that a part's labs read in order: the toy event loop of
Part III, Lab 8 before, became Lab 3, and Labs 3 to 7 moved up one. These tests keep the numbers in the
book's order wherever they are written, and prove that the slug works wherever a number does, so that an
old workspace folder (``lab08-toy-event-loop``) or an old number is never graded against the wrong lab."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from corolab.cli import main
from corolab.labs import grading
from corolab.labs.grading import LabResult
from corolab.labs.registry import LabError, all_labs, get_lab, lab_in_folder, renumbering_note
from corolab.labs.workspace import lab_and_target

ROOT = Path(__file__).resolve().parents[1]
LABS = all_labs()
TOY = get_lab("toy-event-loop")


def _toc_files() -> list[str]:
    return re.findall(r"^\s*- file: (\S+)\s*$", (ROOT / "_toc.yml").read_text(encoding="utf-8"), re.MULTILINE)


def _chapters(lab) -> list[str]:  # type: ignore[no-untyped-def]
    """The book pages a lab's ``chapter`` names: "Part IV: asyncio (book/part4-asyncio/04-tasks, 06-queues-...)"."""
    inside = re.search(r"\(([^)]*)\)", lab.chapter)
    assert inside, f"{lab.name}: lab.toml's chapter names no page: {lab.chapter!r}"
    first, *rest = [item.strip() for item in inside.group(1).split(",")]
    folder = first.rsplit("/", 1)[0]
    return [first, *(f"{folder}/{name}" for name in rest)]


# -- the numbers follow the book ---------------------------------------------------------------------

def test_labs_are_numbered_one_to_n_without_gaps() -> None:
    assert [lab.number for lab in LABS] == list(range(1, len(LABS) + 1))


def test_number_order_is_the_books_reading_order() -> None:
    toc = _toc_files()
    places = []
    for lab in LABS:
        pages = _chapters(lab)
        for page in pages:
            assert page in toc, f"{lab.name}: {page} is not a page of the book (_toc.yml)"
        places.append((min(toc.index(p) for p in pages), max(toc.index(p) for p in pages)))
    by_number = [f"{lab.number} {lab.slug}" for lab in LABS]
    assert places == sorted(places), f"the labs in number order {by_number} do not follow the book's pages {places}"


def test_the_books_labs_section_lists_them_in_number_order() -> None:
    listed = [f.split("/")[1] for f in _toc_files() if re.fullmatch(r"labs/lab\d\d-[\w-]+/README", f)]
    assert listed == [lab.name for lab in LABS]


def test_lab_list_prints_them_in_number_order(capsys) -> None:
    assert main(["lab", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [(int(line.split()[0]), line.split()[1]) for line in lines] == [(lab.number, lab.slug) for lab in LABS]


def test_the_index_table_rows_are_in_number_order_and_link_their_folders() -> None:
    text = (ROOT / "labs" / "index.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+) \| \[Lab (\d+): [^\]]*\]\((lab\d\d-[\w-]+)/README\.md\)", text, re.MULTILINE)
    assert rows == [(str(lab.number), str(lab.number), lab.name) for lab in LABS]


@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_a_lab_names_only_its_own_number(lab) -> None:
    """README, starter, solution and tests say "Lab N", "lab check N", "check(N)" with the lab's number."""
    readme = (lab.root / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(f"# Lab {lab.number}: "), readme.splitlines()[0]
    mention = re.compile(r"\bLab (\d+)\b|lab (?:start|check|grade) (\d+)\b|\bcheck\((\d+)\)|\blab(\d\d)-")
    for path in [lab.root / "README.md", *lab.root.rglob("*.py")]:
        for match in mention.finditer(path.read_text(encoding="utf-8")):
            number = int(next(g for g in match.groups() if g))
            assert number == lab.number, f"{path.relative_to(ROOT)}: {match.group(0)!r} in lab {lab.number}"


def test_the_books_chapters_call_each_lab_by_its_number() -> None:
    """"Lab N, {doc}`../../labs/labMM-slug/README`" (or a Markdown link) in a chapter: N is MM."""
    pattern = re.compile(r"\bLab (\d+),?\s+(?:\{doc\}`|\[[^\]]*\]\()(?:\.\./)+labs/lab(\d\d)-([\w-]+)/README")
    pages = [p for p in (ROOT / "book").rglob("*.md") if "_build" not in p.parts]
    seen = 0
    for page in pages:
        for said, folder, slug in pattern.findall(page.read_text(encoding="utf-8")):
            seen += 1
            assert int(said) == int(folder) == get_lab(slug).number, \
                f"{page.relative_to(ROOT)}: Lab {said} links lab{folder}-{slug}"
    assert seen > 10, "the pattern no longer finds the chapters' links to labs"


# -- the slug, everywhere a number works -------------------------------------------------------------

@pytest.mark.parametrize("lab", LABS, ids=lambda lab: lab.name)
def test_get_lab_by_number_slug_folder_and_old_folder(lab) -> None:
    other = 99 if lab.number != 99 else 98
    for key in (lab.number, str(lab.number), f"{lab.number:02d}", lab.slug, lab.name, f"lab{other:02d}-{lab.slug}"):
        assert get_lab(key) == lab, key
    with pytest.raises(LabError, match="no lab"):
        get_lab(f"lab{lab.number:02d}-no-such-slug")


def _record_grading(monkeypatch) -> list:  # type: ignore[no-untyped-def]
    """Stand in for the grader: record which lab and file each command would grade."""
    graded: list = []

    def fake_grade(lab, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        graded.append((lab, Path(path)))
        return LabResult(lab, Path(path), "missing", detail="not graded: this test records the lab only")

    def fake_grade_folder(lab, folder, **kwargs):  # type: ignore[no-untyped-def]
        graded.append((lab, Path(folder)))
        return {"student": fake_grade(lab, Path(folder) / "student.py")}

    monkeypatch.setattr(grading, "grade", fake_grade)
    monkeypatch.setattr("corolab.labs.batch.grade_folder", fake_grade_folder)
    return graded


@pytest.mark.parametrize("key", ["3", "03", "toy-event-loop", "lab03-toy-event-loop", "lab08-toy-event-loop"])
def test_every_command_takes_a_slug_or_folder_name_as_well_as_a_number(key, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "start", key, "--dir", str(tmp_path / "ws")]) == 0
    assert (tmp_path / "ws" / TOY.module).read_text() == TOY.starter.read_text()
    assert main(["lab", "release", str(tmp_path / "handout"), key]) == 0
    assert [p.name for p in (tmp_path / "handout").iterdir() if p.is_dir()] == [TOY.name]

    graded = _record_grading(monkeypatch)
    assert main(["lab", "check", key, str(tmp_path / "ws")]) == 1          # the stand-in reports "missing"
    (tmp_path / "subs").mkdir()
    assert main(["lab", "grade", key, str(tmp_path / "subs"), "--csv", str(tmp_path / "g.csv")]) == 1
    assert graded == [(TOY, tmp_path / "ws" / TOY.module), (TOY, tmp_path / "subs"),
                      (TOY, tmp_path / "subs" / "student.py")]
    assert "renumbered" not in capsys.readouterr().err or key in ("3", "03")  # only a bare number gets the note


def test_a_bare_number_that_changed_meaning_says_so_and_a_slug_does_not() -> None:
    note = renumbering_note(8)
    assert note is not None and "batching-loop" in note and "toy-event-loop" in note and "lab 3" in note
    assert renumbering_note("3") is not None and "bounded-fetcher" in renumbering_note("3")
    assert renumbering_note(1) is None and renumbering_note(9) is None     # never renumbered
    assert renumbering_note("toy-event-loop") is None and renumbering_note("lab08-toy-event-loop") is None
    moved = {lab.formerly: lab.number for lab in LABS if lab.formerly is not None}
    assert moved == {8: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8}


# -- an old workspace folder ----------------------------------------------------------------------

def _old_workspace(tmp_path: Path, solved: bool = True) -> Path:
    """``corolab-labs/lab08-toy-event-loop``, as ``corolab lab start 8`` made it before the renumbering."""
    folder = tmp_path / "corolab-labs" / "lab08-toy-event-loop"
    folder.mkdir(parents=True)
    shutil.copyfile(TOY.solution if solved else TOY.starter, folder / TOY.module)
    return folder


def test_check_inside_an_old_workspace_grades_the_lab_its_slug_names(tmp_path, monkeypatch, capsys) -> None:
    """The real grader, end to end: ``check 8`` (the old number) inside ``lab08-toy-event-loop`` grades the
    toy event loop (now lab 3), not the batching loop (now lab 8), and says so."""
    folder = _old_workspace(tmp_path)
    monkeypatch.chdir(folder)
    assert main(["lab", "check", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Lab 3 (toy-event-loop): ") and "full marks" in captured.out
    assert f"checking {folder / TOY.module}" in captured.out
    assert "lab08-toy-event-loop is toy-event-loop, lab 3" in captured.err


def test_an_old_workspace_is_found_by_slug_from_anywhere(tmp_path, monkeypatch) -> None:
    folder = _old_workspace(tmp_path)
    target = folder / TOY.module
    monkeypatch.chdir(folder)
    for key in (None, "8", "3", "toy-event-loop"):                          # inside it, with or without a name
        assert lab_and_target(key, None)[:2] == (TOY, target), key
    monkeypatch.chdir(tmp_path)
    for key in ("3", "toy-event-loop"):                                     # from the folder above it
        lab, found, note = lab_and_target(key, None)
        assert (lab, found, note) == (TOY, target, None), key
    for key in (None, "8", "toy-event-loop"):                               # given the folder
        assert lab_and_target(key, folder)[:2] == (TOY, target), key
    assert lab_and_target(None, target)[:2] == (TOY, target)                # given the file


def test_an_old_workspace_is_never_graded_as_another_lab(tmp_path, monkeypatch, capsys) -> None:
    folder = _old_workspace(tmp_path)
    graded = _record_grading(monkeypatch)
    monkeypatch.chdir(folder)
    for key in ("5", "batching-loop", "lab08-batching-loop"):
        assert main(["lab", "check", key]) == 2, key
        assert "holds toy-event-loop (lab 3)" in capsys.readouterr().err
    assert main(["lab", "check", "8", str(tmp_path)]) == 1                 # elsewhere, 8 is the batching loop...
    assert graded == [(get_lab(8), tmp_path / get_lab(8).module)]
    assert "lab 8 used to be toy-event-loop, now lab 3" in capsys.readouterr().err   # ...with a note


def test_start_does_not_split_work_begun_under_the_old_number(tmp_path, monkeypatch, capsys) -> None:
    folder = _old_workspace(tmp_path, solved=False)
    (folder / TOY.module).write_text(TOY.starter.read_text() + "\n# my work\n")
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "start", "toy-event-loop"]) == 2
    assert "lab08-toy-event-loop" in capsys.readouterr().err
    assert not (tmp_path / "corolab-labs" / TOY.name).exists()
    assert main(["lab", "start", "toy-event-loop", "--force"]) == 0        # a fresh copy only when asked
    assert (tmp_path / "corolab-labs" / TOY.name / TOY.module).read_text() == TOY.starter.read_text()
    assert (folder / TOY.module).read_text().endswith("# my work\n")


def test_check_without_a_lab_outside_a_lab_folder_asks_which(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "check"]) == 2
    assert "which lab?" in capsys.readouterr().err


def test_lab_in_folder_reads_the_slug_not_the_number() -> None:
    assert lab_in_folder(Path("corolab-labs/lab08-toy-event-loop")) == (TOY, 8)
    assert lab_in_folder(Path("corolab-labs/lab03-toy-event-loop")) == (TOY, 3)
    assert lab_in_folder(Path("corolab-labs/lab03-unknown")) is None
    assert lab_in_folder(Path("mywork")) is None
