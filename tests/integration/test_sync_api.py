"""The blocking API, ``aiobatch.connect``: PyODPS' names over a real embedded runtime and a
real ``aiobatch serve``, called from a plain thread and from inside a running event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

import aiobatch
from aiobatch import (
    Connection,
    JobFailed,
    JobNotFound,
    JobNotRetryable,
    JobState,
    StateDirBusy,
    Status,
    TaskNotFound,
    WaitTimeoutError,
)
from aiobatch.blocking import ConnectionClosed, Instance
from aiobatch.client import RequestRefused
from tests.helpers import Gates, processes_of, runtime_id
from tests.integration.service import Service
from tests.unit.test_progress import parse

SPEC = {
    "name": "pair",
    "tasks": [
        {"name": "ok", "instances": 3, "command": "true"},
        {"name": "bad", "depends_on": ["ok"], "command": "false"},
    ],
}


def release(gates: Gates, index: int) -> None:
    """Let a gated instance end (blocks until it has opened its FIFO)."""
    with (gates.root / str(index)).open("w") as fifo:
        fifo.write("go\n")


def held(gates: Gates, count: int = 1) -> dict[str, object]:
    return {
        "name": "held",
        "tasks": [{"name": "wait", "instances": count, "command": gates.command}],
    }


def status_now(inst: Instance) -> Status:
    """``inst.status`` asked again (a property: a type checker would take it as unchanged)."""
    return inst.status


async def calls_in_flight(o: Connection) -> int:
    return len(o._calls.scopes)


def check_a_failing_job(o: Connection) -> Instance:
    """What every way of connecting must give: PyODPS' calls, the async API's errors."""
    inst = o.submit(SPEC)
    assert inst.get_task_names() == ["ok", "bad"]
    with pytest.raises(JobFailed) as failed:
        inst.wait_for_success(timeout=60)
    assert failed.value.failed_tasks == ("bad",) and failed.value.job_id == inst.id
    assert inst.status is Status.TERMINATED and inst.state is JobState.FAILED
    assert inst.is_terminated() and not inst.is_successful()
    stamp_and_stages = parse(inst.get_task_progress("ok").get_stage_progress_formatted_string())
    assert stamp_and_stages[1] == [
        {
            "name": "ok",
            "running": "0",
            "terminated": "3",
            "total": "3",
            "backups": None,
            "percent": "100",
        }
    ]
    results = inst.get_task_results()
    assert list(results) == ["ok", "bad"]
    assert inst.get_task_result("bad").failed == 1 and results["ok"].succeeded == 3
    with pytest.raises(TaskNotFound):
        inst.get_task_progress("nope")
    with pytest.raises(TaskNotFound):
        inst.get_task_result("nope")
    assert o.exist_instance(inst.id) and not o.exist_instance("no-such-job")
    with pytest.raises(JobNotFound):
        o.get_instance("no-such-job")
    again = o.get_instance(inst.id)
    assert (again.id, again.get_task_names(), again.status) == (
        inst.id,
        ["ok", "bad"],
        Status.TERMINATED,
    )
    return inst


def test_embedded_runtime_from_a_plain_script(state_dir: Path, tmp_path: Path) -> None:
    with aiobatch.connect(state_dir=state_dir) as o:
        failed = check_a_failing_job(o)
        fine = o.submit(
            {"name": "fine", "labels": {"team": "ml"}, "tasks": [{"name": "t", "command": "true"}]}
        )
        fine.wait_for_success(timeout=60)
        assert fine.is_successful() and fine.status is Status.TERMINATED
        assert fine.get_logview_address() is None  # this runtime serves no log view

        gates = Gates(tmp_path / "gates", 2)
        slow = o.submit(held(gates, 2))
        assert slow.status is Status.RUNNING and slow.is_running()
        with pytest.raises(WaitTimeoutError) as timed_out:
            slow.wait_for_completion(timeout=0.2)
        assert isinstance(timed_out.value, TimeoutError) and timed_out.value.instance_id == slow.id
        assert slow.state is JobState.RUNNING  # a timed-out wait leaves the job alone
        assert slow.suspend() and status_now(slow) is Status.SUSPENDED
        assert [i.id for i in o.list_instances(status=Status.SUSPENDED)] == [slow.id]
        assert slow.resume() and slow.status is Status.RUNNING
        assert [i.id for i in o.list_instances(status="Running")] == [slow.id]
        release(gates, 0)
        o.stop_instance(slow.id)
        assert slow.wait_for_completion(timeout=60).status == "CANCELLED"
        assert status_now(slow) is Status.TERMINATED

        newest_first = [slow.id, fine.id, failed.id]
        assert [i.id for i in o.list_instances()] == newest_first
        assert [i.id for i in o.list_instances(status=Status.TERMINATED, limit=2)] == [
            slow.id,
            fine.id,
        ]
        assert [i.id for i in o.list_instances(status="FAILED")] == [failed.id]
        assert [i.id for i in o.list_instances(labels={"team": "ml"})] == [fine.id]
        assert o.list_instances(status=Status.RUNNING, labels={"team": "ml"}) == []
        with pytest.raises(ValueError, match="status: one of Running"):
            o.list_instances(status="Done")

        with pytest.raises(JobNotRetryable):
            fine.retry()
        assert failed.retry() and failed.status is Status.RUNNING
        with pytest.raises(JobFailed):  # `false` fails again: the same error, the same class
            failed.wait_for_success(timeout=60)
        ours = runtime_id(state_dir)
    # Closing stopped the runtime: the state dir is free again, nothing it started lives on.
    assert processes_of(ours) == []
    with pytest.raises(ConnectionClosed):
        o.exist_instance(failed.id)
    with aiobatch.connect(state_dir=state_dir) as reopened:
        assert reopened.get_instance(fine.id).is_successful()


def test_one_open_runtime_per_state_dir_and_close_is_idempotent(state_dir: Path) -> None:
    o = aiobatch.connect(state_dir=state_dir)
    try:
        with pytest.raises(StateDirBusy):
            aiobatch.connect(state_dir=state_dir)
    finally:
        o.close()
    o.close()


def test_shared_between_threads_and_called_from_a_running_loop(
    state_dir: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    with aiobatch.connect(state_dir=state_dir) as o:
        inst = o.submit(held(gates))
        seen: list[object] = []

        def waiter() -> None:  # a plain thread blocks on the same connection
            seen.append(inst.wait_for_success(timeout=60).status)

        thread = threading.Thread(target=waiter)
        thread.start()

        async def notebook_cell() -> tuple[Status, Status]:
            # A thread with a running asyncio loop (as a Jupyter cell has) calls it as is.
            asyncio.get_running_loop()
            before = o.get_instance(inst.id).status
            release(gates, 0)
            o.get_instance(inst.id).wait_for_success(timeout=60)
            return before, inst.status

        assert asyncio.run(notebook_cell()) == (Status.RUNNING, Status.TERMINATED)
        thread.join(timeout=60)
        assert seen == ["SUCCEEDED"]


@pytest.mark.anyio
async def test_a_service_over_its_socket(service: Service) -> None:
    await service.start()

    def script() -> str:
        with aiobatch.connect(socket=service.socket) as o:
            return check_a_failing_job(o).id

    # From a worker thread (a plain script), then from the test's running loop itself.
    job_id = await anyio.to_thread.run_sync(script)
    with aiobatch.connect(socket=service.socket) as o:
        assert [i.id for i in o.list_instances(status=Status.TERMINATED)] == [job_id]
        inst = o.submit({"name": "fine", "tasks": [{"name": "t", "command": "true"}]})
        inst.wait_for_success(timeout=60)
        assert inst.status is Status.TERMINATED
        assert o.get_instance(inst.id).get_task_progress("t").stage_string() == "t:0/1/1[100%]"


def test_an_unreachable_service_raises_the_async_api_error(tmp_path: Path) -> None:
    with (
        aiobatch.connect(socket=tmp_path / "nothing.sock") as o,
        pytest.raises(aiobatch.ServiceUnavailable),
    ):
        o.exist_instance("x")


def test_connect_refuses_two_targets(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        aiobatch.connect(state_dir=tmp_path, socket=tmp_path / "s")
    with pytest.raises(ValueError, match="not both"):
        aiobatch.connect(socket=tmp_path / "s", url="http://127.0.0.1:1")


def test_listed_instances_and_the_log_view_link(state_dir: Path) -> None:
    with aiobatch.connect(state_dir=state_dir, logview="127.0.0.1:0") as o:
        first = o.submit({"name": "one", "tasks": [{"name": "a", "command": "true"}]})
        first.wait_for_success(timeout=60)
        [listed] = o.list_instances(limit=1)
        assert (listed.id, listed.name, listed.get_task_names()) == (first.id, "one", ["a"])
        link = listed.get_logview_address(hours=1)
        assert link is not None and f"/ui/jobs/{first.id}?link=" in link
        with pytest.raises(ValueError, match="hours"):
            listed.get_logview_address(hours=0)


def test_a_connection_left_open_is_closed_at_exit(state_dir: Path) -> None:
    script = (
        "import atexit, sys, aiobatch\n"
        "o = None\n"
        # Registered first, so it runs last: after the connection's own exit hook.
        "atexit.register(lambda: print('closed at exit:', o.closed, flush=True))\n"
        "o = aiobatch.connect(state_dir=sys.argv[1])\n"
        "o.submit({'name': 'n', 'tasks': [{'name': 't', 'command': 'true'}]})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "closed at exit: True" in done.stdout
    assert "Traceback" not in done.stderr
    with aiobatch.connect(state_dir=state_dir) as o:
        [job] = o.list_instances()
        job.wait_for_completion(timeout=60)  # recovered and finished by the next runtime
        assert job.status is Status.TERMINATED


def test_close_ends_a_wait_in_another_thread(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 1)
    o = aiobatch.connect(state_dir=state_dir)
    inst = o.submit(held(gates))
    started = threading.Event()
    outcome: list[BaseException] = []

    def waiter() -> None:
        started.set()
        try:
            inst.wait_for_completion()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait(10)
    deadline = time.monotonic() + 10
    while not o.call(calls_in_flight, o) > 1:  # the waiter's call is in the loop (and this one)
        assert time.monotonic() < deadline
    o.close()  # would wait for the job without cancelling the call
    thread.join(10)
    assert not thread.is_alive() and [type(exc) for exc in outcome] == [ConnectionClosed]
    with aiobatch.connect(state_dir=state_dir) as again:
        release(gates, 0)  # the job went on; the next runtime sees it end
        assert again.get_instance(inst.id).wait_for_success(timeout=60).status == "SUCCEEDED"


@pytest.mark.anyio
async def test_a_service_over_http_with_a_token(service: Service) -> None:
    service.config.write_text('[server]\nhttp = "127.0.0.1:0"\ntoken = "t0k3n"\n')
    await service.start()
    with aiobatch.connect(socket=service.socket) as local:
        first = local.submit({"name": "first", "tasks": [{"name": "a", "command": "true"}]})
        link = first.get_logview_address(hours=2)
    assert link is not None
    url = link.split("/ui/", 1)[0]

    def script() -> None:
        with aiobatch.connect(url=url, token="t0k3n") as o:
            inst = check_a_failing_job(o)
            page = inst.get_logview_address(hours=2)
            assert page is not None and page.startswith(f"{url}/ui/jobs/{inst.id}?link=")
        with aiobatch.connect(url=url, token="wrong") as o, pytest.raises(RequestRefused) as no:
            o.exist_instance(first.id)  # the async client's error, as it raises it
        assert no.value.status == 401

    await anyio.to_thread.run_sync(script)
