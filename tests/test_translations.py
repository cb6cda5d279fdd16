"""The Chinese edition (中文版): every message of every page translated, and the built edition what it says.

Catalogues (no build needed): the English pages' messages are extracted afresh (Sphinx's gettext builder, no
execution, a few seconds) and each must have a translation in locale/zh_CN that is not fuzzy and keeps the
English's code spans, role and link targets, and math (scripts/translations.py). So an English edit whose
translation was not redone fails here, by name.

The built edition (after scripts/build-book.sh): it executed no notebook, every page has Chinese headings,
the theme speaks Chinese, search knows Chinese words, solutions fold as in English, and every page links to
the same page in the other edition. The browser test (tests/test_book_browser.py) follows those links.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCALE = ROOT / "locale" / "zh_CN" / "LC_MESSAGES"
HTML = ROOT / "_build" / "html"
ZH = HTML / "zh"
CJK = re.compile(r"[\u4e00-\u9fff]")

spec = importlib.util.spec_from_file_location("translations", ROOT / "scripts" / "translations.py")
translations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(translations)


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Path:
    """Every page's messages as the English text has them now (.pot files), extracted without executing."""
    out = tmp_path_factory.mktemp("gettext")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    conf = subprocess.run(["bash", "scripts/sphinx-conf.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                          check=True).stdout.strip()
    build = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "gettext", "-c", conf,
                            "-d", str(out / ".doctrees"), "-D", "nb_execution_mode=off", ".", str(out / "pot")],
                           cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    return out / "pot"


def _pages(templates: Path) -> list[str]:
    return sorted(str(p.relative_to(templates).with_suffix("")) for p in templates.rglob("*.pot"))


def test_every_page_of_the_book_has_a_catalogue(templates):
    pages = _pages(templates)
    assert len(pages) >= 60 and "book/glossary" in pages and "labs/index" in pages
    missing = [p for p in pages if not (LOCALE / f"{p}.po").is_file()]
    assert not missing, f"no catalogue for {missing}: run bash scripts/update-translations.sh, then translate"


def test_every_message_is_translated_and_none_is_fuzzy(templates):
    from babel.messages.pofile import read_po

    stale = []
    for page in _pages(templates):
        with open(templates / f"{page}.pot", "rb") as f:
            wanted = [m.id for m in read_po(f) if m.id]
        po = LOCALE / f"{page}.po"
        with open(po, "rb") as f:
            have = {m.id: m for m in read_po(f) if m.id}
        for english in wanted:
            message = have.get(english)
            if message is None or not message.string or message.fuzzy:
                stale.append(f"{page}: {english[:70]!r}")
    total = sum(1 for _ in templates.rglob("*.pot"))
    assert not stale, (f"{len(stale)} message(s) untranslated or out of date in {total} pages "
                       "(bash scripts/update-translations.sh, then python scripts/translations.py list FILE.po):\n"
                       + "\n".join(stale[:40]))


def test_translations_keep_code_links_and_math():
    problems = [p for po in sorted(LOCALE.rglob("*.po")) for p in translations.problems(po)]
    assert not problems, "\n".join(problems[:40])


def test_the_check_catches_a_changed_code_span_and_a_fuzzy_message(tmp_path):
    po = tmp_path / "page.po"
    po.write_text('msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                  'msgid "Call `send(None)` first, see {doc}`the lab <../labs/index>`."\n'
                  'msgstr "先调用 `send()`，见{doc}`实验 <../labs/index>`。"\n\n'
                  '#, fuzzy\nmsgid "Old text."\nmsgstr "旧文本。"\n\n'
                  'msgid "Untranslated."\nmsgstr ""\n\n'
                  'msgid "1. Blocking the loop"\nmsgstr "1. 阻塞事件循环"\n\n'
                  'msgid "**Duration.** Hours."\nmsgstr "**时长。**几小时。"\n\n'
                  'msgid "**Duration.** Hours, *here*."\nmsgstr "**时长**。几小时，*这里*。"\n', encoding="utf-8")
    found = translations.problems(po)
    assert len(found) == 5
    assert "send(None)" in found[0] and "fuzzy" in found[1] and "not translated" in found[2]
    assert "list marker" in found[3] and "does not close" in found[4]


# --- the built Chinese edition ------------------------------------------------------------------------------

def _built() -> None:
    if not (ZH / "book" / "index.html").exists():
        reason = "the Chinese edition is not built: run scripts/build-book.sh first"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _chinese_pages() -> list[Path]:
    return sorted(p for p in ZH.rglob("*.html") if not {"_static", "_sources", "_images"} & set(p.parts)
                  and p.name not in {"search.html", "genindex.html"} and p.parent != ZH)


def _notebook_pages() -> list[str]:
    """The pages in the table of contents that are notebooks (front matter with a kernelspec)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if "\nkernelspec:" in (ROOT / f"{f}.md").read_text(encoding="utf-8").split("\n---", 1)[0]]


def test_the_chinese_build_executed_nothing():
    _built()
    log = (ROOT / "_build" / "zh-build.log").read_text(encoding="utf-8")
    assert "Executing notebook" not in log
    # scripts/build-zh.sh reads every page afresh (-E), so every notebook page says where its outputs came from
    assert log.count("Using cached notebook") == len(_notebook_pages()) > 50


def test_every_chinese_page_has_chinese_headings():
    from bs4 import BeautifulSoup

    _built()
    pages = _chinese_pages()
    assert len(pages) >= 60
    for page in pages:
        soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
        assert soup.html.get("lang") == "zh-CN", page
        headings = [h.get_text() for h in soup.select("article h1, article h2, main h1, main h2")]
        assert headings and any(CJK.search(h) for h in headings), f"{page}: {headings[:3]}"


def test_the_theme_speaks_chinese_and_search_knows_chinese_words():
    _built()
    page = (ZH / "book" / "part1-generators" / "01-iteration.html").read_text(encoding="utf-8")
    assert "搜索" in page                               # the theme's own strings (search box, buttons)
    index = (ZH / "searchindex.js").read_text(encoding="utf-8")
    terms = json.loads(index[index.index("(") + 1:index.rindex(")")])["terms"]
    assert {"生成器", "协程", "循环", "调度"} <= set(terms)  # jieba split the Chinese text into words
    titles = json.loads(index[index.index("(") + 1:index.rindex(")")])["alltitles"]
    english = [t for t in titles if re.search("[A-Za-z]{4,} [a-z]{3,}", t) and not CJK.search(t)
               and not re.search("[“”\"`]", t)]  # a quoted message stays as the program prints it
    assert not english, f"titles left in English (a translation Sphinx could not use?): {english[:5]}"


def test_the_sidebar_names_the_parts_in_chinese():
    from bs4 import BeautifulSoup

    _built()
    page = ZH / "book" / "part2-classic-coroutines" / "05-scheduler.html"
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    captions = [c.get_text(strip=True) for c in soup.select("nav p.caption, nav .caption-text")]
    assert captions, "no part captions in the sidebar"
    assert not [c for c in captions if c.startswith("Part ")], captions
    assert any(c.startswith("第一部分") for c in captions), captions


def test_solutions_fold_in_chinese_as_in_english():
    from test_fold_solutions import check_page

    _built()
    for page in ("book/part1-generators/01-iteration.html", "book/part2-classic-coroutines/05-scheduler.html"):
        english = check_page((HTML / page).read_text(encoding="utf-8"), page)
        chinese = check_page((ZH / page).read_text(encoding="utf-8"), f"zh/{page}")
        assert chinese == english > 0, page


def test_every_page_links_to_the_same_page_in_the_other_edition():
    from bs4 import BeautifulSoup

    _built()
    for page in _chinese_pages():
        relative = page.relative_to(ZH)
        for here, there in ((page, HTML / relative), (HTML / relative, page)):
            soup = BeautifulSoup(here.read_text(encoding="utf-8"), "html.parser")
            link = soup.select_one("p.edition-switch a")
            assert link is not None, here
            assert (here.parent / link["href"]).resolve() == there.resolve(), (here, link["href"])
