"""Request bodies: read only once the peer may send one, bounded in size and in time, and
decoded (JSON, YAML or TOML) into a job spec's mapping.

A declared length over the limit is refused before a byte of the body is read; a chunked
body is counted as it comes. ``Expect: 100-continue`` is answered here, after the peer and
the declared length were accepted, not (as aiohttp does by default) before anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import anyio
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from aiobatch import wire
from aiobatch.documents import DocumentError, load_yaml
from aiobatch.errors import SpecError
from aiobatch.server.responses import RequestError, bad_request, json_response

YAML_MAX_NODES = 100_000  # values in a YAML body counted with its aliases expanded
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """The routes' ``Expect`` handler: nothing yet (``read_body`` sends ``100 Continue``)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        body = wire.error_body("ExpectationFailed", "Expect: only 100-continue is understood")
        return json_response(body, HTTPStatus.EXPECTATION_FAILED)
    return None


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The body, at most ``limit`` bytes (else 413), all of it within ``timeout_s`` (else 408)."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":  # a compressed body is a bomb in waiting; no client sends one
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Encoding: send the body uncompressed"
        )
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(CONTINUE)
        request.writer.output_size = 0  # not part of the response proper
    body = bytearray()
    with anyio.move_on_after(timeout_s) as timer:
        try:
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
        except (RequestPayloadError, HttpProcessingError) as exc:  # a malformed chunked body
            raise bad_request(f"request body could not be read: {exc}") from None
    if timer.cancelled_caught:
        raise RequestError(
            HTTPStatus.REQUEST_TIMEOUT, f"request body not received within {timeout_s:g} s"
        )
    return bytes(body)


def too_large(limit: int) -> RequestError:
    return RequestError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body larger than {limit} bytes"
    )


async def read_spec(request: web.Request, timeout_s: float) -> Mapping[str, Any]:
    """The job spec in a request body; nothing else (a string would be taken for a path)."""
    body = await read_body(request, limit=wire.MAX_BODY_BYTES, timeout_s=timeout_s)
    if not body.strip():
        raise bad_request("empty request body: send a job spec")
    # Off the event loop: a MiB of YAML takes seconds to parse, and other requests go on.
    data = await anyio.to_thread.run_sync(parse_body, body, request.content_type)
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise SpecError([f"$: expected a mapping at the top level, got {got}"])
    return data


def parse_body(body: bytes, content_type: str) -> Any:
    try:
        if content_type in YAML_TYPES:
            return _parse_yaml(body)
        if content_type == "application/toml":
            try:
                return msgspec.toml.decode(body)
            except msgspec.DecodeError as exc:
                raise bad_request(f"body is not valid TOML: {exc}") from None
        try:  # JSON whatever the type says: `curl -d @job.json` sends it as a form
            return msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise bad_request(
                f"body is not valid JSON: {exc} (for YAML, send Content-Type: application/yaml)"
            ) from None
    except RecursionError:
        raise bad_request("body is nested too deeply") from None


def _parse_yaml(body: bytes) -> Any:
    import yaml  # only YAML bodies pay for importing PyYAML

    try:
        # The spec files' loader: aliases weighed before any object is made of them, an
        # alias inside itself refused. A body is then held to a tighter count of values.
        data = load_yaml(body)
    except yaml.YAMLError as exc:
        raise bad_request(f"body is not valid YAML: {exc}") from None
    except DocumentError as exc:
        raise bad_request(f"body is not acceptable YAML: {exc}") from None
    if _expanded_size(data, YAML_MAX_NODES) > YAML_MAX_NODES:
        # Aliases of aliases: a few bytes that every later step would walk a billion times.
        raise bad_request(f"body has more than {YAML_MAX_NODES} values with aliases expanded")
    return data


def _expanded_size(data: Any, budget: int) -> int:
    """How many values ``data`` holds, shared ones counted each time (stops past ``budget``)."""
    count, todo = 1, [data]
    while todo and count <= budget:
        value = todo.pop()
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        else:
            continue
        count += len(children)  # counted as they are queued: the queue stays within budget
        if count <= budget:
            todo.extend(children)
    return count
