"""The control server seen from outside: raw HTTP over its unix socket and TCP, and curl.

A real Runtime and ControlServer run in the test's event loop; requests come from aiohttp's
client, from ``curl --unix-socket`` in a subprocess, and from a process of another uid.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from yarl import URL

from aiobatch import Runtime, SpecError, load_spec, wire
from aiobatch.api import TaskResult
from aiobatch.client import Client
from aiobatch.config import Config, ServerConfig
from aiobatch.errors import RuntimeClosed
from aiobatch.events import JobStateChanged, event_decoder
from aiobatch.listeners import SocketInUse
from aiobatch.queries import MAX_STDERR_TAILS
from aiobatch.server import ControlServer
from aiobatch.server.instance_lists import INSTANCES_AT_ONCE
from tests.helpers import Gates, instance_is, until

pytestmark = pytest.mark.anyio

BASE = "http://aiobatch/v1"
INVALID = {
    "name": "bad",
    "tasks": [
        {"name": "a", "command": "true", "depends_on": ["rendr"]},
        {"name": "b", "command": "true", "instances": 0},
    ],
}


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A socket path in a fresh short dir: pytest's tmp_path may pass the 107-byte limit."""
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def serving(
    state_dir: Path,
    sock: Path,
    *,
    config: Config | None = None,
    server: ServerConfig | None = None,
) -> AsyncIterator[tuple[Runtime, ControlServer]]:
    async with (
        Runtime(state_dir, config=config) as rt,
        ControlServer(rt, server, socket=sock) as control,
    ):
        yield rt, control


@asynccontextmanager
async def raw(sock: Path) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session:
        yield session


async def request(
    session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with session.request(method, BASE + path, **kwargs) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def curl(
    sock: Path, *args: str, user: int | None = None, check: bool = True
) -> tuple[int, str]:
    """``curl --unix-socket``: the status and the body."""
    done = await anyio.run_process(
        ["curl", "-sS", "--unix-socket", str(sock), "-w", "\n%{http_code}", *args],
        user=user,
        check=check,
    )
    body, _, status = done.stdout.decode().rpartition("\n")
    return int(status), body


async def chunks(chunk: bytes, count: int) -> AsyncIterator[bytes]:
    """A body sent chunked, without a Content-Length."""
    for _ in range(count):
        yield chunk


def spec_errors(spec: Any) -> Sequence[str]:
    """What ``aiobatch validate`` prints for a spec."""
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    return info.value.errors


# -- the socket -----------------------------------------------------------------------------


async def test_socket_is_private_made_in_a_new_dir_and_removed_on_exit(
    state_dir: Path, sock_path: Path
) -> None:
    sock = sock_path.parent / "run" / "aiobatch.sock"  # its dir does not exist yet
    async with serving(state_dir, sock), raw(sock) as session:
        mode = sock.stat().st_mode
        status, health = await request(session, "GET", "/health")
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert status == 200 and health["status"] == "ok" and health["server"]["pid"] == os.getpid()
    assert not sock.exists()
    assert os.listdir(sock.parent) == []  # nor is anything else left behind


async def test_stale_socket_is_replaced_and_a_live_one_refused(
    state_dir: Path, sock_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX) as stale:  # bound, never listened: nothing answers
        stale.bind(str(sock_path))
    async with serving(state_dir, sock_path) as (rt, _):
        with pytest.raises(SocketInUse, match=f"already listens on {sock_path}"):
            async with ControlServer(rt, socket=sock_path):
                pass
        async with raw(sock_path) as session:  # the first one still serves
            assert (await request(session, "GET", "/health"))[0] == 200
    await anyio.Path(sock_path).write_text("not a socket")
    async with Runtime(state_dir) as rt:
        with pytest.raises(SocketInUse, match="exists and is not a socket"):
            async with ControlServer(rt, socket=sock_path):
                pass
    assert await anyio.Path(sock_path).read_text() == "not a socket"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as uid 65534")
async def test_peer_of_another_uid_is_refused_unless_allowed(
    state_dir: Path, sock_path: Path
) -> None:
    def open_to_all() -> None:  # for this test only: let uid 65534 reach the socket at all
        sock_path.parent.chmod(0o755)
        sock_path.chmod(0o666)

    url = BASE + "/jobs"
    async with serving(state_dir, sock_path):
        open_to_all()
        status, body = await curl(sock_path, url, user=65534)
        own_status, _ = await curl(sock_path, url)
    assert status == 403 and own_status == 200
    assert json.loads(body)["error"] == {
        "type": "Forbidden",
        "message": "peer uid 65534 may not use this socket",
    }
    async with serving(state_dir, sock_path, server=ServerConfig(allowed_uids=(65534,))):
        open_to_all()
        status, body = await curl(sock_path, url, user=65534)
    assert status == 200 and json.loads(body) == []


async def test_tcp_listener_wants_the_bearer_token(state_dir: Path, sock_path: Path) -> None:
    config = ServerConfig(http="127.0.0.1:0", token="s3cret")
    async with serving(state_dir, sock_path, server=config) as (rt, control):
        job = await rt.submit({"name": "secret", "tasks": [{"name": "a", "command": "true"}]})
        assert control.http_url is not None
        jobs = control.http_url + "/v1/jobs"
        async with aiohttp.ClientSession() as session:
            answers = []
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                async with session.get(jobs, headers=headers) as response:
                    answers.append((response.status, response.headers.get("WWW-Authenticate")))
                    text = await response.text()
                    assert job.id not in text and "secret" not in text
            async with session.get(jobs, headers={"Authorization": "Bearer s3cret"}) as response:
                allowed = response.status, [j["id"] for j in await response.json()]
        async with Client(url=control.http_url, token="s3cret") as client:
            health = await client.health()
    assert answers == [(401, 'Bearer realm="aiobatch"')] * 3
    assert allowed == (200, [job.id])
    assert health["server"]["http"] == control.http_url


# -- requests refused -----------------------------------------------------------------------


async def test_bad_requests_get_json_errors_and_store_nothing(
    state_dir: Path, sock_path: Path
) -> None:
    async with serving(state_dir, sock_path) as (rt, _), raw(sock_path) as session:
        malformed = await request(session, "POST", "/jobs", data=b'{"name": "x", tasks: [')
        too_big = await request(session, "POST", "/jobs", data=io.BytesIO(b" " * (1 << 20 | 1)))
        too_big_chunked = await request(session, "POST", "/jobs", data=chunks(b" " * 4096, 257))
        invalid = await request(session, "POST", "/jobs", json=INVALID)
        not_a_mapping = await request(session, "POST", "/jobs", json=["a"])
        bad_yaml = await request(
            session, "POST", "/jobs", data=b"name: [", headers={"Content-Type": "text/yaml"}
        )
        empty = await request(session, "POST", "/jobs", data=b"")
        # A string would be a path for Runtime.submit: it must never get that far.
        path = await request(session, "POST", "/jobs", json="/etc/passwd")
        jobs = await rt.list_jobs()
        no_job = await request(session, "GET", "/jobs/nope")
        no_task = await request(session, "GET", "/jobs/nope/tasks/a")
        no_wait = await request(session, "GET", "/jobs/nope/wait")
        no_events = await request(session, "GET", "/events", params={"job": "nope"})
        no_route = await request(session, "GET", "/jobs/nope/frobnicate")
        async with session.get("http://aiobatch/ui/static/nope.js") as answer:
            assert answer.content_type == "application/json"  # a static file's 404 too
            no_file = answer.status, await answer.json()
        nul = URL("http://aiobatch/ui/static/a%00b", encoded=True)
        async with session.get(nul) as answer:
            assert answer.status == 404 and answer.content_type == "application/json"
        wrong_method = await request(session, "GET", "/jobs/nope/stop")
        queries = [
            await request(session, "GET", "/jobs", params=params)
            for params in ({"limit": "abc"}, {"limit": "0"}, {"status": "BOGUS"}, {"staus": "x"})
        ]
    assert jobs == []
    assert malformed[0] == 400 and malformed[1]["error"]["type"] == "BadRequest"
    assert malformed[1]["error"]["message"].startswith("body is not valid JSON: ")
    assert (
        too_big
        == too_big_chunked
        == (
            413,
            {
                "error": {
                    "type": "RequestTooLarge",
                    "message": "request body larger than 1048576 bytes",
                }
            },
        )
    )
    assert invalid[0] == 422
    assert invalid[1]["error"]["type"] == "SpecError"
    assert invalid[1]["error"]["errors"] == list(spec_errors(INVALID))
    assert "$.tasks[0].depends_on[0]: unknown task 'rendr'" in invalid[1]["error"]["errors"]
    assert not_a_mapping[0] == path[0] == 422
    assert not_a_mapping[1]["error"]["errors"] == [
        "$: expected a mapping at the top level, got list"
    ]
    assert bad_yaml[0] == 400 and "not valid YAML" in bad_yaml[1]["error"]["message"]
    assert empty[0] == 400 and empty[1]["error"]["message"].startswith("empty request body")
    assert no_job == (
        404,
        {"error": {"type": "JobNotFound", "message": "no job with id 'nope'", "job_id": "nope"}},
    )
    assert no_task == no_wait == no_events == no_job
    assert no_route == (
        404,
        {
            "error": {
                "type": "NotFound",
                "message": "no such endpoint: GET /v1/jobs/nope/frobnicate",
            }
        },
    )
    assert no_file == (
        404,
        {"error": {"type": "NotFound", "message": "no such endpoint: GET /ui/static/nope.js"}},
    )
    assert wrong_method[0] == 405 and wrong_method[1]["error"]["type"] == "MethodNotAllowed"
    assert [status for status, _ in queries] == [400] * 4
    assert [body["error"]["message"] for _, body in queries] == [
        "limit: expected an integer from 1 to 10000, got 'abc'",
        "limit: expected an integer from 1 to 10000, got '0'",
        "status: expected one of SUBMITTED, RUNNING, SUSPENDED, SUCCEEDED, FAILED, CANCELLED,"
        " got 'BOGUS'",
        "unknown query parameter 'staus' (known: status, limit, offset, label)",
    ]


async def test_closed_runtime_is_503(state_dir: Path, sock_path: Path) -> None:
    spec = {"name": "late", "tasks": [{"name": "a", "command": "true"}]}
    runtime = Runtime(state_dir)  # never opened: takes no work
    async with ControlServer(runtime, socket=sock_path), raw(sock_path) as session:
        status, body = await request(session, "POST", "/jobs", json=spec)
        async with Client(sock_path) as client:
            with pytest.raises(RuntimeClosed, match="not open"):
                await client.submit(spec)
    assert status == 503 and body["error"]["type"] == "RuntimeClosed"


# -- curl, as the README shows it -----------------------------------------------------------


async def test_curl_submit_yaml_wait_and_read_logs(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: hello\ntasks:\n  - {name: greet, command: 'echo hello from $AIOBATCH_TASK_NAME'}\n"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(INVALID))
    yaml_type = "Content-Type: application/yaml"
    async with serving(state_dir, sock_path):
        created = await curl(
            sock_path, "-H", yaml_type, "--data-binary", f"@{spec}", BASE + "/jobs"
        )
        job = json.loads(created[1])
        waited = await curl(sock_path, f"{BASE}/jobs/{job['id']}/wait")
        log = await curl(sock_path, f"{BASE}/jobs/{job['id']}/tasks/greet/instances/0/logs/stdout")
        tail = await curl(
            sock_path, f"{BASE}/jobs/{job['id']}/tasks/greet/instances/0/logs/stdout?offset=6"
        )
        events = await curl(sock_path, "-N", f"{BASE}/events?job={job['id']}")  # ended: empty
        refused = await curl(sock_path, "--data-binary", f"@{bad}", BASE + "/jobs")
        listed = await curl(sock_path, BASE + "/jobs?status=succeeded")
    assert created[0] == 201
    assert (job["name"], job["tasks"]) == ("hello", ["greet"])
    assert waited[0] == 200 and json.loads(waited[1])["status"] == "SUCCEEDED"
    assert log == (200, "hello from greet\n") and tail == (200, "from greet\n")
    assert events == (200, "")
    assert refused[0] == 422
    assert json.loads(refused[1])["error"]["errors"] == list(spec_errors(INVALID))
    assert [j["id"] for j in json.loads(listed[1])] == [job["id"]]


# -- streams --------------------------------------------------------------------------------


async def test_event_stream_is_json_lines_ending_with_the_job(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {"name": "watched", "tasks": [{"name": "t", "command": gates.command}]}
    async with serving(state_dir, sock_path) as (rt, _), raw(sock_path) as session:
        job = await rt.submit(spec)
        async with session.get(BASE + "/events", params={"job": job.id}) as response:
            # The headers are in: from here on every event of the job reaches this stream.
            await gates.release(0)
            lines = [line async for line in response.content]
        content_type = response.content_type
    events = [event_decoder.decode(line) for line in lines]
    assert content_type == "application/x-ndjson"
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert {event.job_id for event in events} == {job.id}
    assert json.loads(lines[-1])["type"] == "JobStateChanged"
    assert events[-1] == JobStateChanged(
        job_id=job.id, state="SUCCEEDED", reason=None, ts=events[-1].ts
    )
    assert [(type(e).__name__, getattr(e, "state", None)) for e in events[-3:]] == [
        ("InstanceStateChanged", "SUCCEEDED"),
        ("TaskStateChanged", "SUCCEEDED"),
        ("JobStateChanged", "SUCCEEDED"),
    ]


async def test_streams_end_and_waits_are_refused_when_the_server_stops(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {"name": "outlives", "tasks": [{"name": "t", "command": "echo up; " + gates.command}]}
    results: dict[str, Any] = {}
    subscribed, followed = anyio.Event(), anyio.Event()

    async def watch_all(client: Client) -> None:
        async with client.subscribe() as events:
            subscribed.set()
            results["events"] = [event async for event in events]

    async def follow(client: Client, job_id: str) -> None:
        results["log"] = []
        async for chunk in client.follow_log(job_id, "t", 0):
            results["log"].append(chunk)
            followed.set()

    async def wait(client: Client, job_id: str) -> None:
        with pytest.raises(RuntimeClosed, match="shutting down") as info:
            await client.wait_job(job_id)
        results["wait"] = info.value

    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as bus:
            job = await rt.submit(spec)
            await until(bus, instance_is("t", "RUNNING"))
        # The watchers' task group outlives the server: they see it go.
        async with Client(sock_path) as client, anyio.create_task_group() as tg:
            async with ControlServer(rt, socket=sock_path) as control:
                tg.start_soon(watch_all, client)
                tg.start_soon(follow, client, job.id)
                tg.start_soon(wait, client, job.id)
                await subscribed.wait()
                await followed.wait()
                with anyio.fail_after(10):  # a safety limit: the server counts what it serves
                    while control.statistics()["long_requests"] < 3:
                        await anyio.lowlevel.checkpoint()
                stopping = time.monotonic()
            stopped = time.monotonic() - stopping
        await gates.release(0)  # the runtime itself carries on
        await (await rt.get_job(job.id)).wait_for_success()
    assert stopped < 2  # streams were ended, not waited for (the grace is 5 s)
    assert results["events"] == []
    assert results["log"] == [b"up\n"]
    assert isinstance(results["wait"], RuntimeClosed)


async def test_encoded_snapshots_are_the_api_structs(state_dir: Path, sock_path: Path) -> None:
    task = {"name": "a", "instances": 2, "command": "exit 1", "on_failure": "continue"}
    spec = {"name": "shape", "tasks": [task]}
    async with serving(state_dir, sock_path) as (rt, _), raw(sock_path) as session:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        _, plain = await request(session, "GET", f"/jobs/{job.id}")
        _, detailed = await request(session, "GET", f"/jobs/{job.id}", params={"instances": "1"})
        _, instance = await request(session, "GET", f"/jobs/{job.id}/tasks/a/instances/1")
        missing = await request(session, "GET", f"/jobs/{job.id}/tasks/a/instances/2")
        expected = await rt.job_snapshot(job.id, instances=True)
    assert plain["tasks"]["a"]["instances"] is None
    assert detailed == json.loads(msgspec.json.encode(expected))
    assert instance["status"] == "FAILED" and instance["exit_code"] == 1
    assert "stderr_tail" in instance
    assert missing[0] == 404 and missing[1]["error"]["type"] == "InstanceNotFound"


async def test_openapi_document_is_served_with_the_same_auth_as_other_reads(
    state_dir: Path, sock_path: Path
) -> None:
    config = ServerConfig(http="127.0.0.1:0", token="s3cret")
    async with serving(state_dir, sock_path, server=config) as (_, control):
        async with raw(sock_path) as session:
            status, document = await request(session, "GET", "/openapi.json")
        assert control.http_url is not None
        url = control.http_url + "/v1/openapi.json"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as response:
                anonymous = response.status
            async with session.get(url, headers={"Authorization": "Bearer s3cret"}) as response:
                signed = response.status, await response.json()
    assert status == 200 and "/v1/jobs" in document["paths"]
    assert anonymous == 401 and signed == (200, document)


async def test_every_instance_listed_is_streamed_in_slices_as_the_runtime_has_it(
    state_dir: Path, sock_path: Path
) -> None:
    """A job's and a task's answers with every instance are written a slice at a time
    (INSTANCES_AT_ONCE), the same JSON as the runtime's own; a task's result has the
    stderr tails of its first MAX_STDERR_TAILS failed instances, however many failed."""
    many = MAX_STDERR_TAILS + INSTANCES_AT_ONCE + 1
    spec = {
        "name": "many",
        "tasks": [
            {
                "name": "a",
                "instances": many,
                "command": "echo no >&2; exit 1",
                "on_failure": "continue",
            },
            {"name": "b", "instances": 3, "depends_on": ["a"], "command": "true"},
        ],
    }
    async with serving(state_dir, sock_path) as (rt, _), raw(sock_path) as session:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        async with session.get(f"{BASE}/jobs/{job.id}?instances=1") as answer:
            assert answer.status == 200 and "Content-Length" not in answer.headers  # streamed
            body = await answer.read()
        assert body == wire.encoder.encode(await rt.job_snapshot(job.id, instances=True))
        async with session.get(f"{BASE}/jobs/{job.id}/tasks/a") as answer:
            task = msgspec.json.decode(await answer.read(), type=TaskResult)
    assert task.instances is not None and [i.index for i in task.instances] == list(range(many))
    assert {i.status for i in task.instances} == {"FAILED"}
    assert task.stderr_tails == {index: ["no"] for index in range(MAX_STDERR_TAILS)}


async def test_a_large_yaml_body_is_parsed_while_other_requests_are_answered(
    state_dir: Path, sock_path: Path
) -> None:
    """A MiB of YAML takes seconds to parse: off the event loop, so the health of the
    service is answered meanwhile, in well under the parse's time."""
    body = ("[" + "1," * 450_000 + "1]").encode()  # a top-level list: refused once parsed
    async with serving(state_dir, sock_path), raw(sock_path) as session:
        headers = {"Content-Type": "application/yaml"}
        async with anyio.create_task_group() as tg:
            submitted: list[float] = []

            async def submit() -> None:
                started = anyio.current_time()
                async with session.post(f"{BASE}/jobs", data=body, headers=headers) as answer:
                    assert answer.status == 400  # not a mapping: no spec
                submitted.append(anyio.current_time() - started)

            tg.start_soon(submit)
            slowest = 0.0
            while not submitted:
                started = anyio.current_time()
                async with session.get(f"{BASE}/health") as health:
                    assert health.status == 200
                slowest = max(slowest, anyio.current_time() - started)
    assert submitted[0] > 0.5, "the parse was too quick to tell anything"
    assert slowest < submitted[0] / 3, (slowest, submitted)
