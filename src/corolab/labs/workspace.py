"""Copy a lab's starter into the student's workspace, never the solution, never over their work."""

from __future__ import annotations

import shutil
from pathlib import Path

from corolab.labs.registry import Lab, LabError
from corolab.labs.release import copy_student_page


def default_workspace(lab: Lab) -> Path:
    return Path.cwd() / "corolab-labs" / lab.name


def start(lab: Lab, directory: Path | None = None, force: bool = False) -> Path:
    """Copy the starter and the task into ``directory``; return the file the student edits."""
    target_dir = Path(directory) if directory is not None else default_workspace(lab)
    target = target_dir / lab.module
    if target.exists() and not force:
        raise LabError(f"{target} already exists; your work is kept. Use --force to start over.")
    target_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lab.starter, target)
    copy_student_page(lab.root / "README.md", target_dir / "README.md")
    return target


def lab_script(lab: Lab) -> Path | None:
    """``scripts/lab.sh`` (JupyterLab with the book's kernel) when the lab comes from a clone of the
    repository; ``None`` for a wheel or a handout, which have no such script."""
    script = lab.root.resolve().parent.parent / "scripts" / "lab.sh"
    return script if script.is_file() else None


def find_target(lab: Lab, path: Path | None) -> Path:
    """The file ``lab check`` grades: the given file, the lab's file in a given folder, else the lab's file
    in the current folder (run from inside the lab folder), else the default workspace's."""
    if path is not None:
        path = Path(path)
        return path / lab.module if path.is_dir() else path
    here = Path.cwd() / lab.module
    return here if here.is_file() else default_workspace(lab) / lab.module
