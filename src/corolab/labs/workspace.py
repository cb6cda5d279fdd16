"""Copy a lab's starter into the student's workspace, never the solution, never over their work."""

from __future__ import annotations

import shutil
from pathlib import Path

from corolab.labs.registry import Lab, LabError, all_labs, get_lab, is_lab_key, lab_in_folder, renumbering_note
from corolab.labs.release import copy_student_page


def default_workspace(lab: Lab) -> Path:
    return Path.cwd() / "corolab-labs" / lab.name


def existing_workspace(lab: Lab) -> Path | None:
    """The student's folder for this lab under ``./corolab-labs``, if it holds their file: the default one,
    else one named with the same slug and another number (started before the labs were renumbered, e.g.
    ``lab08-toy-event-loop`` for what is now lab 3)."""
    base = Path.cwd() / "corolab-labs"
    for folder in [default_workspace(lab), *sorted(base.glob(f"lab[0-9][0-9]-{lab.slug}"))]:
        if (folder / lab.module).is_file():
            return folder
    return None


def start(lab: Lab, directory: Path | None = None, force: bool = False) -> Path:
    """Copy the starter and the task into ``directory``; return the file the student edits."""
    if directory is None and not force:
        earlier = existing_workspace(lab)
        if earlier is not None and earlier != default_workspace(lab):
            raise LabError(f"{earlier / lab.module} already holds your work on this lab ({lab.slug}, lab "
                           f"{lab.number} since the labs were renumbered to follow the book); it is kept. Check "
                           f"it with: corolab lab check {lab.slug}. Use --force to start over in "
                           f"{default_workspace(lab)}.")
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
    if here.is_file():
        return here
    return (existing_workspace(lab) or default_workspace(lab)) / lab.module


def lab_and_target(number: int | str | None, path: Path | None) -> tuple[Lab, Path, str | None]:
    """What ``lab check`` grades: the lab, the file, and a note to print first (or ``None``).

    The folder checked (``path``, the folder of a ``path`` file, else the current folder) settles an old
    number: a workspace named ``labNN-slug`` belongs to the lab with that slug. Given the number in the
    folder's own name (``check 8`` inside ``lab08-toy-event-loop``, from before the renumbering), it is
    that folder's lab, with a note; given a number or slug of another lab, it is an error, never a grade
    against the wrong tests. Without a number, the folder's name (or a file named like exactly one lab's
    module) says which lab. Elsewhere a bare number is the current lab of that number, with
    :func:`renumbering_note` where that number meant another lab before."""
    path = Path(path) if path is not None else None
    folder = (path if path.is_dir() else path.parent) if path is not None else Path.cwd()
    here = lab_in_folder(folder)
    note = None
    if number is None:
        by_module = [lab for lab in all_labs() if path is not None and path.name == lab.module]
        if here is not None:
            lab = here[0]
        elif len(by_module) == 1:
            lab = by_module[0]
        else:
            raise LabError("which lab? Name it by number or slug (corolab lab check 3, or corolab lab check "
                           "toy-event-loop), or run the command inside the lab's folder (corolab-labs/labNN-slug).")
    else:
        lab = get_lab(number)
        if here is not None and here[0] != lab:
            folder_lab, folder_number = here
            if str(number).strip().isdigit() and int(number) == folder_number:
                lab = folder_lab
                note = (f"note: {folder.name} is {lab.slug}, lab {lab.number} since the labs were renumbered "
                        f"to follow the book; checking it as lab {lab.number}.")
            else:
                raise LabError(f"{folder} holds {folder_lab.slug} (lab {folder_lab.number}), not {lab.slug} "
                               f"(lab {lab.number}). Here, run: corolab lab check {folder_lab.slug}")
    target = find_target(lab, path)
    if note is None and number is not None:
        confirmed = target.is_file() and (lab_in_folder(target.parent) or (None,))[0] == lab
        note = None if confirmed else renumbering_note(number)
    return lab, target, note


def split_key_and_path(number: str | None, path: Path | None) -> tuple[str | None, Path | None]:
    """``lab check PATH`` with the lab left out: a lone argument that is an existing file or folder and not a
    lab's number is the path (a folder named like a lab, ``lab08-toy-event-loop``, is both)."""
    if path is None and number is not None and not number.strip().isdigit() and Path(number).exists():
        return (number if is_lab_key(number) else None), Path(number)
    return number, path
