"""Requests that aiohttp's HTTP parser refuses, answered like every other refusal.

aiohttp answers what it cannot parse (a request line or header line too long, too many
headers, an invalid method, target or version, a bad chunk size or Content-Length) with a
plain-text 400 that quotes part of the request, and logs a traceback for each: a peer could
fill the log with them. ``handle_error`` is the hook aiohttp's ``RequestHandler`` calls for
these answers; ours gives the API's JSON error, quotes nothing of the request, and logs one
short line. The connection is closed after it, as aiohttp does.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import http_exceptions as bad
from aiohttp import web

from aiobatch import wire
from aiobatch.server.responses import json_response

log = structlog.get_logger("aiobatch.server")

# What each parser error means, in words that quote nothing of the request (most specific
# class first: BadHttpMethod is a BadStatusLine, every one is a BadHttpMessage).
REASONS: tuple[tuple[type[bad.HttpProcessingError], str], ...] = (
    (bad.LineTooLong, "a request line or header line is longer than {line} bytes"),
    (bad.BadHttpMethod, "the request line has an invalid method"),
    (bad.BadStatusLine, "the request line is invalid (method, target or HTTP version)"),
    (bad.InvalidURLError, "the request target is invalid"),
    (bad.InvalidHeader, "a header line is invalid"),
    (bad.TransferEncodingError, "the chunked body is invalid (a chunk size or its framing)"),
    (bad.ContentLengthError, "the body does not match its Content-Length"),
    (bad.PayloadEncodingError, "the body is invalid"),
)
TOO_MANY_HEADERS = "more than {headers} header lines"
MALFORMED = "a malformed HTTP request"
MAX_REASON = 60  # the parser's own words for a problem are this short


def parser_reason(exc: BaseException | None, *, line: int, headers: int) -> str:
    """What is wrong with a request the parser refused, without quoting it."""
    if type(exc) is bad.BadHttpMessage:
        if exc.message.startswith("Too many headers"):
            return TOO_MANY_HEADERS.format(headers=headers)
        # The C parser says "<what>:\n\n  <the bytes>\n  ^": its first line alone is ours.
        what, quoted, _ = exc.message.partition(":\n")
        if quoted and len(what) <= MAX_REASON and what.isprintable():
            return what[:1].lower() + what[1:]
        return MALFORMED
    for kind, reason in REASONS:
        if isinstance(exc, kind):
            return reason.format(line=line)
    return MALFORMED


class QuietRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, with its answer to unparsable requests."""

    def __init__(
        self, manager: web.Server, *, max_line_size: int, max_headers: int, **options: Any
    ) -> None:
        super().__init__(manager, max_line_size=max_line_size, max_headers=max_headers, **options)
        self._limits_told = {"line": max_line_size, "headers": max_headers}

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != HTTPStatus.BAD_REQUEST:  # a handler's failure: aiohttp's own answer
            return super().handle_error(request, status, exc, message)
        reason = parser_reason(exc, **self._limits_told)
        log.warning(
            "request_unparsable",
            peer=request.remote or "unix",
            error=type(exc).__name__ if exc is not None else None,
            reason=reason,
        )
        response = json_response(wire.error_body("BadRequest", reason), HTTPStatus.BAD_REQUEST)
        response.force_close()
        return response
