"""The chat page at ``/``: served from the package, and driven in a real browser against ``corolab serve``.

The first tests read the page as text: it must load nothing from elsewhere and never put model text in as
markup. The browser tests start ``corolab serve --model fake:0.05`` (each model step takes 50 ms, so a reply
visibly grows token by token), open the page in headless Chromium, type a question and watch the reply,
over SSE and over the websocket. Then a long reply and the Stop button: the page stops, and the server's
``/metrics`` say the request ended well short of its length (and, for the websocket, as a 499).
Last, the same page served from another origin reaches a server started with ``--cors-origin`` for it, and
cannot read a server started without.

What the page showed is recorded in the page itself, by a ``MutationObserver`` on the conversation: every
text the reply took, in order, however fast it changed. Polling from the test would miss states.

The browser tests skip, naming what is missing, only where ``chromium`` or ``chromedriver`` is absent
(Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from corolab.serving.server.page import HEADERS, page_html
from corolab.teach.background import BackgroundServer
from headless import chromium_missing, serve_folder, start_chromium

STEP = 0.05                               # seconds per fake model step: --model fake:0.05
LONG = "Tell me everything about the sea. " * 10   # the fake model echoes it: far more than the 256-token default


# -- the page as text -----------------------------------------------------------------------------------------

def test_the_page_loads_nothing_from_elsewhere_and_never_writes_markup() -> None:
    html = page_html()
    assert re.findall(r"\b(?:src|href)\s*=", html) == []           # no scripts, styles or images to fetch
    assert "https://" not in html and "http://" not in html           # no CDN, no hard-coded server
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    assert not re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    assert "textContent" in script


def test_the_server_serves_the_page_at_the_root() -> None:
    with BackgroundServer(model="fake") as server:
        page = httpx.get(server.url + "/")
        metrics = httpx.get(server.url + "/metrics").text
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.text == page_html()
    assert all(page.headers[name] == value for name, value in HEADERS.items())
    assert 'corolab_http_requests_total{endpoint="page",status="200"} 1.0' in metrics


# -- a real browser -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[BackgroundServer]:
    with BackgroundServer(model=f"fake:{STEP}") as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), window="1000,800")
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.02).until(condition)


def _state(driver) -> str:
    return driver.find_element("id", "status").get_attribute("data-state")


RECORD = """
window.seen = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('.answer');
  const text = answers.length ? answers[answers.length - 1].textContent : null;
  if (text && text !== window.seen[window.seen.length - 1]) window.seen.push(text);
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


def _open(driver, server: BackgroundServer, transport: str) -> None:
    driver.get(server.url + "/")
    _wait(driver, lambda d: _state(d) == "ready")
    driver.find_element("css selector", f"input[name=transport][value={transport}]").click()
    driver.execute_script(RECORD)


def _ask(driver, question: str) -> None:
    driver.find_element("id", "question").send_keys(question)
    driver.find_element("id", "send").click()


def _seen(driver) -> list[str]:
    return driver.execute_script("return window.seen")


def _answers(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.answer')].map(a => a.textContent)")


def _last_answer(driver) -> str:
    return _answers(driver)[-1]


def _metric(server: BackgroundServer, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    text = httpx.get(server.url + "/metrics").text
    found = re.search(rf"^{re.escape(name)}{re.escape('{' + want + '}') if labels else ''} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _until(condition, timeout: float = 15.0) -> None:
    """Wait on the server, another process: its /metrics are all there is to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.02)


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_reply_streams_into_the_page(browser, server: BackgroundServer, transport: str) -> None:
    _open(browser, server, transport)
    question = f"Hello over {transport}, how are you today?"
    _ask(browser, question)
    _wait(browser, lambda d: _state(d) in ("done", "error"))
    assert _state(browser) == "done", browser.find_element("id", "status").text
    seen = _seen(browser)
    assert seen[-1] == _last_answer(browser) == f"You said: {question}"
    # it grew in steps, each a longer prefix of the reply: streamed, not shown at the end in one piece
    assert len(seen) >= 5, seen
    assert all(earlier == later[:len(earlier)] and len(earlier) < len(later) for earlier, later in zip(seen, seen[1:]))


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_stop_ends_the_reply_and_the_request(browser, server: BackgroundServer, transport: str) -> None:
    _open(browser, server, transport)
    tokens_before = _metric(server, "corolab_generated_tokens_total")
    finished_before = _metric(server, "corolab_requests_finished_total")
    hangups_before = _metric(server, "corolab_http_requests_total", endpoint="ws_glm", status="499")
    _ask(browser, LONG)
    _wait(browser, lambda d: len(d.execute_script("return window.seen")) >= 5)
    browser.find_element("id", "stop").click()
    _wait(browser, lambda d: _state(d) != "streaming")
    assert _state(browser) == "stopped", browser.find_element("id", "status").text
    shown = _last_answer(browser)
    assert shown and f"You said: {LONG}".startswith(shown)

    # the server withdrew the request: nothing runs, and it generated a fraction of the 256-token reply
    _until(lambda: _metric(server, "corolab_requests_finished_total") == finished_before + 1
           and _metric(server, "corolab_requests_running") == 0)
    generated = _metric(server, "corolab_generated_tokens_total") - tokens_before
    assert len(shown) <= generated < 256, (len(shown), generated)   # withdrawn before its end
    if transport == "ws":  # a websocket's hang-up mid-reply is counted as nginx's "client closed request",
        # once the handler has seen the close: that may come a moment after the engine withdrew the request
        _until(lambda: _metric(server, "corolab_http_requests_total", endpoint="ws_glm", status="499")
               == hangups_before + 1)

    # the page goes on: the next question streams, and the stopped reply did not grow meanwhile
    _ask(browser, "And now?")
    _wait(browser, lambda d: _state(d) in ("done", "error"))
    assert _state(browser) == "done" and _last_answer(browser) == "You said: And now?"
    assert _answers(browser)[-2] == shown


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same page served by another origin (a plain static file server on its own port)."""
    folder = tmp_path_factory.mktemp("elsewhere")
    (folder / "chat.html").write_text(page_html(), encoding="utf-8")
    with serve_folder(folder) as url:
        yield url


def _point_at(driver, url: str) -> None:
    field = driver.find_element("id", "server")
    field.clear()
    field.send_keys(url)
    driver.execute_script("document.getElementById('server').dispatchEvent(new Event('change'))")


def test_a_page_served_elsewhere_needs_cors(browser, server: BackgroundServer, elsewhere: str) -> None:
    with BackgroundServer(model=f"fake:{STEP}", args=["--cors-origin", elsewhere]) as open_to_it:
        browser.get(elsewhere + "/chat.html")
        _point_at(browser, open_to_it.url)
        _wait(browser, lambda d: _state(d) == "ready")
        _ask(browser, "Hello from another origin")
        _wait(browser, lambda d: _state(d) in ("done", "error"))
        assert _state(browser) == "done" and _last_answer(browser) == "You said: Hello from another origin"

    # the module's server has no --cors-origin: the browser does not let the page read its answers
    _point_at(browser, server.url)
    _wait(browser, lambda d: _state(d) in ("ready", "key", "error"))    # connect() ends in one of these
    assert _state(browser) == "error" and "cannot reach" in browser.find_element("id", "status").text
