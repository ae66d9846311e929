"""Malformed and hostile requests against the real server: each is a 4xx naming what is
wrong, never a 5xx, and the service answers afterwards. Raw bytes over real sockets where a
client library would refuse to send them."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anyio.abc import ByteStream
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobatch import Runtime
from aiobatch.config import ServerConfig
from aiobatch.limits import INT64_MAX
from aiobatch.server import ControlServer
from tests.integration.test_server import serving

pytestmark = pytest.mark.anyio

HEAD_END = b"\r\n\r\n"


@pytest.fixture
def sock_path() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def ended_job(
    state_dir: Path, sock_path: Path
) -> AsyncIterator[tuple[Runtime, ControlServer, str]]:
    """A server whose runtime holds one ended job (task ``t``, one instance, ``hi`` logged)."""
    config = ServerConfig(http="127.0.0.1:0", token="s3cret")
    async with serving(state_dir, sock_path, server=config) as (rt, control):
        job = await rt.submit({"name": "x", "tasks": [{"name": "t", "command": "echo hi"}]})
        await job.wait_for_completion()
        yield rt, control, job.id


async def exchange(stream: ByteStream, data: bytes, *, until_eof: bool = True) -> bytes:
    """Send ``data``, then read the answer (to the end of the connection, or of the head)."""
    await stream.send(data)
    answer = b""
    with anyio.fail_after(10):
        while until_eof or HEAD_END not in answer:
            try:
                answer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    return answer


async def raw_get(sock: Path, target: bytes) -> tuple[int, Any]:
    """``GET target`` as raw bytes over the unix socket: the status and the decoded body."""
    async with await anyio.connect_unix(str(sock)) as stream:
        answer = await exchange(
            stream, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, body = answer.partition(HEAD_END)
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def status_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


# -- numbers ----------------------------------------------------------------------------------


async def test_numbers_beyond_64_bits_or_not_ascii_are_400_naming_the_parameter(
    ended_job: tuple[Runtime, ControlServer, str], sock_path: Path
) -> None:
    _, _, job_id = ended_job
    instance = f"/v1/jobs/{job_id}/tasks/t/instances"
    log = f"{instance}/0/logs/stdout"
    too_big, arabic_three = str(2**63), "%D9%A3"  # ٣: a digit to str.isdigit
    refused = {
        f"/v1/jobs?limit={too_big}": "limit",
        f"/v1/jobs?offset={'9' * 5000}": "offset",  # past int()'s 4300 digits
        f"/v1/jobs?offset={arabic_three}": "offset",
        "/v1/jobs?limit=-5": "limit",
        f"/v1/jobs/{job_id}/history?after={too_big}": "after",
        f"/v1/jobs/{job_id}/history?limit=10001": "limit",
        f"{log}?offset={too_big}": "offset",
        f"{log}?limit={arabic_three}": "limit",
        f"{log}?offset=1e3": "offset",
        f"{instance}/{too_big}": "index",
        f"{instance}/{arabic_three}": "index",
        f"{instance}/{arabic_three}/logs/stdout": "index",
        f"{instance}/-1": "index",
    }
    answers = {target: await raw_get(sock_path, target.encode()) for target in refused}
    for target, name in refused.items():
        status, body = answers[target]
        assert status == 400, (target, body)
        assert body["error"]["type"] == "BadRequest"
        assert body["error"]["message"].startswith(f"{name}: expected an integer from "), target
    # The largest accepted numbers work: an empty answer, or not found, never a 500.
    at_the_end = await raw_get(sock_path, f"{log}?offset={INT64_MAX}&limit={INT64_MAX}".encode())
    past_every_job = await raw_get(sock_path, f"/v1/jobs?offset={INT64_MAX}".encode())
    last_index = await raw_get(sock_path, f"{instance}/{INT64_MAX}".encode())
    no_history = await raw_get(sock_path, f"/v1/jobs/{job_id}/history?after={INT64_MAX}".encode())
    assert at_the_end == (200, b"")
    assert past_every_job == no_history == (200, [])
    assert last_index[0] == 404 and last_index[1]["error"]["type"] == "InstanceNotFound"


async def test_any_text_as_a_number_is_200_or_400_never_more(
    ended_job: tuple[Runtime, ControlServer, str], sock_path: Path
) -> None:
    _, _, job_id = ended_job
    log = f"/v1/jobs/{job_id}/tasks/t/instances/0/logs/stdout"

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        st.one_of(
            st.text(max_size=30),
            st.integers(min_value=-(2**70), max_value=2**70).map(str),
        )
    )
    def check(raw: str) -> None:
        from urllib.parse import quote

        target = f"{log}?offset={quote(raw, safe='')}".encode()
        status, body = anyio.from_thread.run(raw_get, sock_path, target)
        accepted = raw.isascii() and raw.isdigit() and int(raw) <= INT64_MAX
        assert status == (200 if accepted else 400), (raw, status, body)
        if accepted:
            assert body == b"hi\n"[int(raw) :]

    await anyio.to_thread.run_sync(check)


# -- bodies and peers -------------------------------------------------------------------------


async def test_token_is_checked_before_any_body_is_read(
    ended_job: tuple[Runtime, ControlServer, str],
) -> None:
    """A POST declaring a terabyte, whose body never comes: the answer comes anyway."""
    _, control, _ = ended_job
    assert control.http_url is not None
    host, port = control.http_url.removeprefix("http://").rsplit(":", 1)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1099511627776\r\n"
    )
    answers = []
    for extra in (b"", b"Expect: 100-continue\r\n"):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            started = anyio.current_time()
            # Read to the end: the server closes the connection, not waiting for the body.
            answers.append(await exchange(stream, head + extra + b"\r\n"))
            took = anyio.current_time() - started
        assert took < 5
    for answer in answers:
        assert status_of(answer) == b"HTTP/1.1 401 Unauthorized"
        assert b"100 Continue" not in answer
        assert b'"type":"Unauthorized"' in answer


async def test_declared_length_is_checked_before_the_body_and_continue_comes_after(
    ended_job: tuple[Runtime, ControlServer, str], sock_path: Path
) -> None:
    rt, _, _ = ended_job
    spec = json.dumps({"name": "late", "tasks": [{"name": "a", "command": "true"}]}).encode()
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    async with await anyio.connect_unix(str(sock_path)) as stream:
        too_big = await exchange(stream, head + b"Content-Length: 1048577\r\n\r\n")
    async with await anyio.connect_unix(str(sock_path)) as stream:
        length = b"Content-Length: %d\r\n\r\n" % len(spec)
        go_on = await exchange(stream, head + length, until_eof=False)
        created = await exchange(stream, spec, until_eof=False)
    odd = await raw_get(sock_path, b"/v1/health")  # the service still answers
    assert status_of(too_big) == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"100 Continue" not in too_big and b'"type":"RequestTooLarge"' in too_big
    assert go_on == b"HTTP/1.1 100 Continue\r\n\r\n"  # nothing else before the body
    assert status_of(created) == b"HTTP/1.1 201 Created"
    assert odd[0] == 200
    assert [job.name for job in await rt.list_jobs()] == ["late", "x"]


async def test_malformed_bodies_and_paths_are_4xx_and_store_nothing(
    ended_job: tuple[Runtime, ControlServer, str], sock_path: Path
) -> None:
    rt, _, job_id = ended_job
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    bodies: list[tuple[str, bytes, int]] = [
        ("application/json", b"[" * 100_000, 400),
        ("application/yaml", b"[" * 100_000, 400),
        ("application/toml", b"a = " + b"[" * 100_000, 400),
        ("application/yaml", laughs.encode(), 400),  # 10**9 values once expanded
        ("application/json", b'{"name": "\xff"}', 400),
        ("application/json", b'{"name": 1e999, "tasks": []}', 400),  # no float holds it
        ("application/json", b'{"name": "x", "tasks": {"a": null}}', 422),
        ("application/json", b'{"name": "x", "tasks": [{"name": 5, "command": []}]}', 422),
        ("application/json", b"null", 422),
        ("text/yaml", b"!!python/object/apply:os.system ['true']", 400),
    ]
    answers = []
    for content_type, body, _ in bodies:
        async with await anyio.connect_unix(str(sock_path)) as stream:
            head = (
                f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            answers.append(await exchange(stream, head.encode() + body))
    async with await anyio.connect_unix(str(sock_path)) as stream:
        gzipped = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
        compressed = await exchange(stream, gzipped + b"Content-Length: 5\r\n\r\nnot z")
    paths = [
        b"/v1/jobs/%00",
        b"/v1/jobs/\xff\xfe",
        b"/v1/jobs?limit=1&limit=2",
        b"/v1/events?job=%00",
        f"/v1/jobs/{job_id}/tasks/%00".encode(),
        f"/v1/jobs/{job_id}/tasks/t/instances/0/logs/stdin".encode(),
        b"/v1/jobs/" + b"x" * 20_000,  # longer than a request line may be
    ]
    refused = [await raw_get(sock_path, path) for path in paths]
    health = await raw_get(sock_path, b"/v1/health")
    for (_, _, expected), answer in zip(bodies, answers, strict=True):
        assert status_of(answer).startswith(b"HTTP/1.1 %d " % expected), answer[:300]
    assert status_of(compressed) == b"HTTP/1.1 415 Unsupported Media Type"
    assert [status for status, _ in refused] == [400, 400, 400, 400, 400, 404, 400]
    assert refused[2][1]["error"]["message"] == "limit: given more than once"
    assert health[0] == 200
    assert [job.id for job in await rt.list_jobs()] == [job_id]


async def test_head_of_a_stream_is_its_headers_alone(
    ended_job: tuple[Runtime, ControlServer, str], sock_path: Path
) -> None:
    """The next request on the connection is answered intact: no body came before it."""
    _, _, job_id = ended_job
    log = f"/v1/jobs/{job_id}/tasks/t/instances/0/logs/stdout"
    heads = {}
    for target in (log, log + "?follow=1", f"/v1/events?job={job_id}"):
        async with await anyio.connect_unix(str(sock_path)) as stream:
            then = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            head = f"HEAD {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            answer = await exchange(stream, head + then)
        first, _, rest = answer.partition(HEAD_END)
        heads[target] = first.split(b"\r\n")[0], rest.split(b"\r\n")[0]
    assert set(heads.values()) == {(b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK")}
