"""``GET /``: a chat page for a browser, one static HTML file shipped inside the package.

Why one file with its script inline, and no build step or CDN: the server must work on a machine with no
network and no Node.js, and a reader should be able to read the whole client in one sitting. The page
streams replies from the same API every other client uses (``POST /v1/chat/completions`` with
``stream: true``, or ``ws /ws``); it has no route of its own beyond this one.

The page is public even when the API needs a key: it holds no secret, and asks for the key itself.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

#: The page's resource inside this package (``pyproject.toml`` ships it as package data).
PAGE = "static/chat.html"

#: The page loads nothing from anywhere but this server, and may not be framed by another site.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


@cache
def page_html() -> str:
    """The page's text, read once: it is part of the installed package and never changes while serving."""
    return files(__package__).joinpath(PAGE).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def chat_page() -> HTMLResponse:
    return HTMLResponse(page_html(), headers=HEADERS)


__all__ = ["PAGE", "page_html", "router"]
