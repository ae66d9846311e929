"""Requests that aiohttp's HTTP parser refuses, answered like every other refusal.

aiohttp answers what it cannot parse (a request line or header line too long, too many
headers, an invalid method, target or version, a bad chunk size or Content-Length) with a
plain-text 400 that quotes part of the request, and logs a traceback for each: a peer could
fill the log with them. ``handle_error`` is the hook aiohttp's ``RequestHandler`` calls for
these answers; ours gives the API's JSON error, quotes nothing of the request, and logs one
short line. The connection is closed after it, as aiohttp does.

The parser limits each header line and their number, not their sum (up to 32 lines of 8 KiB:
256 KiB held per peer until its headers end). ``data_received`` feeds the parser in pieces
and counts what is not a body's, from one request's end of headers to the next, and refuses
a request whose header block grows past ``MAX_HEADER_BLOCK_BYTES`` with a 431.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions as bad
from aiohttp import web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import _ErrInfo

from aiobatch import wire
from aiobatch.logging import get_logger
from aiobatch.server.responses import HTTP_ERROR_TYPES, json_response

log = get_logger("aiobatch.server")

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
MAX_HEADER_BLOCK_BYTES = 32 * 1024  # a request's line and headers together (nginx's default)
# A body is fed to the parser in pieces this size: what follows its end in the same piece
# is counted as the next request's headers (a chunked body's framing too: never more).
BODY_SLICE_BYTES = 8 * 1024
TOO_MANY_HEADERS = "more than {headers} header lines"
MALFORMED = "a malformed HTTP request"
MAX_REASON = 60  # the parser's own words for a problem are this short


class HeaderBlockTooLarge(bad.BadHttpMessage):
    """A request's line and headers together are past ``MAX_HEADER_BLOCK_BYTES``."""


def parser_reason(exc: BaseException | None, *, line: int, headers: int, block: int) -> str:
    """What is wrong with a request the parser refused, without quoting it."""
    if isinstance(exc, HeaderBlockTooLarge):
        return f"the request line and header lines are longer than {block} bytes together"
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
        self._limits_told = {
            "line": max_line_size,
            "headers": max_headers,
            "block": MAX_HEADER_BLOCK_BYTES,
        }
        self._header_bytes = 0  # since the last request's headers ended (or the connection began)
        self._body: StreamReader | None = None  # the last request's body, while it arrives
        self._refused = False

    def data_received(self, data: bytes) -> None:
        # Fed to the parser in pieces, each counted as it goes, so that what a read holds
        # after one request's end (the next one's headers, pipelined) is counted too: a peer
        # holds at most about twice the limit.
        while not self._refused:
            if self._payload_parser is not None or self._upgraded:
                super().data_received(data)  # not a request's headers: aiohttp's own path
                return
            body = self._body if self._body is not None and not self._body.is_eof() else None
            size = BODY_SLICE_BYTES if body is not None else self._header_room()
            piece, data = data[:size], data[size:]
            self._feed(piece, body)
            if not data:
                return

    def _header_room(self) -> int:
        return MAX_HEADER_BLOCK_BYTES - self._header_bytes + 1  # one past it: the refusal

    def _feed(self, piece: bytes, body: StreamReader | None) -> None:
        requests = self._request_count
        before = body.total_bytes if body is not None else 0
        super().data_received(piece)
        if body is None:
            extra = len(piece)
        elif not body.is_eof():
            return  # all of it was the body's
        else:  # the body ended in it: the rest is the next request's (and a chunked body's
            extra = len(piece) - (body.total_bytes - before)  # framing: under one piece)
        if self._request_count != requests:
            # A request's headers ended in it: what followed in the same piece is not
            # counted (less than the limit).
            self._header_bytes = 0
            self._body = self._messages[-1][1] if self._messages else None
        else:
            self._header_bytes += extra
            if self._header_bytes > MAX_HEADER_BLOCK_BYTES:
                self._refuse_headers()

    def _refuse_headers(self) -> None:
        """Answer as for what the parser refuses (``handle_error``), then close."""
        self._refused = True
        exc = HeaderBlockTooLarge("header block too large")
        self._messages.append((_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD))
        self._request_count += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
        too_large = isinstance(exc, HeaderBlockTooLarge)
        log.warning(
            "request_unparsable",
            peer=request.remote or "unix",
            error=type(exc).__name__ if exc is not None else None,
            reason=reason,
        )
        status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE if too_large else HTTPStatus.BAD_REQUEST
        response = json_response(wire.error_body(HTTP_ERROR_TYPES[status], reason), status)
        response.force_close()
        return response
