"""Build the student edition of the labs: what an instructor hands out (nbgrader's "release" step).

Why a separate copy: the repository keeps each lab's solution and its broken variants (``mutants.toml``
holds pieces of the solution) next to the starter. The student edition keeps the task, the starter and
the graded tests -- students run ``corolab lab check`` against those -- and nothing that gives the answer.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from corolab.labs.registry import Lab, LabError

LEFT_OUT = ("solution", "mutants.toml", "__pycache__", ".*")

# A Markdown link into the book, relative to a lab's README (../../book/...) or to labs/index.md (../book/...).
BOOK_LINK = re.compile(r"\[([^\]]+)\]\((?:\.\./)+book/([\w./-]+?)\.md(#[^)]*)?\)")


def book_url(repository: Path | None = None) -> str:
    """The published book's address: ``$COROLAB_BOOK_URL``, else ``html.baseurl`` in the repository's
    ``_config.yml``; "" when neither is set (then chapters are named in words, not linked)."""
    if env := os.environ.get("COROLAB_BOOK_URL"):
        return env.rstrip("/")
    config = (repository / "_config.yml") if repository else None
    if config is not None and config.is_file():
        match = re.search(r"^\s+baseurl:\s*[\"']?([^\"'\s#]*)", config.read_text(encoding="utf-8"), re.MULTILINE)
        if match:
            return match.group(1).rstrip("/")
    return ""


def student_markdown(text: str, url: str, where: Path | None = None) -> str:
    """A lab page as a student reads it outside the repository: links into the book (``../../book/...``,
    absent from a handout or a wheel) point at the published chapter, or name it in words without one.
    A link that still resolves from ``where`` (the folder the page is written to) is kept."""
    def replace(match: re.Match) -> str:
        title, page, anchor = match.group(1), match.group(2), match.group(3) or ""
        relative = match.group(0)[len(title) + 3:].split("#")[0].rstrip(")")
        if where is not None and (where / relative).is_file():
            return match.group(0)
        if url:
            return f"[{title}]({url}/book/{page}.html{anchor})"
        return f"{title} (in the corolab book: book/{page})"
    return BOOK_LINK.sub(replace, text)


def copy_student_page(source: Path, target: Path, url: str | None = None) -> None:
    """Copy a lab's Markdown page for a student, its book links rewritten by :func:`student_markdown`."""
    if url is None:
        url = book_url(source.resolve().parents[2] if source.name == "README.md" else source.resolve().parents[1])
    target.write_text(student_markdown(source.read_text(encoding="utf-8"), url, target.parent), encoding="utf-8")


def release(labs: list[Lab], target: Path, force: bool = False) -> list[Path]:
    """Copy each lab into ``target/<lab folder>`` without solutions; return the folders written."""
    target = Path(target)
    if target.exists() and any(target.iterdir()) and not force:
        raise LabError(f"{target} is not empty; use --force to replace the labs in it")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for lab in labs:
        folder = target / lab.name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(lab.root, folder, ignore=shutil.ignore_patterns(*LEFT_OUT))
        copy_student_page(lab.root / "README.md", folder / "README.md")
        written.append(folder)
    index = labs[0].root.parent / "index.md" if labs else None
    if index is not None and index.exists():
        copy_student_page(index, target / "index.md")
    return written
