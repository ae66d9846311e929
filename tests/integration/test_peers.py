"""Idle and slow peers cannot take the service's file descriptors: a limit of connections per
listener (the excess closed at once), a time limit for a request's headers and for an idle
keep-alive connection, on the TCP listener and the unix socket. Real sockets throughout;
the service itself is the real ``aiobatch serve`` where it counts."""

from __future__ import annotations

import os
import resource
import select
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ServerConfig
from aiobatch.server import ControlServer, Limits
from aiobatch.server.limits import MAX_CONNECTIONS
from tests.helpers import Gates
from tests.integration.service import Service

pytestmark = pytest.mark.anyio

PEERS = 2_500
HALF_A_REQUEST = b"GET /v1/hea"
QUICK = {"name": "other", "tasks": [{"name": "t", "command": "true"}]}


@pytest.fixture
def sock_path() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def connect_peers(port: int, count: int) -> list[socket.socket]:
    """``count`` TCP peers that each send half a request line, then nothing; from 100
    loopback addresses, each within its share of the listener."""
    peers = []
    try:
        for index in range(count):
            source = (f"127.0.1.{index % 100 + 1}", 0)
            peer = socket.create_connection(("127.0.0.1", port), 10, source)
            peers.append(peer)
            peer.sendall(HALF_A_REQUEST)
    except BaseException:
        close_all(peers)
        raise
    return peers


def closed_by_the_server(peers: list[socket.socket], within_s: float) -> int:
    """How many of ``peers`` see their connection end (EOF or reset) within ``within_s``."""
    pending = {peer.fileno(): peer for peer in peers}
    ended = 0
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + within_s
    while pending and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            peer = pending.pop(fd)
            poller.unregister(fd)
            try:
                data = peer.recv(1)
            except ConnectionResetError:
                data = b""
            ended += data == b""
    return ended


def close_all(peers: list[socket.socket]) -> None:
    for peer in peers:
        peer.close()


@pytest.mark.slow
async def test_thousands_of_idle_peers_leave_the_service_its_files_and_its_socket(
    service: Service, tmp_path: Path
) -> None:
    service.config.write_text('[server]\nhttp = "127.0.0.1:0"\ntoken = "t0k3n"\n')
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # as systemd gives it
    try:
        await service.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert service.process is not None
    pid = service.process.pid
    gates = Gates(tmp_path / "gates", 1)
    async with service.client() as client:
        port = int((await client.health())["server"]["http"].rsplit(":", 1)[1])
        running = await client.submit(
            {"name": "busy", "tasks": [{"name": "t", "command": gates.command}]}
        )
        before = open_files(pid)
        peers = await anyio.to_thread.run_sync(connect_peers, port, PEERS)
        try:
            # The excess is closed at once; those within the limit are kept (for now).
            refused = await anyio.to_thread.run_sync(closed_by_the_server, peers, 3.0)
            during = open_files(pid)
            health = await client.health()  # over the unix socket, as everything here
            other = await client.submit(
                {"name": "other", "tasks": [{"name": "t", "command": "true"}]}
            )
            other_done = await other.wait_for_completion()
            await gates.release(0)
            running_done = await running.wait_for_completion()
        finally:
            close_all(peers)
    tcp = health["server"]["connections"]["tcp"]
    assert open_files_limit(pid) == (hard, hard)  # raised from 1024 at start
    assert tcp["limit"] == MAX_CONNECTIONS and tcp["open"] == MAX_CONNECTIONS
    assert refused == tcp["refused"] == PEERS - MAX_CONNECTIONS
    assert during - before <= MAX_CONNECTIONS + 16, (before, during)
    assert other_done.status == running_done.status == "SUCCEEDED"


async def test_a_peer_without_complete_headers_is_closed_after_the_header_timeout(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    limits = Limits(connections=8, header_timeout_s=0.5, idle_timeout_s=1.0)
    config = ServerConfig(http="127.0.0.1:0", token="t0k3n")
    gates = Gates(tmp_path / "gates", 1)
    spec = {"name": "long", "tasks": [{"name": "t", "command": gates.command}]}
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, config, socket=sock_path, limits=limits) as control,
    ):
        job = await rt.submit(spec)
        assert control.http_url is not None
        host, port = control.http_url.removeprefix("http://").rsplit(":", 1)
        streams = {
            "tcp": await anyio.connect_tcp(host, int(port)),
            "unix": await anyio.connect_unix(str(sock_path)),
            "idle": await anyio.connect_unix(str(sock_path)),
            "waiting": await anyio.connect_unix(str(sock_path)),
        }
        await streams["tcp"].send(HALF_A_REQUEST)
        await streams["unix"].send(HALF_A_REQUEST)
        await streams["idle"].send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await streams["waiting"].send(
            f"GET /v1/jobs/{job.id}/wait HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        lasted: dict[str, float] = {}
        answers: dict[str, bytes] = {}

        async def until_closed(name: str) -> None:
            started, data = anyio.current_time(), b""
            with anyio.fail_after(10):
                while True:
                    try:
                        data += await streams[name].receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            lasted[name], answers[name] = anyio.current_time() - started, data

        async with anyio.create_task_group() as tg:
            for name in ("tcp", "unix", "idle"):
                tg.start_soon(until_closed, name)
        # The wait is a request in progress: no timeout ends it; the job's end does.
        statistics = control.statistics()["connections"]
        await gates.release(0)
        waited = b""
        with anyio.fail_after(20):
            while b'"status":"SUCCEEDED"' not in waited:
                waited += await streams["waiting"].receive()
        for stream in streams.values():
            await stream.aclose()
    assert 0.4 <= lasted["tcp"] < 3 and 0.4 <= lasted["unix"] < 3
    assert answers["tcp"] == answers["unix"] == b""  # closed, not answered
    assert answers["idle"].startswith(b"HTTP/1.1 200 OK") and 0.9 <= lasted["idle"] < 4
    assert statistics["tcp"]["timed_out"] == 1 and statistics["unix"]["timed_out"] == 2
    assert waited.startswith(b"HTTP/1.1 200 OK")


async def test_a_full_listener_closes_new_peers_at_once_and_takes_them_again_later(
    state_dir: Path, sock_path: Path
) -> None:
    limits = Limits(connections=3)
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, socket=sock_path, limits=limits) as control,
    ):
        held = [await anyio.connect_unix(str(sock_path)) for _ in range(3)]
        extra = await anyio.connect_unix(str(sock_path))
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await extra.receive()
        await extra.aclose()
        await held.pop().aclose()
        with anyio.fail_after(5):  # the server's count is the only sign that it saw the close
            while control.statistics()["connections"]["unix"]["open"] != 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        again = await anyio.connect_unix(str(sock_path))
        await again.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_to_the_end(again)
        await again.aclose()
        for stream in held:
            await stream.aclose()
        refused = control.statistics()["connections"]["unix"]["refused"]
    assert answer.startswith(b"HTTP/1.1 200 OK") and refused == 1


async def test_a_body_that_does_not_come_in_time_is_408_and_nothing_is_stored(
    state_dir: Path, sock_path: Path
) -> None:
    limits = Limits(body_timeout_s=0.5)
    spec = b'{"name": "slow", "tasks": [{"name": "t", "command": "true"}]}'
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, socket=sock_path, limits=limits),
        await anyio.connect_unix(str(sock_path)) as stream,
    ):
        head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(spec)
        await stream.send(head + spec[:10])  # and the rest never
        started, answer = anyio.current_time(), b""
        with anyio.fail_after(10):
            while b"}}" not in answer:
                answer += await stream.receive()
        took = anyio.current_time() - started
        jobs = await rt.list_jobs()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b'"message":"request body not received within 0.5 s"' in answer
    assert 0.4 <= took < 5 and jobs == []


async def test_a_peer_taking_nothing_of_a_stream_is_closed_and_a_slow_one_is_not(
    state_dir: Path, sock_path: Path
) -> None:
    """A peer that reads none of an event stream fills our buffer: after ``write_stall_s``
    it is closed (our buffer freed). A peer that reads a large answer slowly but steadily is
    not idle while it does, and gets all of it."""
    limits = Limits(idle_timeout_s=0.5, write_stall_s=1.0)
    spec = {"name": "busy", "tasks": [{"name": "t", "instances": 1000, "command": "true"}]}
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, socket=sock_path, limits=limits) as control,
    ):
        silent = await anyio.connect_unix(str(sock_path))
        await silent.send(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        with anyio.fail_after(10):
            while b"\r\n\r\n" not in head:  # subscribed: every event from now on comes
                head += await silent.receive(1)
        job = await rt.submit(spec)
        await job.wait_for_success()  # ~4,000 events streamed to a peer that reads none
        with anyio.fail_after(10):  # reading now would be taking some: the count is the sign
            while control.statistics()["connections"]["unix"]["timed_out"] < 1:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        with anyio.fail_after(10):
            while True:
                try:
                    await silent.receive(1 << 20)  # what the kernel held, then the end
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        await silent.aclose()
        stalled = control.statistics()["connections"]["unix"]["timed_out"]
        slow = await anyio.connect_unix(str(sock_path))
        await slow.send(f"GET /v1/jobs/{job.id}/history HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        with anyio.fail_after(60):
            while b"\r\n0\r\n\r\n" not in answer[-16:] and not complete(answer):
                answer += await slow.receive(16 * 1024)
                await anyio.sleep(0.03)  # a slow reader (~0.5 MB/s): it takes longer than
                # write_stall_s to drain what waits in our buffer, but never stops taking
        await slow.aclose()
    assert stalled == 1
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and len(body) > 1_000_000


async def read_to_the_end(stream: anyio.abc.ByteStream) -> bytes:
    """All the server sends until it closes the connection (within 5 s)."""
    answer = b""
    with anyio.fail_after(5):
        while True:
            try:
                answer += await stream.receive()
            except anyio.EndOfStream:
                return answer


def complete(answer: bytes) -> bool:
    """Whether a response with a Content-Length has all its body."""
    head, found, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if found and name.lower() == b"content-length":
            return len(body) >= int(value)
    return False


async def test_one_address_holds_no_more_than_its_share_of_the_tcp_listener(
    state_dir: Path, sock_path: Path
) -> None:
    """A peer that opens TCP connections and keeps them gets up to its share; one more of
    its own is closed at once, while another address is still served."""
    limits = Limits(connections=8, connections_per_address=3)
    config = ServerConfig(http="127.0.0.1:0", token="t0k3n")
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, config, socket=sock_path, limits=limits) as control,
    ):
        assert control.http_url is not None
        host, port = control.http_url.removeprefix("http://").rsplit(":", 1)
        held = [await anyio.connect_tcp(host, int(port)) for _ in range(3)]
        extra = await anyio.connect_tcp(host, int(port))
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await extra.receive()
        other = await anyio.connect_tcp(host, int(port), local_host="127.0.0.2")
        await other.send(
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k3n\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = await read_to_the_end(other)
        for stream in (*held, extra, other):
            await stream.aclose()
        tcp = control.statistics()["connections"]["tcp"]
    assert answer.startswith(b"HTTP/1.1 200 OK") and tcp["refused"] == 1
