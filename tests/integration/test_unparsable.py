"""Requests that the HTTP parser itself refuses, sent as raw bytes to the real ``aiobatch
serve``: each is the API's JSON 400 that quotes nothing of the request, its connection is
closed, the service logs one short line for it (no traceback), and it answers afterwards."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aiobatch.server.limits import MAX_HEADERS, MAX_LINE_BYTES
from aiobatch.server.protocol import MAX_HEADER_BLOCK_BYTES
from tests.integration.service import Service

pytestmark = pytest.mark.anyio

MARK = b"HOSTILE"  # in every request: no answer or log line may quote it
HEAD_END = b"\r\n\r\n"
LONG = MARK * (MAX_LINE_BYTES // len(MARK) + 1)
MALFORMED = {  # request: what the answer says is wrong
    b"GET /v1/" + LONG + b" HTTP/1.1\r\nHost: x\r\n\r\n": f"longer than {MAX_LINE_BYTES} bytes",
    b"GET /v1/health HTTP/1.1\r\nX-A: " + LONG + b"\r\n\r\n": f"longer than {MAX_LINE_BYTES}",
    b"GET /v1/health HTTP/1.1\r\n"
    + b"".join(b"X-%d: %s\r\n" % (i, MARK) for i in range(MAX_HEADERS + 1))
    + b"\r\n": f"more than {MAX_HEADERS} header lines",
    b"G\x01" + MARK + b" /v1/health HTTP/1.1\r\nHost: x\r\n\r\n": "invalid method",
    b"GET /v1/health HTTP/9." + MARK + b"\r\nHost: x\r\n\r\n": "HTTP version",
    b"GET /v1/health HTTP/1.1\r\n" + MARK + b"\r\n\r\n": "invalid header token",
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n" + MARK + b"\r\n{}\r\n0\r\n\r\n": "chunk size",
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1"
    + MARK
    + b"\r\n\r\n{}": "Content-Length",
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}" + MARK: "duplicate Content-Length",
}


@pytest.fixture
async def service(state_dir: Path) -> AsyncIterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))  # short: sockets have 107 bytes
    service = Service(root, state_dir, log=root / "service.log")
    try:
        await service.start()
        yield service
    finally:
        await service.close()
        service.clean_up()
        shutil.rmtree(root, ignore_errors=True)


async def exchange(sock: Path, data: bytes) -> bytes:
    """Send ``data`` and read until the service closes the connection (fails if it does not)."""
    async with await anyio.connect_unix(str(sock)) as stream:
        await stream.send(data)
        answer = b""
        with anyio.fail_after(10):
            while True:
                try:
                    answer += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return answer


async def test_unparsable_requests_are_json_400_closed_and_one_log_line_each(
    service: Service,
) -> None:
    for request, reason in MALFORMED.items():
        answer = await exchange(service.socket, request)  # fails unless the service closes it
        head, _, body = answer.partition(HEAD_END)
        assert head.split(b" ", 2)[1] == b"400", (reason, answer[:300])
        assert b"content-type: application/json" in head.lower(), (reason, head)
        error = json.loads(body)["error"]
        assert error["type"] == "BadRequest" and reason in error["message"], (reason, error)
        assert MARK not in answer, (reason, answer)
    async with service.client() as client:  # still answering, on the same socket
        assert (await client.health())["status"] == "ok"
        assert await client.list_jobs() == []  # nothing of the bodies was stored
    log = service.log_text()
    assert b"Traceback" not in log and b"Error handling request" not in log, log.decode()
    assert MARK not in log, log.decode()
    lines = [line for line in log.splitlines() if b"request_unparsable" in line]
    assert len(lines) == len(MALFORMED), log.decode()
    assert all(len(line) < 300 for line in lines), lines


# Each line within the line limit, fewer lines than the count limit: only their sum is too
# much. The end of the headers is never sent: the limit holds before it.
BLOCK_LINES = MAX_HEADER_BLOCK_BYTES // 8000 + 1
HEADER_BLOCK = b"GET /v1/health HTTP/1.1\r\n" + b"".join(
    b"X-%d: %s\r\n" % (i, MARK * (8000 // len(MARK))) for i in range(BLOCK_LINES)
)


async def test_a_header_block_past_its_limit_is_a_json_431_and_closed(service: Service) -> None:
    assert BLOCK_LINES <= MAX_HEADERS and len(HEADER_BLOCK) > MAX_HEADER_BLOCK_BYTES
    answer = await exchange(service.socket, HEADER_BLOCK)
    head, _, body = answer.partition(HEAD_END)
    assert head.split(b" ", 2)[1] == b"431", answer[:300]
    error = json.loads(body)["error"]
    assert error["type"] == "HeadersTooLarge", error
    assert f"longer than {MAX_HEADER_BLOCK_BYTES} bytes together" in error["message"], error
    assert MARK not in answer
    log = service.log_text()
    assert b"Traceback" not in log and MARK not in log, log.decode()
    assert len([line for line in log.splitlines() if b"request_unparsable" in line]) == 1


async def test_bodies_on_a_kept_alive_connection_are_never_taken_for_headers(
    service: Service,
) -> None:
    """Large bodies, read by their handler or not (an unknown route: drained unread), sent
    whole with the next request in one write: every answer is the route's own."""
    body = b"x" * (28 * MAX_HEADER_BLOCK_BYTES)  # 896 KiB: several reads of body alone
    unread = b"POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    spec = json.dumps({"name": "j", "tasks": [{"name": "t", "command": "true"}]}).encode()
    spec += b" " * (28 * MAX_HEADER_BLOCK_BYTES)  # read and parsed: JSON allows the spaces
    read = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(spec)
    ) + spec
    health = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await exchange(service.socket, unread + body + read + unread + body + health)
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert statuses == [b"404", b"201", b"404", b"200"], answer[:600]


@pytest.mark.parametrize(
    ("before", "before_status"),
    [
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),  # a whole request
        (b"POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", b"404"),
    ],
    ids=["after-a-request", "after-a-body"],
)
async def test_a_header_block_sent_with_what_ends_a_request_is_counted_too(
    service: Service, before: bytes, before_status: bytes
) -> None:
    """What one read holds after a request's end is the next request's, and counted (less
    than the limit may go uncounted, not more): the first request gets its own answer, a
    block of twice the limit its 431."""
    lines = 2 * MAX_HEADER_BLOCK_BYTES // 8000 + 1
    block = (
        HEADER_BLOCK.split(b"\r\n", 1)[0]
        + b"\r\n"
        + b"".join(b"X-%d: %s\r\n" % (i, MARK * (8000 // len(MARK))) for i in range(lines))
    )
    assert lines <= MAX_HEADERS
    answer = await exchange(service.socket, before + block)
    statuses = re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert statuses == [before_status, b"431"], answer[:600]
