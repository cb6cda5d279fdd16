"""Find the labs: which exist, what they are called, which chapter each belongs to.

A lab is a folder ``labs/labNN-slug/`` with a ``lab.toml`` that names its title, its chapter and the
module students edit. Keeping that in a small file (not in code) lets an instructor add a lab by adding a
folder.
"""

from __future__ import annotations

import os
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
    )


def all_labs(root: Path | None = None) -> list[Lab]:
    root = root or labs_dir()
    return [load_lab(folder) for folder in sorted(root.glob("lab[0-9][0-9]-*")) if (folder / "lab.toml").exists()]


def get_lab(number: int | str, root: Path | None = None) -> Lab:
    """Look a lab up by number (``1``, ``"01"``) or folder name."""
    labs = all_labs(root)
    for lab in labs:
        if str(number) in (lab.name, lab.slug) or (str(number).isdigit() and int(number) == lab.number):
            return lab
    known = ", ".join(f"{lab.number} ({lab.slug})" for lab in labs)
    raise LabError(f"no lab {number!r}; the labs are: {known}")
