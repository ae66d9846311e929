"""``[server] metrics = "HOST:PORT"``: a listener that serves ``GET /metrics`` without a token
(the same text as the HTTP listener's ``/metrics``, which wants one) and nothing else, under
the limits of the other listeners; a bad address stops the start with one error naming the
key. The real ``aiobatch serve``, real sockets, prometheus_client's own parser."""

from __future__ import annotations

import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from anyio.abc import SocketStream
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aiobatch import Runtime
from aiobatch.config import ServerConfig
from aiobatch.server import ControlServer, Limits
from aiobatch.server.limits import FD_SHARE
from tests.integration import service as service_module
from tests.integration.conftest import free_port
from tests.integration.service import AIOBATCH, Service

TOKEN = "t0k3n-of-the-http-listener"
TIMEOUT = aiohttp.ClientTimeout(total=20)  # a listener bound but not served would hang
QUICK = {"name": "quick", "tasks": [{"name": "t", "command": "true"}]}
ELSEWHERE = [("GET", "/"), ("GET", "/v1/jobs"), ("GET", "/v1/health"), ("POST", "/v1/jobs")]
ELSEWHERE += [("GET", "/metrics/"), ("GET", "/ui/"), ("GET", "/v1/openapi.json")]
NOT_GET = [("POST", "/metrics"), ("PUT", "/metrics"), ("DELETE", "/metrics")]
NOT_GET += [("HEAD", "/metrics"), ("OPTIONS", "/metrics")]
FILES = 256  # the service's open-files limit in the idle-peers test: FILES // FD_SHARE each
PEERS = 300  # more than that listener's share, and than all the service's files


def families(text: str) -> dict[str, list[Sample]]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def jobs_in(samples: list[Sample], state: str) -> float:
    [found] = [s.value for s in samples if s.labels == {"state": state}]
    return found


@pytest.mark.anyio
async def test_metrics_without_a_token_there_and_nothing_else(service: Service) -> None:
    port = free_port()
    service.config.write_text(
        f'[server]\nhttp = "127.0.0.1:0"\ntoken = "{TOKEN}"\nmetrics = "127.0.0.1:{port}"\n'
    )
    await service.start()
    async with service.client() as client:
        job = await client.submit(QUICK)
        assert (await job.wait_for_completion()).status == "SUCCEEDED"
        health = await client.health()
    api, metrics = health["server"]["http"], f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(f"{metrics}/metrics") as answer:  # no token
            assert answer.status == 200, await answer.text()
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            scraped = families(await answer.text())
        async with http.get(f"{api}/metrics", headers=bearer) as answer:
            assert answer.status == 200
            authenticated = families(await answer.text())
        async with http.get(f"{api}/metrics") as answer:
            assert answer.status == 401  # the API's listener still wants a token
        statuses = {}
        for method, path in [*ELSEWHERE, *(("GET", f"/v1/jobs/{job.id}"),), *NOT_GET]:
            # Even with the API's token: nothing of the API is behind this listener.
            async with http.request(method, metrics + path, headers=bearer, json={}) as answer:
                statuses[method, path] = answer.status
                if answer.status == 405:
                    assert answer.headers["Allow"] == "GET"
    assert jobs_in(scraped["aiobatch_jobs"], "SUCCEEDED") == 1
    assert {"aiobatch_instances", "aiobatch_slots", "aiobatch_slots_used"} <= scraped.keys()
    assert scraped.keys() == authenticated.keys()  # the same text, a moment apart
    assert statuses == {
        **dict.fromkeys([*ELSEWHERE, ("GET", f"/v1/jobs/{job.id}")], 404),
        **dict.fromkeys(NOT_GET, 405),
    }
    assert health["server"]["connections"].keys() == {"unix", "tcp", "metrics"}


# -- a bad address: one error naming server.metrics, exit 2, nothing started ----------------


def serve(service: Service) -> tuple[int, str]:
    done = subprocess.run(
        [
            *(str(AIOBATCH), "serve", "--config", str(service.config)),
            *("--state-dir", str(service.state_dir), "--socket", str(service.socket)),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr.decode()


@pytest.mark.anyio
async def test_a_bad_metrics_address_is_one_error_naming_it(service: Service) -> None:
    http = free_port()
    for metrics, problem in [
        ("localhost", "'localhost' is not HOST:PORT"),
        ("127.0.0.1:", "'127.0.0.1:' is not HOST:PORT"),
        (":9180", "':9180' is not HOST:PORT"),
        ("127.0.0.1:0", "port 0 is not between 1 and 65535"),
        ("127.0.0.1:65536", "port 65536 is not between 1 and 65535"),
        (f"127.0.0.1:{http}", f"'127.0.0.1:{http}' is the address of $.server.http"),
    ]:
        service.config.write_text(
            f'[server]\nhttp = "127.0.0.1:{http}"\ntoken = "{TOKEN}"\nmetrics = "{metrics}"\n'
        )
        code, err = await anyio.to_thread.run_sync(serve, service)
        heading, *problems = err.splitlines()
        assert code == 2, err
        assert heading == "aiobatch: invalid input:" and len(problems) == 1, err
        assert problems[0].startswith(f"  {service.config}: $.server.metrics: {problem}"), err
        assert not service.state_dir.exists() and not service.socket.exists()


@pytest.mark.anyio
async def test_a_busy_metrics_address_is_a_one_line_start_up_error(service: Service) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        busy = other.getsockname()[1]
        service.config.write_text(f'[server]\nmetrics = "127.0.0.1:{busy}"\n')
        code, err = await anyio.to_thread.run_sync(serve, service)
    assert code == 2, err
    assert err == (
        f"aiobatch: cannot start: $.server.metrics: address 127.0.0.1:{busy} is in use by "
        "another program; stop it or choose another port\n"
    )
    assert not service.state_dir.exists()
    assert not service.socket.exists()  # bound before the metrics address: closed, removed


# -- idle and slow peers ------------------------------------------------------------------


def ended_within(peers: list[socket.socket], seconds: float, enough: int) -> int:
    """How many of ``peers`` see their connection end (EOF or reset) within ``seconds``,
    counted until ``enough`` have."""
    pending = {peer.fileno(): peer for peer in peers}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    ended, deadline = 0, time.monotonic() + seconds
    while pending and ended < enough and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            try:
                data = pending.pop(fd).recv(1)
            except ConnectionResetError:
                data = b""
            ended += data == b""
    return ended


def silent_peers(port: int, count: int) -> list[socket.socket]:
    peers: list[socket.socket] = []
    try:
        for _ in range(count):
            peers.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    except BaseException:
        for peer in peers:
            peer.close()
        raise
    return peers


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


@pytest.mark.anyio
async def test_idle_peers_of_the_metrics_port_leave_the_service_its_files_and_socket(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service under a small open-files limit (soft and hard, as `ulimit -n` sets both):
    # more silent peers than it has files would take them all if the listener held each.
    wrapper = service.root / "limited"
    wrapper.write_text(f'#!/bin/sh\nulimit -n {FILES} || exit 97\nexec "{AIOBATCH}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(service_module, "AIOBATCH", wrapper)
    port = free_port()
    service.config.write_text(f'[server]\nmetrics = "127.0.0.1:{port}"\n')
    await service.start()
    assert service.process is not None
    assert open_files_limit(service.process.pid) == (FILES, FILES)
    share = FILES // FD_SHARE
    async with service.client() as client:
        peers = await anyio.to_thread.run_sync(silent_peers, port, PEERS)
        try:
            # Those over the listener's share are closed at once; the rest are held (for
            # the header timeout, 10 s, longer than this).
            refused = await anyio.to_thread.run_sync(ended_within, peers, 5.0, PEERS - share)
            with anyio.fail_after(5):  # starved of files, it took over a minute
                health = await client.health()  # over the unix socket
            with anyio.fail_after(30):
                job = await client.submit(QUICK)
                done = await job.wait_for_completion()
        finally:
            for peer in peers:
                peer.close()
        # The listener takes peers again once the service has read their ends (no event
        # tells that outside it: asked until then, within a limit).
        with anyio.fail_after(10):
            while (await client.health())["server"]["connections"]["metrics"]["open"]:  # noqa: ASYNC110
                await anyio.sleep(0.05)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as answer:
            assert answer.status == 200
            after = families(await answer.text())
    metrics = health["server"]["connections"]["metrics"]
    assert refused == metrics["refused"] == PEERS - share
    assert metrics["open"] == metrics["limit"] == share
    assert done.status == "SUCCEEDED"
    assert jobs_in(after["aiobatch_jobs"], "SUCCEEDED") == 1
    service.process.send_signal(signal.SIGTERM)  # up all along: it stops as it should
    with anyio.fail_after(30):
        assert await service.process.wait() == 0


@pytest.fixture
def sock_path() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.anyio
async def test_slow_and_idle_peers_of_the_metrics_port_are_closed_in_time(
    state_dir: Path, sock_path: Path
) -> None:
    limits = Limits(connections=8, header_timeout_s=0.5, idle_timeout_s=1.0)
    config = ServerConfig(metrics="127.0.0.1:0")  # built here: any port, as in embedded use
    async with (
        Runtime(state_dir) as rt,
        ControlServer(rt, config, socket=sock_path, limits=limits) as control,
    ):
        assert control.metrics_url is not None
        host, port = control.metrics_url.removeprefix("http://").rsplit(":", 1)
        slow = await anyio.connect_tcp(host, int(port))
        idle = await anyio.connect_tcp(host, int(port))
        await slow.send(b"GET /metr")  # half a request line, then nothing
        await idle.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # then nothing more
        lasted: dict[str, float] = {}
        answers: dict[str, bytes] = {}

        async def until_closed(name: str, stream: SocketStream) -> None:
            started, data = anyio.current_time(), b""
            with anyio.fail_after(10):
                while True:
                    try:
                        data += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
            lasted[name], answers[name] = anyio.current_time() - started, data

        async with anyio.create_task_group() as tg:
            tg.start_soon(until_closed, "slow", slow)
            tg.start_soon(until_closed, "idle", idle)
        statistics = control.statistics()["connections"]
        await slow.aclose()
        await idle.aclose()
    assert answers["slow"] == b"" and 0.4 <= lasted["slow"] < 3  # closed, not answered
    assert answers["idle"].startswith(b"HTTP/1.1 200 OK") and 0.9 <= lasted["idle"] < 4
    assert b"# TYPE aiobatch_jobs gauge" in answers["idle"]
    assert statistics["metrics"]["timed_out"] == 2
    assert statistics["metrics"]["limit"] == 8
