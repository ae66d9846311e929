"""``Client``: the BatchAPI over the control socket, against a real Runtime and server.

Everything a user does through ``Runtime`` is done here through ``Client`` (and through
``JobHandle`` over it), with real subprocesses and FIFOs as gates.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

from aiobatch import (
    InstanceNotFound,
    JobFailed,
    JobNotFound,
    JobState,
    SpecError,
    Status,
    TaskNotFound,
    wire,
)
from aiobatch.api import BatchAPI
from aiobatch.client import Client
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.errors import JobNotRetryable, ServiceUnavailable
from aiobatch.events import Event, InstanceStateChanged, JobStateChanged
from aiobatch.spec import decode_spec
from aiobatch.states import JOB_TERMINAL
from tests.helpers import Gates, instance_is
from tests.integration.conftest import free_port
from tests.integration.test_server import INVALID, serving, spec_errors

pytestmark = pytest.mark.anyio

FAN_OUT = {
    "name": "fan",
    "tasks": [
        {"name": "split", "command": "echo split"},
        {"name": "render", "depends_on": ["split"], "instances": 4, "command": "true"},
        {"name": "merge", "depends_on": ["render"], "command": "true"},
    ],
}


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A socket path in a fresh short dir: pytest's tmp_path may pass the 107-byte limit."""
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


def one_slot() -> Config:
    return Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=1)})


def tiny(name: str, command: str = "true", **task: Any) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": "t", "command": command, **task}]}


async def first(events: AsyncIterator[Event], predicate: Callable[[Event], bool]) -> Event:
    """The first event that matches (the time limit is a safety net, not synchronisation)."""
    with anyio.fail_after(20):
        async for event in events:
            if predicate(event):
                return event
    raise AssertionError("the stream ended first")


def ends_job(event: Event) -> bool:
    return isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL


async def ended(events: AsyncIterator[Event], job_id: str) -> JobStateChanged:
    """The final JobStateChanged of a job."""
    event = await first(events, lambda event: event.job_id == job_id and ends_job(event))
    assert isinstance(event, JobStateChanged)
    return event


async def test_client_is_a_batch_api_and_remembers_statuses(
    state_dir: Path, sock_path: Path
) -> None:
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        api: BatchAPI = client  # type-checked: the client offers the whole API
        with pytest.raises(JobNotFound):
            api.cached_status("never-seen")
        job = await api.submit(tiny("one"))
        assert api.cached_status(job.id) in (JobState.SUBMITTED, JobState.RUNNING)
        await job.wait_for_success()
        assert api.cached_status(job.id) is JobState.SUCCEEDED
        assert job.state is JobState.SUCCEEDED and job.status is Status.TERMINATED


async def test_submit_wait_list_and_the_job_handle(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    spec_file = tmp_path / "fan.yaml"
    spec_file.write_text(
        "name: from-file\ntasks:\n  - {name: bad, command: 'echo boom >&2; exit 3'}\n"
    )
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        job = await client.submit(FAN_OUT)
        snapshot = await job.wait_for_success()
        assert await job.is_terminated() and await job.is_successful()
        assert job.get_task_names() == ["split", "render", "merge"]
        progress = await job.get_task_progress("render")
        results = await job.get_task_results()
        failing = await client.submit(spec_file)  # read here; sent as JSON
        with pytest.raises(JobFailed) as failed:
            await failing.wait_for_success()
        bad = await failing.get_task_result("bad")
        again = await client.get_job(job.id)
        newest_first = [j.id for j in await client.list_jobs()]
        only_failed = [j.id for j in await client.list_jobs(status=JobState.FAILED)]
        latest = [j.id for j in await client.list_jobs(limit=1)]
        exist = (await client.exist_job(job.id), await client.exist_job("nope"))
        as_struct = await client.submit(decode_spec(tiny("struct", "echo $AIOBATCH_JOB_NAME")))
        await as_struct.wait_for_success()
        struct_log = await client.read_log(as_struct.id, "t", 0)
        log = await client.read_log(job.id, "split", 0)
    assert snapshot.status == "SUCCEEDED" and snapshot.tasks["render"].succeeded == 4
    assert progress.stage_string() == "render:0/4/4[100%]"
    assert [i.exit_code for i in results["render"].instances or []] == [0, 0, 0, 0]
    assert failed.value.failed_tasks == ("bad",) and failing.name == "from-file"
    assert (bad.status, bad.stderr_tails) == ("FAILED", {0: ["boom"]})
    assert again.get_task_names() == job.get_task_names() and again.state is JobState.SUCCEEDED
    assert newest_first == [failing.id, job.id]
    assert only_failed == latest == [failing.id]
    assert exist == (True, False)
    assert log == b"split\n"
    assert struct_log == b"struct\n"


async def test_errors_come_back_as_the_runtime_raised_them(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    async with serving(state_dir, sock_path) as (rt, _), Client(sock_path) as client:
        with pytest.raises(SpecError) as invalid:
            await client.submit(INVALID)
        with pytest.raises(SpecError, match=f"^{broken}: not valid YAML"):
            await client.submit(broken)
        assert await client.list_jobs() == [] and await rt.list_jobs() == []
        job = await client.submit(tiny("done"))
        await job.wait_for_success()
        with pytest.raises(JobNotFound) as no_job:
            await client.get_job("nope")
        with pytest.raises(TaskNotFound, match=f"^job '{job.id}' has no task 'x'$"):
            await client.task_result(job.id, "x")
        with pytest.raises(InstanceNotFound, match=r"has no instance 5$"):
            await client.read_log(job.id, "t", 5)
        with pytest.raises(InstanceNotFound):
            await client.stop_instance(job.id, "t", 5)
        with pytest.raises(JobNotRetryable) as not_retryable:
            await job.retry()
    assert invalid.value.errors == spec_errors(INVALID)
    assert str(invalid.value) == "\n".join(spec_errors(INVALID))
    assert (no_job.value.job_id, str(no_job.value)) == ("nope", "no job with id 'nope'")
    assert (not_retryable.value.job_id, not_retryable.value.status) == (job.id, "SUCCEEDED")


async def test_unreachable_service_names_the_socket_or_url(sock_path: Path) -> None:
    async with Client(sock_path) as client:
        with pytest.raises(ServiceUnavailable, match=f"at {sock_path}: No such file"):
            await client.health()
    url = f"http://127.0.0.1:{free_port()}"
    async with Client(url=url, token="t") as client:
        with pytest.raises(ServiceUnavailable, match=f"at {url}: "):
            await client.list_jobs()


async def test_suspend_resume_and_stop_instance(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 4)
    spec = {"name": "pausable", "tasks": [{"name": "t", "instances": 4, "command": gates.command}]}
    async with (
        serving(state_dir, sock_path, config=one_slot()),
        Client(sock_path) as client,
    ):
        async with client.subscribe() as events:  # before submitting: nothing is missed
            job = await client.submit(spec)
            await first(events, instance_is("t", "RUNNING", 0))
            assert await job.suspend() and not await job.suspend()
            assert job.state is JobState.SUSPENDED and job.status is Status.SUSPENDED
            await gates.release(0)
            await first(events, instance_is("t", "SUCCEEDED", 0))
            held = await job.get_task_result("t")
            assert await job.resume()
            await first(events, instance_is("t", "RUNNING", 1))
            await job.stop_instance("t", 1)
            await first(events, instance_is("t", "CANCELLED", 1))
            for index in (2, 3):
                await first(events, instance_is("t", "RUNNING", index))
                await gates.release(index)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("t")
        instance = await client.instance_result(job.id, "t", 1)
    assert [i.status for i in held.instances or []] == ["SUCCEEDED", *["PENDING"] * 3]
    assert held.reason == "job_suspended"
    assert [(i.status, i.reason) for i in result.instances or []] == [
        ("SUCCEEDED", None),
        ("CANCELLED", "stopped_by_user"),
        ("SUCCEEDED", None),
        ("SUCCEEDED", None),
    ]
    assert (instance.status, instance.reason) == ("CANCELLED", "stopped_by_user")
    assert snapshot.status == "CANCELLED"


async def test_stop_job(state_dir: Path, sock_path: Path) -> None:
    spec = {"name": "stoppable", "tasks": [{"name": "t", "instances": 2, "command": "sleep 60"}]}
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        async with client.subscribe() as events:  # before submitting: nothing is missed
            job = await client.submit(spec)
            running = await first(events, instance_is("t", "RUNNING"))
            await job.stop()
            final = await ended(events, job.id)
        snapshot = await job.wait_for_completion()
    assert isinstance(running, InstanceStateChanged) and running.pid is not None
    assert (final.state, final.reason) == ("CANCELLED", "stopped_by_user")
    assert snapshot.status == "CANCELLED" and job.state is JobState.CANCELLED


async def test_failed_job_is_retried(state_dir: Path, sock_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    spec = {
        "name": "flaky",
        "tasks": [
            {"name": "fine", "command": "true"},
            {"name": "broken", "command": f"test -e {marker}", "on_failure": "continue"},
        ],
    }
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        job = await client.submit(spec)
        first = await job.wait_for_completion()
        marker.touch()
        assert await job.retry()
        assert job.state is JobState.RUNNING
        second = await job.wait_for_success()
        results = await job.get_task_results()
    assert first.status == "FAILED" and first.tasks["broken"].status == "FAILED"
    assert second.status == "SUCCEEDED"
    assert [i.attempts for i in results["fine"].instances or []] == [1]  # kept, not re-run
    assert [i.attempts for i in results["broken"].instances or []] == [2]


async def test_logs_by_offset_and_followed(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    command = f"echo first; {gates.command}; echo second; echo oops >&2"
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        job = await client.submit(tiny("logged", command))
        chunks: list[bytes] = []
        first_seen = anyio.Event()

        async def follow() -> None:
            async for chunk in client.follow_log(job.id, "t", 0):
                chunks.append(chunk)
                if b"".join(chunks) == b"first\n":
                    first_seen.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            with anyio.fail_after(20):  # a safety limit
                await first_seen.wait()
            await gates.release(0)
        # follow() returned by itself: the instance ended
        followed_later = [c async for c in client.follow_log(job.id, "t", 0, offset=6)]
        from_offset = await client.read_log(job.id, "t", 0, offset=6)
        limited = await client.read_log(job.id, "t", 0, offset=6, limit=3)
        stderr = await client.read_log(job.id, "t", 0, stream="stderr")
    assert b"".join(chunks) == b"first\nsecond\n"
    assert b"".join(followed_later) == from_offset == b"second\n"
    assert limited == b"sec"
    assert stderr == b"oops\n"


async def test_event_streams_of_one_job_and_of_all(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        gated = await client.submit(tiny("gated", gates.command))
        async with client.subscribe(gated.id) as of_gated, client.subscribe() as of_all:
            # Both are listening: everything from here on reaches them.
            other = await client.submit(tiny("other"))
            await gates.release(0)
            gated_events = [event async for event in of_gated]  # ends with the job
            ends: set[str] = set()  # the two jobs may end in either order
            while len(ends) < 2:
                ends.add((await first(of_all, ends_job)).job_id)
        assert client.cached_status(other.id) is JobState.SUCCEEDED  # learnt from the stream
    assert {event.job_id for event in gated_events} == {gated.id}
    assert gated_events[-1].job_id == gated.id and isinstance(gated_events[-1], JobStateChanged)
    assert gated_events[-1].state == "SUCCEEDED"
    assert ends == {other.id, gated.id}


async def test_events_generators_over_the_client(
    state_dir: Path, sock_path: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    async with serving(state_dir, sock_path), Client(sock_path) as client:
        job = await client.submit(tiny("watched", gates.command))
        from_handle: list[Event] = []
        from_all: list[Event] = []

        async def watch_job() -> None:
            async for event in job.events():  # JobHandle.events() over the client
                from_handle.append(event)

        async def watch_all() -> None:
            async for event in client.events():
                from_all.append(event)
                if event.job_id != job.id and ends_job(event):
                    return  # the marker job is done

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_job)
            tg.start_soon(watch_all)
            # The generators listen from their first iteration on, which we cannot see:
            # make events until both have seen one.
            while not (from_handle and from_all):
                assert await job.suspend() and await job.resume()
                await anyio.lowlevel.checkpoint()
            marker = await client.submit(tiny("marker"))
            await gates.release(0)
        after_end = [event async for event in job.events()]
    assert {event.job_id for event in from_handle} == {job.id}
    last = from_handle[-1]
    assert isinstance(last, JobStateChanged) and last.state == "SUCCEEDED"
    assert from_all[-1].job_id == marker.id
    assert {event.job_id for event in from_all} == {job.id, marker.id}
    assert after_end == []  # an ended job's events end at once, as with Runtime


async def test_health(state_dir: Path, sock_path: Path) -> None:
    async with serving(state_dir, sock_path) as (_, control), Client(sock_path) as client:
        idle = await client.health()
        async with client.subscribe():
            watched = await client.health()
    assert idle["status"] == "ok" and "local" in idle["compute_envs"]
    assert idle["server"]["socket"] == str(sock_path) == str(control.socket_path)
    assert (idle["server"]["long_requests"], watched["server"]["long_requests"]) == (0, 1)


async def test_health_and_logview_answers_are_exactly_their_wire_structs(
    state_dir: Path, sock_path: Path
) -> None:
    """The server builds them as wire.Health and wire.LogviewAddress: the JSON holds those
    fields and no others, and the client reads them through the structs."""
    async with serving(state_dir, sock_path) as (rt, _), Client(sock_path) as client:
        job = await rt.submit(tiny("v", "true"))
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(sock_path))
        ) as session:
            answers = {}
            for path in ("/v1/health", f"/v1/jobs/{job.id}/logview"):
                async with session.get("http://aiobatch" + path) as response:
                    answers[path] = (response.status, await response.read())
        address = await client.logview_address(job.id)
        health = await client.health()
    status, body = answers["/v1/health"]
    decoded = msgspec.json.decode(body, type=wire.Health)
    assert status == 200 and msgspec.to_builtins(decoded) == msgspec.json.decode(body)
    assert isinstance(decoded.server, wire.ServerStatistics) and decoded.server.pid == os.getpid()
    assert set(decoded.server.connections) == {"unix"}
    assert health["server"]["connections"]["unix"]["open"] >= 1  # this client's connection
    status, body = answers[f"/v1/jobs/{job.id}/logview"]
    assert status == 200 and msgspec.json.decode(body) == {"url": None}  # no log view here
    assert address is None


async def test_twenty_clients_at_once(state_dir: Path, sock_path: Path) -> None:
    finished: dict[int, tuple[str, str]] = {}

    async def one(n: int) -> None:
        async with Client(sock_path) as client:
            job = await client.submit(tiny(f"c{n}", f"echo {n}"))
            while not await job.is_terminated():  # polls the service, as a script would
                pass
            log = await client.read_log(job.id, "t", 0)
            assert log == f"{n}\n".encode()
            finished[n] = (job.id, (await job.snapshot()).status)

    async with serving(state_dir, sock_path):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(one, n)
    assert sorted(finished) == list(range(20))
    assert {status for _, status in finished.values()} == {"SUCCEEDED"}
    assert len({job_id for job_id, _ in finished.values()}) == 20
