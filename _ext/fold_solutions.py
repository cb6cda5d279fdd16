"""Sphinx extension: a folded solution holds its code cell, source and output, behind one click.

Why: a "Try it" solution is a ``{admonition} Solution N`` with ``:class: dropdown``, followed by a code
cell tagged ``hide-input`` that runs the answer. Rendered as written, the dropdown folds only the prose;
the cell's own toggle folds only its source, so its output (often the answer itself, an error message
or a number) shows in plain view, and reading the whole solution takes two clicks.

After the notebook is parsed, and before MyST-NB wraps hidden inputs in their own ``<details>``
(``HideInputCells``, priority 199), this moves every ``hide-input`` code cell that directly follows a
"Solution" dropdown into that dropdown and drops the cell's own toggle. One click opens prose, source and
output together; a closed dropdown shows none of them. Notebooks in JupyterLab are unchanged.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform


# A solution's title in each edition: the Chinese catalogues translate "Solution N" as "参考答案 N"
# (book/glossary.md), and this transform runs after the translation.
SOLUTION_TITLES = ("Solution", "参考答案")


def _is_solution_dropdown(node: nodes.Node) -> bool:
    if not isinstance(node, nodes.admonition) or "dropdown" not in node.get("classes", []):
        return False
    titles = [child for child in node.children if isinstance(child, nodes.title)]
    return bool(titles) and titles[0].astext().strip().startswith(SOLUTION_TITLES)


def _is_hidden_input_cell(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.container) and node.get("nb_element") == "cell_code"
            and node.get("hide_mode") == "input")


class FoldSolutionCells(SphinxPostTransform):
    default_priority = 150  # before myst_nb's HideInputCells (199)
    formats = ("html",)

    def run(self, **kwargs) -> None:
        for admonition in list(self.document.findall(_is_solution_dropdown)):
            parent = admonition.parent
            if parent is None:
                continue
            while True:
                index = parent.index(admonition)
                if index + 1 >= len(parent.children):
                    break
                cell = parent.children[index + 1]
                if not _is_hidden_input_cell(cell):
                    break
                parent.remove(cell)
                del cell["hide_mode"]
                cell["classes"] = [c for c in cell["classes"] if c != "tag_hide-input"] + ["solution-cell"]
                admonition.append(cell)


def setup(app):
    app.add_post_transform(FoldSolutionCells)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
