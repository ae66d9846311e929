"""JSON answers: results, and every refusal or failure as ``{"error": {"type", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from aiobatch import wire
from aiobatch.errors import AiobatchError
from aiobatch.logging import get_logger

log = get_logger("aiobatch.server")

HTTP_ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "BadRequest",
    HTTPStatus.UNAUTHORIZED: "Unauthorized",
    HTTPStatus.FORBIDDEN: "Forbidden",
    HTTPStatus.NOT_FOUND: "NotFound",
    HTTPStatus.METHOD_NOT_ALLOWED: "MethodNotAllowed",
    HTTPStatus.REQUEST_TIMEOUT: "RequestTimeout",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RequestTooLarge",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "UnsupportedMediaType",
    HTTPStatus.EXPECTATION_FAILED: "ExpectationFailed",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "HeadersTooLarge",
}


class RequestError(Exception):
    """A request refused at the edge, before the API is called."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        self.status, self.message, self.headers = status, message, headers
        super().__init__(message)


def bad_request(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


def json_response(
    body: Any, status: int = HTTPStatus.OK, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=wire.encoder.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: BaseException, request: web.BaseRequest) -> web.Response:
    """The JSON error for anything a handler raised. Never a traceback."""
    if isinstance(exc, RequestError):
        body = wire.error_body(HTTP_ERROR_TYPES[HTTPStatus(exc.status)], exc.message)
        return json_response(body, exc.status, exc.headers)
    if isinstance(exc, web.HTTPException):
        return http_error_response(exc, request)
    if isinstance(exc, AiobatchError) and (mapped := wire.error_response(exc)) is not None:
        return json_response(mapped[1], mapped[0])
    log.error("request_failed", method=request.method, path=request.path, exc_info=exc)
    body = wire.error_body("InternalError", "internal error; the service log has the details")
    return json_response(body, HTTPStatus.INTERNAL_SERVER_ERROR)


def http_error_response(exc: web.HTTPException, request: web.BaseRequest) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as JSON errors."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == HTTPStatus.NOT_FOUND:
        message = f"no such endpoint: {request.method} {printable(request.path)}"
    elif exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = exc.headers.get("Allow", "")
        message = (
            f"{request.method} is not allowed on {printable(request.path)} (allowed: {allowed})"
        )
    elif exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        message = f"request body larger than {wire.MAX_BODY_BYTES} bytes"
    else:
        message = exc.text or exc.reason
    kind = HTTP_ERROR_TYPES.get(HTTPStatus(exc.status), exc.reason.replace(" ", ""))
    return json_response(wire.error_body(kind, message), exc.status, headers)


def printable(text: str, limit: int = 200) -> str:
    """``text`` as an error message may quote it: bounded, and valid UTF-8 (a path that was
    not decodes to lone surrogates, which no encoder takes)."""
    clipped = text[:limit] + ("..." if len(text) > limit else "")
    return clipped.encode("utf-8", "backslashreplace").decode("utf-8")
