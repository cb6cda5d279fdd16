"""Build step that ships the labs inside the wheel, as ``corolab/_labs`` (the rest is in pyproject.toml).

Why a build step and not package data: the labs live at the repository root (``labs/``), outside the
``src/corolab`` package, because the book and the instructors use them there. A wheel installed with pip
has no repository around it, so ``corolab lab list/start/check`` would find nothing; this copies the
student part of every lab into the package at build time.

What ships: each lab's README, lab.toml, starter and graded tests. What does not: ``solution/`` and
``tests/mutants.toml`` (whose edits quote the solution). Solutions stay in the repository for
instructors; the wheel is the student edition. In a checkout (editable install) the registry reads the
repository's ``labs/`` directly, solutions included.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
LABS = HERE / "labs"
EXCLUDE = shutil.ignore_patterns("solution", "mutants.toml", "__pycache__", ".pytest_cache", "*.pyc",
                                 ".ipynb_checkpoints")


class build_py_with_labs(build_py):
    """The usual build, plus ``labs/`` copied to ``corolab/_labs`` without solutions."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or not LABS.is_dir():
            return  # editable installs read labs/ in place; an sdist without labs/ ships none
        target = Path(self.build_lib) / "corolab" / "_labs"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(LABS, target, ignore=EXCLUDE)


setup(cmdclass={"build_py": build_py_with_labs})
