"""Sphinx extension: the table of contents' part captions ("Part I — Generators") follow the page's language.

Why: the captions come from ``_toc.yml``. sphinx-external-toc inserts them into the root page as toctree
captions after Sphinx's translation step has run, so the Chinese edition showed them in English although its
catalogue (``locale/zh_CN/LC_MESSAGES/book/index.po``) translates them. This transform runs after the
insertion and looks each caption up in the same catalogue. In the English edition it changes nothing.
"""

from __future__ import annotations

from os import path

from sphinx import addnodes, locale
from sphinx.transforms import SphinxTransform
from sphinx.util.i18n import docname_to_domain


class TranslateTocCaptions(SphinxTransform):
    default_priority = 150  # after sphinx-external-toc's InsertToctrees (100), before doctree-read (880)

    def apply(self, **kwargs) -> None:
        if not self.config.language or self.config.language == "en":
            return
        captions = [node for node in self.document.findall(addnodes.toctree) if node.get("caption")]
        if not captions:
            return
        dirs = [path.join(self.env.srcdir, d) for d in self.config.locale_dirs]
        domain = docname_to_domain(self.env.docname, self.config.gettext_compact)
        catalog, found = locale.init(dirs, self.config.language, domain)
        if not found:
            return
        for node in captions:
            node["caption"] = catalog.gettext(node["caption"])


def setup(app):
    app.add_transform(TranslateTocCaptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
