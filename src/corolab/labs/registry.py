"""Find the labs: which exist, what they are called, which chapter each belongs to.

A lab is a folder ``labs/labNN-slug/`` with a ``lab.toml`` that names its title, its chapter and the
module students edit. Keeping that in a small file (not in code) lets an instructor add a lab by adding a
folder.

Numbers and names: ``NN`` follows the book's reading order, so it can change when a lab is added or moved
(it did once, in December 2026, when Lab 8, the toy event loop of Part III, became Lab 3 and Labs 3 to 7
moved up one; each moved lab's ``lab.toml`` keeps its old number as ``formerly``). The slug never changes:
it is the stable name, accepted wherever a number is, and it is how an old workspace folder (say
``lab08-toy-event-loop``) is recognised. A bare number always means the current lab of that number; where
it named another lab before, the commands say so (:func:`renumbering_note`) rather than guess which one was
meant.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import corolab


class LabError(Exception):
    """A problem the user can fix (unknown lab, missing file); the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Lab:
    number: int
    slug: str
    title: str
    chapter: str
    module: str          # the file students edit, e.g. "log_pipeline.py"
    timeout: float       # seconds one submission may run under the grader
    root: Path
    memory_mb: int = 1024  # address space each of its processes may reserve (lab.toml: memory_mb)
    test_timeout: float = 20.0  # seconds one test may run before the grader stops it and goes on (lab.toml)
    formerly: int | None = None  # its number before the labs were renumbered to follow the book (lab.toml)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def starter(self) -> Path:
        return self.root / "starter" / self.module

    @property
    def solution(self) -> Path:
        return self.root / "solution" / self.module

    @property
    def tests(self) -> Path:
        return self.root / "tests"

    def mutants(self) -> list[Mutant]:
        """The lab's deliberately broken versions of its solution (``tests/mutants.toml``).

        Why mutants and not copies: each is a few named edits of the solution, so it cannot drift from it,
        and the file says in one line what is wrong with each.
        """
        path = self.tests / "mutants.toml"
        if not path.exists():
            return []
        solution = self.solution.read_text(encoding="utf-8")
        mutants = []
        for entry in tomllib.loads(path.read_text(encoding="utf-8"))["mutant"]:
            source = solution
            for change in entry["change"]:
                if source.count(change["old"]) != 1:
                    raise LabError(f"{path}: mutant {entry['name']!r} no longer matches the solution")
                source = source.replace(change["old"], change["new"])
            mutants.append(Mutant(entry["name"], entry["why"], source))
        return mutants

    def write_mutants(self, folder: Path) -> list[Path]:
        """Write each mutant as ``folder/<name>.py`` and return the paths, ready to grade."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for mutant in self.mutants():
            path = folder / f"{mutant.name}.py"
            # A comment, not a docstring: a second docstring would push `from __future__` off the first line.
            path.write_text(f"# Broken on purpose ({mutant.name}): {mutant.why}\n" + mutant.source, encoding="utf-8")
            paths.append(path)
        return paths


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str
    source: str


def labs_dir() -> Path:
    """Where the labs live: ``$COROLAB_LABS_DIR``; else the repository's ``labs/`` when corolab runs from a
    checkout (solutions included); else the copy shipped inside the installed package (``corolab/_labs``,
    the student edition: no solutions); else ``./labs``."""
    candidates = []
    if env := os.environ.get("COROLAB_LABS_DIR"):
        candidates.append(Path(env))
    package = Path(corolab.__file__).resolve().parent
    candidates.append(package.parents[1] / "labs")  # a checkout: src/corolab/ -> labs/
    candidates.append(package / "_labs")  # a wheel: setup.py copies labs/ here at build time
    candidates.append(Path.cwd() / "labs")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("lab*/lab.toml")):
            return candidate
    raise LabError(
        "cannot find the labs. They ship inside the corolab wheel (corolab/_labs) and live in the "
        "repository's labs/ folder: reinstall corolab from a wheel built from the repository, run from a "
        "clone of it, or set COROLAB_LABS_DIR to a labs folder "
        f"(looked in: {', '.join(str(c) for c in candidates)})"
    )


def load_lab(folder: Path) -> Lab:
    meta = tomllib.loads((folder / "lab.toml").read_text(encoding="utf-8"))
    number = int(folder.name[3:5])
    return Lab(
        number=number,
        slug=folder.name[6:],
        title=meta["title"],
        chapter=meta["chapter"],
        module=meta["module"],
        timeout=float(meta.get("timeout", 60)),
        root=folder,
        memory_mb=int(meta.get("memory_mb", 1024)),
        test_timeout=float(meta.get("test_timeout", 20)),
        formerly=int(meta["formerly"]) if "formerly" in meta else None,
    )


def all_labs(root: Path | None = None) -> list[Lab]:
    root = root or labs_dir()
    return [load_lab(folder) for folder in sorted(root.glob("lab[0-9][0-9]-*")) if (folder / "lab.toml").exists()]


FOLDER = re.compile(r"lab(\d\d)-(.+)")  # a lab's folder, in labs/ or a student's workspace: labNN-slug


def get_lab(number: int | str, root: Path | None = None) -> Lab:
    """Look a lab up by its number (``3``, ``"03"``: the current one), its slug (``"toy-event-loop"``) or a
    folder name (``"lab03-toy-event-loop"``). A folder name is read by its slug, whatever its number: a
    workspace folder from before the renumbering (``lab08-toy-event-loop``) still names the toy event loop."""
    labs = all_labs(root)
    key = str(number).strip()
    if key.isdigit():
        found = [lab for lab in labs if lab.number == int(key)]
    else:
        folder = FOLDER.fullmatch(key)
        found = [lab for lab in labs if lab.slug == (folder.group(2) if folder else key)]
    if found:
        return found[0]
    known = ", ".join(f"{lab.number} ({lab.slug})" for lab in labs)
    raise LabError(f"no lab {number!r}; the labs are: {known}")


def is_lab_key(key: int | str, root: Path | None = None) -> bool:
    """Whether ``key`` names a lab (by number, slug or folder name)."""
    try:
        get_lab(key, root)
    except LabError:
        return False
    return True


def lab_in_folder(folder: Path, root: Path | None = None) -> tuple[Lab, int] | None:
    """The lab a folder named ``labNN-slug`` belongs to, by its slug, and the number ``NN`` it was named
    with (an old number, for a workspace started before the renumbering); ``None`` for any other folder."""
    match = FOLDER.fullmatch(Path(folder).name)
    if match is None:
        return None
    lab = next((lab for lab in all_labs(root) if lab.slug == match.group(2)), None)
    return (lab, int(match.group(1))) if lab is not None else None


def renumbering_note(number: int | str, root: Path | None = None) -> str | None:
    """For a bare number that named another lab before the renumbering (3 to 8), one line that says which
    lab it names now and where the old one went; ``None`` for a slug, a folder name or an unchanged number.

    Why a note and not a guess: a number alone cannot say whether it comes from this book or an old
    handout, and the current book is what students read. The slug settles it, so the note names it."""
    key = str(number).strip()
    if not key.isdigit():
        return None
    labs = all_labs(root)
    now = next((lab for lab in labs if lab.number == int(key)), None)
    before = next((lab for lab in labs if lab.formerly == int(key) and lab.number != int(key)), None)
    if now is None or before is None:
        return None
    return (f"note: lab {int(key)} is {now.slug} ({now.title}). The labs were renumbered to follow the book: "
            f"lab {int(key)} used to be {before.slug}, now lab {before.number}. A lab's slug never changes; "
            f"name the lab by it to be sure (corolab lab start/check {before.slug}).")
