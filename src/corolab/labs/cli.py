"""``corolab lab list | start | check | grade | release``.

Every command names a lab by its number or its slug (``3`` or ``toy-event-loop``; a folder name such as
``lab03-toy-event-loop`` works too). Numbers follow the book's reading order, so ``lab list`` reads in
order; the slug is the name that never changes. A bare number that meant another lab before the labs
were renumbered (3 to 8) gets a note on stderr naming both (see ``registry.renumbering_note``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from corolab.labs.registry import LabError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="classroom labs: list, start, check, grade, release")
    sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    sub.add_parser("list", help="the labs and their chapters").set_defaults(func=_list)

    lab_help = "the lab: its number in the book (3) or its slug (toy-event-loop), as `corolab lab list` shows"
    p = sub.add_parser("start", help="copy a lab's starter into your workspace")
    p.add_argument("number", metavar="LAB", help=lab_help)
    p.add_argument("--dir", type=Path, default=None, help="where to put it (default ./corolab-labs/labNN-slug)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_start)

    p = sub.add_parser("check", help="run the graded tests on your file (exit 0 only at full marks)")
    p.add_argument("number", metavar="LAB", nargs="?", default=None,
                   help=lab_help + "; leave it out inside the lab's folder (corolab-labs/labNN-slug)")
    p.add_argument("path", nargs="?", type=Path, default=None,
                   help="your file, or its folder (default: the lab's file here, else in ./corolab-labs/labNN-slug)")
    p.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=_check)

    p = sub.add_parser("grade", help="grade a folder of submissions into a CSV")
    p.add_argument("number", metavar="LAB", help=lab_help)
    p.add_argument("submissions", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=None, help="seconds per submission (default: the lab's)")
    p.add_argument("--jobs", type=int, default=None, help="submissions graded at once (default: CPU count)")
    p.set_defaults(func=_grade)

    p = sub.add_parser("release", help="write the student edition of the labs (no solutions) to hand out")
    p.add_argument("target", type=Path)
    p.add_argument("numbers", metavar="LAB", nargs="*", help="which labs, by number or slug (default: all)")
    p.add_argument("--force", action="store_true", help="replace labs already in TARGET")
    p.set_defaults(func=_release)


def _guarded(fn):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except LabError as exc:
            print(f"corolab lab: {exc}", file=sys.stderr)
            return 2
    return run


def _lab(key: str):  # type: ignore[no-untyped-def]
    """The lab ``key`` names, after printing the renumbering note where a bare number needs one."""
    from corolab.labs.registry import get_lab, renumbering_note

    lab = get_lab(key)
    if note := renumbering_note(key):
        print(note, file=sys.stderr)
    return lab


@_guarded
def _list(args: argparse.Namespace) -> int:
    from corolab.labs.registry import all_labs

    labs = all_labs()  # in number order, which is the book's order (tests/test_lab_order.py keeps it so)
    # Size the slug and title columns to the longest, so the chapter column lines up whatever they are.
    slugs = max((len(lab.slug) for lab in labs), default=0)
    width = max((len(lab.title) for lab in labs), default=0)
    for lab in labs:
        print(f"{lab.number:2d}  {lab.slug:<{slugs}}  {lab.title:<{width}}  chapter: {lab.chapter}")
    return 0


@_guarded
def _start(args: argparse.Namespace) -> int:
    from corolab.labs.workspace import lab_script, start

    lab = _lab(args.number)
    target = start(lab, args.dir, args.force)
    print(f"Lab {lab.number} ({lab.slug}: {lab.title}) is ready: edit {target}")
    if script := lab_script(lab):
        print(f"The task is in {target.parent / 'README.md'}. JupyterLab with the book: bash {script}")
    else:
        print(f"The task is in {target.parent / 'README.md'}. Edit the file in any editor (or: jupyter lab "
              f"{target.parent}, where JupyterLab is installed).")
    print(f"Check your work any time with:  corolab lab check {lab.number} {target}")
    return 0


@_guarded
def _check(args: argparse.Namespace) -> int:
    from corolab.labs.grading import grade, require_pytest
    from corolab.labs.report import format_report
    from corolab.labs.workspace import lab_and_target, split_key_and_path

    require_pytest()
    lab, target, note = lab_and_target(*split_key_and_path(args.number, args.path))
    if note:
        print(note, file=sys.stderr)
    result = grade(lab, target, args.timeout)
    print(format_report(result))
    return 0 if result.full_marks else 1


@_guarded
def _grade(args: argparse.Namespace) -> int:
    import time

    from corolab.labs.batch import grade_folder, write_csv
    from corolab.labs.grading import require_pytest

    require_pytest()
    lab = _lab(args.number)
    started = time.perf_counter()
    results = grade_folder(lab, args.submissions, jobs=args.jobs, timeout=args.timeout)
    write_csv(results, args.csv)
    elapsed = time.perf_counter() - started
    full = sum(r.full_marks for r in results.values())
    problems = {s: r for s, r in results.items() if r.status != "ok"}
    print(f"graded {len(results)} submissions in {elapsed:.1f} s: {full} at full marks; CSV: {args.csv}")
    for student, result in problems.items():
        print(f"  {student}: {result.status}" + (f" ({result.detail})" if result.detail else ""))
    return 1 if problems else 0  # the CSV is written either way; the exit code says a row needs a look


@_guarded
def _release(args: argparse.Namespace) -> int:
    from corolab.labs.registry import all_labs
    from corolab.labs.release import release

    labs = [_lab(n) for n in args.numbers] if args.numbers else all_labs()
    for folder in release(labs, args.target, args.force):
        print(f"wrote {folder} (task, starter, graded tests; no solution)")
    print(f"Hand out {args.target}; students set COROLAB_LABS_DIR={args.target} to check their work against it.")
    return 0
