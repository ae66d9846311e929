"""The log view's pages and static files, with strict headers on every one of them."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

import anyio
from aiohttp import web

from aiobatch.server.params import query

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UI_DIR = Path(__file__).parent.parent / "ui"  # the log view's pages and assets
# The pages run only their own files and talk only to this server; nothing inline.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_ui(
    app: web.Application,
    *,
    expect_handler: Callable[[web.Request], Awaitable[web.StreamResponse | None]],
) -> None:
    """The pages, the static files, and the headers they all get."""
    app.add_routes(
        [
            web.get("/ui", ui_home, expect_handler=expect_handler),
            web.get("/ui/jobs", ui_page("jobs.html"), expect_handler=expect_handler),
            web.get("/ui/jobs/{job_id}", ui_page("job.html"), expect_handler=expect_handler),
        ]
    )
    if UI_DIR.is_dir():
        app.router.add_get("/ui/static/{path:.+}", ui_static, expect_handler=expect_handler)
    app.on_response_prepare.append(ui_headers)


async def ui_static(request: web.Request) -> web.StreamResponse:
    """A file of the UI's; the JSON 404 every other unknown path gets if there is none."""
    query(request)
    path = await anyio.to_thread.run_sync(_ui_file, request.match_info["path"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


def _ui_file(relative: str) -> str | None:
    """The file at ``relative`` below UI_DIR, reached through no link; None if none is."""
    if "\0" in relative:
        return None  # no file's name; the calls below would raise
    root = os.path.realpath(UI_DIR)
    wanted = os.path.normpath(os.path.join(root, relative))
    if not wanted.startswith(root + os.sep) or os.path.realpath(wanted) != wanted:
        return None
    return wanted if os.path.isfile(wanted) else None


async def ui_home(request: web.Request) -> web.StreamResponse:
    return web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": "/ui/jobs"})


def ui_page(name: str) -> Handler:
    async def page(request: web.Request) -> web.StreamResponse:
        query(request)
        path = UI_DIR / name
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=UI_HEADERS)

    return page


async def ui_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The log view's pages and files, static ones included, get the same strict headers."""
    if request.path.startswith("/ui/") and response.status < 300:
        response.headers.update(UI_HEADERS)


EXPIRED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Link expired · aiobatch</title>
<link rel="stylesheet" href="/ui/static/style.css"></head>
<body><main class="expired"><h1>This link has expired</h1>
<p>The log-view link you opened was valid for a limited number of hours, and they are over
(or the service's links were revoked). Ask whoever sent it for a new one
(<code>aiobatch logview JOB</code>).</p></main></body></html>
"""


def expired_page() -> web.Response:
    """401 with a page that says so: what a browser shows for an expired log-view link."""
    return web.Response(
        status=HTTPStatus.UNAUTHORIZED,
        text=EXPIRED_PAGE,
        content_type="text/html",
        headers=UI_HEADERS,
    )
