"""Sphinx extension: every executed chapter offers its notebook as ``.ipynb`` in the page's download menu.

Why: the chapters are MyST Markdown notebooks. The book theme lists an ``.ipynb`` download for them only
when an online launch service (Binder, JupyterHub, Colab) is configured, and this book runs offline. A
reader who wants a plain notebook, with the outputs they see on the page, gets the one MyST-NB executed
during the build (``_build/jupyter_execute/<page>.ipynb``), copied next to the page's Markdown source.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def offer_executed_notebook(app, pagename, templatename, context, doctree) -> None:
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return  # a plain Markdown page, not a notebook
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():
        return  # MyST-NB wrote no notebook for this page
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Before the theme's own header buttons (priority 501), which read ``ipynb_source``.
    app.connect("html-page-context", offer_executed_notebook, priority=500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
