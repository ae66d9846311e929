"""``aiobatch serve`` as a real process: systemd's notify protocol, SIGTERM, and kill -9.

Each service is started the way systemd starts it: a datagram socket is its NOTIFY_SOCKET,
and the test waits for READY=1 before talking to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import aiodocker
import anyio
import pytest

from aiobatch import RuntimeClosed
from aiobatch.events import InstanceStateChanged
from tests.helpers import Gates, process_alive, processes_of
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.service import (
    AIOBATCH,
    Service,
    stored_events,
    submit_and_see_running,
)

pytestmark = pytest.mark.anyio


async def test_ready_then_sigterm_drains_and_refuses_submissions(
    service: Service, tmp_path: Path
) -> None:
    service.config.write_text('shutdown_grace = "60s"\n')
    gates = Gates(tmp_path / "gates", 1)
    await service.start(WATCHDOG_USEC="200000")
    assert (service.socket.stat().st_mode & 0o777) == 0o600
    assert await service.message() == "WATCHDOG=1"  # fed from the event loop
    spec = {"name": "drained", "tasks": [{"name": "t", "command": gates.command}]}
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 1)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        while (message := await service.message()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1"
        # Draining: queries answer, submissions are refused, the running instance goes on.
        assert (await client.job_snapshot(job.id)).status == "RUNNING"
        with pytest.raises(RuntimeClosed):
            await client.submit(spec)
        await gates.release(0)
    with anyio.fail_after(30):  # well before the 60 s grace: it ended when the job did
        assert await service.process.wait() == 0
    with sqlite3.connect(service.state_dir / "aiobatch.db") as db:
        [(state,)] = db.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchall()
    assert state == "SUCCEEDED"
    assert not service.socket.exists()


async def test_kill_9_mid_job_loses_no_job_and_finishes_every_instance(
    service: Service, tmp_path: Path
) -> None:
    service.config.write_text("[compute_envs.local]\nslots = 4\n")
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    runs.mkdir()
    count_then_wait = (
        f'echo run >> "{runs}/$AIOBATCH_INSTANCE_INDEX"; '
        f'until test -e "{gate}"; do sleep 0.02; done'
    )
    # Default retries (none): nothing that the crash does may be charged to the task.
    spec = {"name": "forty", "tasks": [{"name": "t", "instances": 40, "command": count_then_wait}]}
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 4)
        # Accepted just before the kill: submit returned, so it must survive.
        late = await client.submit({"name": "late", "tasks": [{"name": "a", "command": "true"}]})
    await service.kill()
    with sqlite3.connect(service.state_dir / "aiobatch.db") as db:
        running = db.execute("SELECT idx, pid FROM instances WHERE state = 'RUNNING'").fetchall()
    assert len(running) == 4 and all(process_alive(pid) for _, pid in running)

    await service.start()
    # Adopted by the new service: they run on, to be waited for, never started again.
    assert all(process_alive(pid) for _, pid in running)
    gate.touch()
    async with service.client() as client:
        done = await client.wait_job(job.id)
        result = await client.task_result(job.id, "t")
        assert (await client.wait_job(late.id)).status == "SUCCEEDED"
    assert done.status == "SUCCEEDED"
    instances = result.instances or []
    assert [(i.status, i.attempts) for i in instances] == [("SUCCEEDED", 1)] * 40
    counts = [len((runs / str(i)).read_text().splitlines()) for i in range(40)]
    assert counts == [1] * 40, "each instance ran exactly once"
    assert not any(process_alive(pid) for _, pid in running)
    runtime_id = (service.state_dir / "runtime-id").read_text().strip()
    assert processes_of(runtime_id) == []


async def test_a_stop_asked_for_before_a_crash_still_holds_after_it(
    service: Service, tmp_path: Path
) -> None:
    # It ignores SIGTERM: with a long kill_grace, the stop is still under way at the crash.
    service.config.write_text('kill_grace = "60s"\n')
    gate = tmp_path / "gate"
    command = f"trap '' TERM; until test -e \"{gate}\"; do sleep 0.05; done"
    spec = {"name": "stopped", "tasks": [{"name": "t", "command": command}]}
    await service.start()
    async with service.client() as client:
        job, [running] = await submit_and_see_running(client, spec, 1)
        await client.stop_instance(job.id, "t", 0)
        await client.list_jobs()  # answers once all so far is stored
    await service.kill()
    assert running.pid is not None and process_alive(running.pid)

    service.config.write_text('kill_grace = "1s"\n')
    await service.start()
    async with service.client() as client:
        with anyio.fail_after(30):
            done = await client.wait_job(job.id)
        result = await client.task_result(job.id, "t")
    # Stopped again by the runtime that adopted it, not left to run on.
    assert done.status == "CANCELLED"
    assert [(i.status, i.reason, i.attempts) for i in result.instances or []] == [
        ("CANCELLED", "stopped_by_user", 1)
    ]
    assert not process_alive(running.pid)


async def test_a_stall_turns_no_success_into_a_timeout(service: Service, tmp_path: Path) -> None:
    """SIGSTOP of the service while instances end, past their deadlines: an exit before the
    deadline is a success, one after it a timeout, however late the service sees them."""
    service.config.write_text("[compute_envs.local]\nslots = 4\n")
    gates = tmp_path / "gates"
    gates.mkdir()
    for name in ("quick-0", "quick-1", "slow-0"):
        os.mkfifo(gates / name)
    wait = f'read _ < "{gates}/$AIOBATCH_TASK_NAME-$AIOBATCH_INSTANCE_INDEX"'
    spec = {
        "name": "stalled",
        "tasks": [
            {"name": "quick", "instances": 2, "timeout": "4s", "command": wait},
            # Ends 1.2 s after its gate opens, so after its deadline: a real timeout.
            {
                "name": "slow",
                "timeout": "1s",
                "on_failure": "continue",
                "command": f"{wait}; sleep 1.2",
            },
        ],
    }
    await service.start()
    async with service.client() as client:
        job, running = await submit_and_see_running(client, spec, 3)
    assert service.process is not None
    service.process.send_signal(signal.SIGSTOP)
    try:
        with contextlib.ExitStack() as stack:
            fds = [os.pidfd_open(e.pid or 0) for e in running]
            for fd in fds:
                stack.callback(os.close, fd)

            def release(name: str) -> None:
                with (gates / name).open("w") as fifo:
                    fifo.write("go\n")

            for name in ("quick-0", "quick-1", "slow-0"):
                await anyio.to_thread.run_sync(release, name)
            with anyio.fail_after(10):
                for fd in fds:
                    await anyio.wait_readable(fd)  # every instance has ended, unseen
        # The stall outlasts every deadline (4 s from the latest start), not only the exits.
        latest = max(e.started_at or 0 for e in running)
        await anyio.sleep(max(0.0, latest + 4.2 - time.time()))
    finally:
        service.process.send_signal(signal.SIGCONT)
    async with service.client() as client:
        done = await client.wait_job(job.id)
        quick = await client.task_result(job.id, "quick")
        slow = await client.task_result(job.id, "slow")
    assert [(i.status, i.reason, i.exit_code) for i in quick.instances or []] == [
        ("SUCCEEDED", None, 0)
    ] * 2
    assert all((i.duration_s or 0) < 4 for i in quick.instances or [])
    [late] = slow.instances or []
    assert (late.status, late.reason) == ("FAILED", "timeout")
    assert (late.duration_s or 0) > 1
    assert (done.status, done.reason) == ("FAILED", "task_failed: slow")


async def test_kill_9_mid_docker_job_readopts_containers(
    engine: aiodocker.Docker, service: Service
) -> None:
    service.config.write_text(
        'kill_grace = "1s"\n[compute_envs.docker]\nkind = "docker"\n'
        f"hosts = [{docker_hosts()[0]!r}]\nslots = 4\n".replace("'", '"')
    )
    spec = {
        "name": "boxes",
        "tasks": [
            {
                "name": "box",
                "image": IMAGE,
                "instances": 3,
                "command": "echo start; while [ ! -e go ]; do sleep 0.05; done; echo end",
            }
        ],
    }
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 3)
    await service.kill()
    work = service.state_dir / "work" / job.id / "box"
    for index in range(3):
        (work / str(index) / "go").touch()  # the containers run on without the service

    await service.start()
    async with service.client() as client:
        done = await client.wait_job(job.id)
        result = await client.task_result(job.id, "box")
    assert done.status == "SUCCEEDED"
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)] * 3
    staged = [
        e
        for e in stored_events(service.state_dir, job.id)
        if isinstance(e, InstanceStateChanged) and e.state == "STAGING"
    ]
    assert len(staged) == 3, "no attempt was started twice"
    logs = service.state_dir / "logs" / job.id / "box"
    assert {(logs / f"{i}.stdout").read_text() for i in range(3)} == {"start\nend\n"}
    runtime_label = (service.state_dir / "runtime-id").read_text().strip()
    leftovers = await engine.containers.list(
        all=True, filters=f'{{"label": ["aiobatch.runtime={runtime_label}"]}}'
    )
    assert leftovers == []


async def cli(*args: str, socket: Path) -> tuple[int, str, str]:
    result = await anyio.run_process([str(AIOBATCH), *args, "--socket", str(socket)], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_cli_client_commands(service: Service, tmp_path: Path) -> None:
    await service.start()
    sock = service.socket
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: cli\ntasks:\n"
        "  - {name: a, instances: 2, command: 'echo out $AIOBATCH_INSTANCE_INDEX; echo err >&2'}\n"
        f"  - {{name: b, depends_on: [a], command: 'test -e {tmp_path}/fixed'}}\n"
    )
    code, out, _ = await cli("submit", str(spec), "--json", socket=sock)
    assert code == 0
    job_id = json.loads(out)["id"]
    code, out, _ = await cli("wait", job_id, socket=sock)
    assert code == 1 and f"job {job_id} (cli) FAILED (task_failed: b)" in out
    code, out, _ = await cli("progress", job_id, socket=sock)
    assert code == 0  # PyODPS' string over the job: time, then each task and a tab
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d a:0/2/2\[100%\]\tb:0/1/1\[100%\]\t\n", out)
    code, out, _ = await cli("logs", job_id, "a", "1", socket=sock)
    assert (code, out) == (0, "out 1\n")
    code, out, _ = await cli("logs", job_id, "a", "1", "--stderr", socket=sock)
    assert (code, out) == (0, "err\n")
    code, _, err = await cli("logs", job_id, "a", "5", socket=sock)
    assert code == 2 and "has no instance 5" in err
    (tmp_path / "fixed").touch()
    code, out, _ = await cli("retry", job_id, socket=sock)
    assert (code, out) == (0, f"job {job_id} RUNNING\n")
    code, out, _ = await cli("wait", job_id, "--json", socket=sock)
    assert code == 0 and json.loads(out)["status"] == "SUCCEEDED"
    code, _, err = await cli("retry", job_id, socket=sock)
    assert code == 2 and "only FAILED or CANCELLED" in err
    code, out, _ = await cli("jobs", "--json", socket=sock)
    assert [job["id"] for job in json.loads(out)] == [job_id]
    code, _, err = await cli("status", "no-such-job", socket=sock)
    assert code == 2 and "no job with id 'no-such-job'" in err

    # --watch without a terminal: a line per task state change, then the summary.
    code, out, err = await cli("submit", str(spec), "--watch", socket=sock)
    assert code == 0, err
    assert "a:0/2/2[100%] SUCCEEDED" in err and "b:0/1/1[100%] SUCCEEDED" in err
    assert "SUCCEEDED" in out.splitlines()[1]


async def test_cli_says_which_socket_it_cannot_reach(tmp_path: Path) -> None:
    code, _, err = await cli("jobs", socket=tmp_path / "nothing.sock")
    assert code == 3
    assert f"cannot reach the aiobatch service at {tmp_path / 'nothing.sock'}" in err


async def test_tcp_listener_without_token_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "aiobatch.toml"
    config.write_text('[server]\nhttp = "127.0.0.1:0"\n')
    socket = tmp_path / "ctl.sock"
    result = await anyio.run_process(
        [
            str(AIOBATCH),
            "serve",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "s"),
            "--socket",
            str(socket),
        ],
        check=False,
    )
    assert result.returncode == 2
    assert "$.server.tokens: a token is required when $.server.http" in result.stderr.decode()
    assert not socket.exists() and not (tmp_path / "s").exists()


async def test_status_gives_the_job_page_when_the_service_serves_http(service: Service) -> None:
    service.config.write_text('[server]\nhttp = "127.0.0.1:0"\ntoken = "t0k3n"\n')
    await service.start()
    async with service.client() as client:
        job = await client.submit({"name": "seen", "tasks": [{"name": "a", "command": "true"}]})
        address = await job.get_logview_address()
    assert address is not None and address.startswith("http://127.0.0.1:")
    page, _, link = address.partition("?link=")
    assert page.endswith(f"/ui/jobs/{job.id}") and link and "t0k3n" not in address
    code, out, _ = await cli("status", job.id, socket=service.socket)
    assert code == 0 and any(line.startswith(f"logview: {page}?link=") for line in out.splitlines())
