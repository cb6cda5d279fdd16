"""Opening a chapter in JupyterLab and saving it unchanged must leave the file byte-for-byte as it was.

JupyterLab reads and writes the Markdown chapters through jupytext's contents manager (the
jupyterlab_jupytext server extension wraps jupyter_server's default manager). Without the
``jupytext.toml`` in ``book/`` and ``notebooks/`` that manager stamps ``jupytext_version`` into every
front matter it saves, and ``git status`` shows chapters nobody edited. This test takes the same code
path: the same manager class, the same get-then-save a "Save" in JupyterLab performs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("book", "notebooks")


def _chapters() -> list[str]:
    """Every Markdown file under book/ and notebooks/, relative to the repository root."""
    return sorted(str(p.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).rglob("*.md")
                  if ".ipynb_checkpoints" not in p.parts)


@pytest.fixture(scope="module")
def contents_manager(tmp_path_factory):
    """JupyterLab's contents manager over a copy of book/ and notebooks/ (saving never touches the repo)."""
    pytest.importorskip("jupytext")
    largefilemanager = pytest.importorskip("jupyter_server.services.contents.largefilemanager")
    from jupytext import build_async_jupytext_contents_manager_class

    root = tmp_path_factory.mktemp("roundtrip")
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, root / folder,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_build", "__pycache__"))
    # jupytext also looks for its settings in pyproject.toml's [tool.jupytext], as far up as the root.
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    manager_class = build_async_jupytext_contents_manager_class(largefilemanager.AsyncLargeFileManager)
    return root, manager_class(root_dir=str(root))


def test_there_are_chapters_to_check():
    assert len(_chapters()) > 10


@pytest.mark.parametrize("chapter", _chapters())
async def test_saving_an_unchanged_chapter_keeps_its_bytes(contents_manager, chapter):
    root, manager = contents_manager
    before = (root / chapter).read_bytes()
    model = await manager.get(chapter, content=True, type="notebook")
    await manager.save({"type": "notebook", "format": "json", "content": model["content"]}, chapter)
    after = (root / chapter).read_bytes()
    assert after == before, (
        f"saving {chapter} unchanged in JupyterLab rewrites it; compare its front matter with "
        "book/part1-generators/01-iteration.md and keep book/jupytext.toml and notebooks/jupytext.toml")
