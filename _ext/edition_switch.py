"""Sphinx extension: every page links to the same page in the other edition.

Why: the book has two editions built from one source, English at the root of ``_build/html`` and Chinese
under ``_build/html/zh/`` (``scripts/build-book.sh``). A reader who lands on a page in one language should
reach the same page in the other with one click, wherever the tree is served from, so the link is relative.
"""

from __future__ import annotations

from html import escape

CHINESE_FOLDER = "zh"  # where scripts/build-book.sh writes the Chinese edition, inside the English one


def is_chinese(language: str | None) -> bool:
    return (language or "").lower().startswith("zh")


def other_edition(pagename: str, language: str | None) -> tuple[str, str, str]:
    """The relative link from ``pagename`` to the same page in the other edition, its label and language."""
    up = "../" * pagename.count("/")
    if is_chinese(language):
        return f"{up}../{pagename}.html", "English", "en"
    return f"{up}{CHINESE_FOLDER}/{pagename}.html", "中文", "zh-CN"


def add_switch(app, pagename, templatename, context, doctree) -> None:
    if doctree is None or "body" not in context:
        return  # the search and index pages have no body of their own
    href, label, lang = other_edition(pagename, app.config.language)
    link = (f'<p class="edition-switch"><a href="{escape(href)}" hreflang="{lang}" lang="{lang}">'
            f"{label}</a></p>\n")
    context["body"] = link + context["body"]


def setup(app):
    app.connect("html-page-context", add_switch)
    app.add_css_file("edition-switch.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
