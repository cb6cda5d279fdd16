"""Sphinx extension: every executed chapter offers its notebook as ``.ipynb`` in the page's download menu.

Why: the chapters are MyST Markdown notebooks. The book theme lists an ``.ipynb`` download for them only
when an online launch service (Binder, JupyterHub, Colab) is configured, and this book runs offline. A
reader who wants a plain notebook, with the outputs they see on the page, gets the one MyST-NB wrote during
the build (``_build/jupyter_execute/<page>.ipynb``), copied next to the page's Markdown source.

MyST-NB (1.x) writes there the notebook it was given. When it executes the page, that notebook holds the
outputs. When it takes them from the execution cache, it merges them into a copy for the page and writes the
original, with no outputs. That is every page of a rebuild that reads the cache, and every page of the Chinese
edition, which always does. So the outputs are merged in here from the same cache before the copy.
"""

from __future__ import annotations

from contextlib import suppress
from functools import lru_cache
from pathlib import Path

import nbformat


@lru_cache(maxsize=None)
def _execution_cache(path: str):  # -> jupyter_cache's cache, opened once per build, not once per page
    from jupyter_cache import get_cache

    return get_cache(path)


def executed_notebook(app, pagename: str) -> nbformat.NotebookNode | None:
    """The page's notebook with its outputs, or None where MyST-NB wrote none."""
    written = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not written.is_file():
        return None
    notebook = nbformat.read(written, as_version=4)
    config = getattr(app.env, "mystnb_config", None)
    if config is not None and config.execution_mode == "cache" and config.execution_cache_path:
        with suppress(KeyError):  # no matching record: the page was executed, and its notebook holds them
            _, notebook = _execution_cache(config.execution_cache_path).merge_match_into_notebook(notebook)
    return notebook


def offer_executed_notebook(app, pagename, templatename, context, doctree) -> None:
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return  # a plain Markdown page, not a notebook
    notebook = executed_notebook(app, pagename)
    if notebook is None:
        return  # MyST-NB wrote no notebook for this page
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Before the theme's own header buttons (priority 501), which read ``ipynb_source``.
    app.connect("html-page-context", offer_executed_notebook, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
