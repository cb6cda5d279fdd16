"""A real browser reads the built book: executed output, search, next-chapter navigation, and the Chinese
edition (its headings, its search, and the switch between the two editions).

The book is built by ``scripts/build-book.sh`` (``scripts/test.sh`` does it before pytest). This test
serves ``_build/html`` on 127.0.0.1 and drives headless Chromium through it, because what matters is what a
reader sees, not what Sphinx wrote to disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from headless import chromium_missing, serve_folder, start_chromium

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
FIRST_CHAPTER = "book/part1-generators/01-iteration.html"
SECOND_CHAPTER = "book/part1-generators/02-generator-functions.html"

pytestmark = pytest.mark.book


def _missing_reason() -> str | None:
    if not (HTML / "index.html").exists():
        return "the book is not built: run scripts/build-book.sh first"
    return chromium_missing()


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    reason = _missing_reason()
    if reason:
        if os.environ.get("CI") and "not built" in reason:
            pytest.fail(reason)
        pytest.skip(reason)
    with serve_folder(HTML) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, site: str):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def test_index_lists_the_parts(browser, site: str) -> None:
    browser.get(f"{site}/index.html")  # a redirect page to book/index.html: wait until it has landed
    _wait(browser, lambda d: d.current_url.endswith("book/index.html") and "Part II" in d.find_element("tag name", "body").text)
    text = browser.find_element("tag name", "body").text
    assert "Part I" in text and "Part II" in text


def test_chapter_shows_executed_cell_output(browser, site: str) -> None:
    browser.get(f"{site}/{FIRST_CHAPTER}")
    outputs = browser.find_elements("css selector", "div.cell_output")
    shown = [o.text.strip() for o in outputs if o.text.strip()]
    assert shown, "no executed cell output is visible on the chapter page"


def _search(browser, url: str) -> list[str]:
    """The result links the search page lists for the query in ``url``, once it has listed some."""
    browser.get(url)

    def results(driver):
        items = driver.find_elements("css selector", "#search-results li, ul.search li")
        return items or False

    return [i.find_element("tag name", "a").get_attribute("href") for i in _wait(browser, results)]


def test_search_finds_a_chapter(browser, site: str) -> None:
    links = _search(browser, f"{site}/search.html?q=StopIteration")
    assert any("part1-generators" in href for href in links), links


def test_next_link_navigates_to_the_next_chapter(browser, site: str) -> None:
    browser.get(f"{site}/{FIRST_CHAPTER}")
    nxt = browser.find_element("css selector", "a.right-next")
    browser.execute_script("arguments[0].scrollIntoView();", nxt)
    browser.execute_script("arguments[0].click();", nxt)
    _wait(browser, lambda d: d.current_url.endswith(SECOND_CHAPTER))
    assert browser.find_elements("css selector", "h1")


def _click(browser, css: str) -> None:
    element = browser.find_element("css selector", css)
    browser.execute_script("arguments[0].scrollIntoView();", element)
    browser.execute_script("arguments[0].click();", element)


def _heading(browser) -> str:
    return _wait(browser, lambda d: d.find_element("css selector", "article h1").text.strip() or False)


def test_a_chinese_page_switches_to_english_and_back(browser, site: str) -> None:
    browser.get(f"{site}/zh/{FIRST_CHAPTER}")
    heading = _heading(browser)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in heading), heading
    _click(browser, "p.edition-switch a")
    _wait(browser, lambda d: d.current_url == f"{site}/{FIRST_CHAPTER}")
    assert "iteration" in _heading(browser).lower()
    _click(browser, "p.edition-switch a")
    _wait(browser, lambda d: d.current_url == f"{site}/zh/{FIRST_CHAPTER}")
    assert _heading(browser) == heading


def test_chinese_search_finds_a_chapter(browser, site: str) -> None:
    links = _search(browser, f"{site}/zh/search.html?q=生成器")
    assert any("/zh/book/part1-generators" in href for href in links), links
