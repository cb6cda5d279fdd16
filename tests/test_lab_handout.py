"""What a student holds outside the repository (a handout from ``lab release``, a workspace from ``lab
start``, a wheel) points at things that exist there: the book's chapters by their published address or
by name, commands that work where the student is, the labs in the book's order, and a plain message when
pytest is missing."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from corolab.cli import main
from corolab.labs.registry import all_labs, get_lab
from corolab.labs.release import student_markdown

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]


def test_a_handout_links_the_published_chapters(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COROLAB_BOOK_URL", "https://books.example/corolab/")
    assert main(["lab", "release", str(tmp_path / "handout")]) == 0
    pages = [tmp_path / "handout" / "index.md", *(tmp_path / "handout").glob("lab*/README.md")]
    assert len(pages) == len(all_labs()) + 1
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "../book/" not in text, page
        for target in _relative_links(text):
            assert (page.parent / target).is_file(), f"{page}: broken link {target}"
    readme = (tmp_path / "handout" / "lab01-log-pipeline" / "README.md").read_text()
    assert "(https://books.example/corolab/book/part1-generators/04-lazy-pipelines.html)" in readme


def test_without_a_published_address_the_chapter_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("COROLAB_BOOK_URL", raising=False)
    assert main(["lab", "release", str(tmp_path / "handout")]) == 0
    readme = (tmp_path / "handout" / "lab01-log-pipeline" / "README.md").read_text()
    assert "Lazy pipelines (in the corolab book: book/part1-generators/04-lazy-pipelines)" in readme
    assert not [t for t in _relative_links(readme) if "book/" in t]


def test_a_link_that_resolves_where_the_page_is_written_is_kept(tmp_path):
    (tmp_path / "book" / "p").mkdir(parents=True)
    (tmp_path / "book" / "p" / "c.md").write_text("# c")
    (tmp_path / "a" / "b").mkdir(parents=True)
    text = "see [C](../../book/p/c.md) and [D](../../book/p/d.md#x)"
    assert student_markdown(text, "", tmp_path / "a" / "b") == \
        "see [C](../../book/p/c.md) and D (in the corolab book: book/p/d)"
    assert student_markdown(text, "https://u", None) == "see [C](https://u/book/p/c.html) and [D](https://u/book/p/d.html#x)"


def test_lab_start_names_a_command_that_exists_where_the_student_is(tmp_path, monkeypatch, capsys):
    assert main(["lab", "start", "1", "--dir", str(tmp_path / "in-checkout")]) == 0
    out = capsys.readouterr().out
    assert f"bash {ROOT / 'scripts' / 'lab.sh'}" in out                  # a clone has the script: its full path
    assert main(["lab", "release", str(tmp_path / "handout")]) == 0
    monkeypatch.setenv("COROLAB_LABS_DIR", str(tmp_path / "handout"))   # a handout (or a wheel) has none
    capsys.readouterr()
    assert main(["lab", "start", "1", "--dir", str(tmp_path / "from-handout")]) == 0
    out = capsys.readouterr().out
    assert "scripts/lab.sh" not in out and "any editor" in out
    assert "corolab lab check 1" in out


def test_lab_list_follows_the_book_and_names_every_chapter_of_the_batching_lab(capsys):
    assert main(["lab", "list"]) == 0
    numbers = [int(line.split()[0]) for line in capsys.readouterr().out.splitlines()]
    parts = {lab.number: lab.chapter.split(":")[0] for lab in all_labs()}
    order = ["Part I", "Part II", "Part III", "Part IV", "Part V", "Part VI", "Part VII"]
    assert [order.index(parts[n]) for n in numbers] == sorted(order.index(parts[n]) for n in numbers)
    assert numbers == sorted(numbers)                                      # numbered in the book's order
    batching = get_lab("batching-loop")
    assert "05-continuous-batching" in batching.chapter and "04-a-thread-per-request" in batching.chapter


@pytest.mark.parametrize("command", [["lab", "check", "1"], ["lab", "grade", "1", ".", "--csv", "g.csv"]])
def test_without_pytest_the_lab_commands_say_so(command, monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "pytest is not installed" in err and "pip install 'corolab[labs]'" in err
