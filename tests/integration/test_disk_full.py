"""A full disk degrades the service, never crashes it: a state dir on a small tmpfs, filled by a
task's output or by a filler file. Submissions are refused (507, exit code 4) while queries
answer; state changes wait in memory; everything resumes once there is space again."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from aiobatch import JobState, Runtime, StateDirUnwritable
from aiobatch.client import Client
from aiobatch.events import InstanceStateChanged, JobSubmitted
from tests.helpers import process_alive
from tests.integration.service import (
    AIOBATCH,
    Service,
    stored_events,
    submit_and_see_running,
)
from tests.integration.test_recovery import running_pids, runtime_child, spawner_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs: mounting one needs root, which CI has."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full tests need root to mount a tmpfs")
        pytest.skip("the disk-full tests need root to mount a tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
async def full_service(small_disk: Path) -> AsyncIterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))  # sockets: short paths, off the tmpfs
    service = Service(root, small_disk / "state", "[compute_envs.local]\nslots = 2\n")
    try:
        yield service
    finally:
        await service.close()
        service.clean_up()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    block = bytes(1 << 20)
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    small = bytes(4096)
    with path.open("ab", buffering=0) as f:
        try:
            while True:
                f.write(small)
        except OSError:
            pass


async def until_status(client: Client, status: str) -> None:
    # No event tells a client that the disk filled or has room again; health is what says.
    with anyio.fail_after(30):
        while (await client.health())["status"] != status:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def cli_submit(spec: Path, sock: Path) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process(
        [str(AIOBATCH), "submit", str(spec), "--socket", str(sock)], check=False
    )


async def test_a_task_writing_to_a_full_disk_is_paused_and_loses_no_output(
    full_service: Service, tmp_path: Path
) -> None:
    service = full_service
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # Once let go, it writes 6.9 MB of numbered lines: more than a full disk takes.
    command = f'read _ < "{gate}"; seq 1 1000000'
    spec = {"name": "writer", "tasks": [{"name": "write", "command": command}]}
    small = tmp_path / "small.yaml"
    small.write_text("name: small\ntasks:\n  - {name: a, command: 'echo hi'}\n")
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 1)
        filler = service.state_dir / "filler"
        await anyio.to_thread.run_sync(fill, filler)
        with gate.open("w") as fifo:
            fifo.write("go\n")
        await until_status(client, "degraded")
        health = await client.health()
        assert health["logs_paused"] == 1  # its output waits; the program is blocked, not failed

        with pytest.raises(StateDirUnwritable, match=r"cannot write the state dir"):
            await client.submit({"name": "refused", "tasks": [{"name": "a", "command": "true"}]})
        refused = await cli_submit(small, service.socket)
        assert refused.returncode == 4
        assert refused.stderr.decode().count("\n") == 1 and b"Traceback" not in refused.stderr
        # Still up, still answering.
        assert (await client.get_job(job.id)).state is JobState.RUNNING
        assert [j.name for j in await client.list_jobs()] == ["writer"]

        filler.unlink()  # space returns: the copy goes on where it paused, and the program
        done = await client.wait_job(job.id)
        await until_status(client, "ok")
        accepted = await client.submit(
            {"name": "after", "tasks": [{"name": "a", "command": "true"}]}
        )
        after = await client.wait_job(accepted.id)
    assert service.process is not None and service.process.returncode is None
    assert (done.status, after.status) == ("SUCCEEDED", "SUCCEEDED")
    log = service.state_dir / "logs" / job.id / "write" / "0.stdout"
    expected = "".join(f"{n}\n" for n in range(1, 1_000_001))
    assert log.read_text() == expected, "no output was lost"
    states = [
        e.state
        for e in stored_events(service.state_dir, job.id)
        if isinstance(e, InstanceStateChanged)
    ]
    assert states == ["STAGING", "RUNNING", "UPLOADING", "SUCCEEDED"], "no change was lost"
    service.process.send_signal(signal.SIGTERM)
    assert await service.process.wait() == 0
    with sqlite3.connect(service.state_dir / "aiobatch.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        names = [name for (name,) in db.execute("SELECT name FROM jobs ORDER BY seq")]
    assert names == ["writer", "after"], "nothing of a refused job was stored"


async def test_a_filler_file_pauses_dispatch_and_charges_nothing(
    full_service: Service, tmp_path: Path
) -> None:
    service = full_service
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    spec = {
        "name": "paused",
        "tasks": [
            {"name": "first", "command": f'read _ < "{gate}"'},
            {"name": "then", "depends_on": ["first"], "instances": 3, "command": "echo done"},
        ],
    }
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 1)
        filler = service.state_dir / "filler"
        await anyio.to_thread.run_sync(fill, filler)
        with gate.open("w") as fifo:  # `first` ends on a full disk: nothing may start after it
            fifo.write("go\n")
        await until_status(client, "degraded")
        assert (await client.get_job(job.id)).state is JobState.RUNNING
        filler.unlink()
        await until_status(client, "ok")
        done = await client.wait_job(job.id)
        then = await client.task_result(job.id, "then")
    assert done.status == "SUCCEEDED"
    # Nothing was charged: each ran once, as its first attempt.
    assert [(i.status, i.attempts) for i in then.instances or []] == [("SUCCEEDED", 1)] * 3


async def test_starting_on_a_full_disk_exits_4_with_one_line(small_disk: Path) -> None:
    await anyio.to_thread.run_sync(fill, small_disk / "filler")
    spec = small_disk.parent / "job.yaml"
    spec.write_text("name: j\ntasks:\n  - {name: a, command: 'true'}\n")
    for command in (
        ["serve", "--socket", str(small_disk.parent / "s.sock")],
        ["run", str(spec)],
    ):
        result = await anyio.run_process(
            [sys.executable, "-m", "aiobatch", *command, "--state-dir", str(small_disk / "s")],
            check=False,
        )
        err = result.stderr.decode()
        assert result.returncode == 4, err
        assert err.startswith("aiobatch: cannot write the state dir") and err.count("\n") == 1


async def test_a_refused_submission_is_heard_of_by_no_watcher(small_disk: Path) -> None:
    async with Runtime(small_disk / "state") as rt:
        await anyio.to_thread.run_sync(fill, small_disk / "filler")
        async with rt.subscribe() as events:
            with pytest.raises(StateDirUnwritable):
                await rt.submit({"name": "refused", "tasks": [{"name": "a", "command": "true"}]})
            heard = []
            with contextlib.suppress(anyio.WouldBlock):
                while True:
                    heard.append(events.receive_nowait())
        (small_disk / "filler").unlink()
    assert not [e for e in heard if isinstance(e, JobSubmitted)], "a job that was never stored"
    assert await anyio.to_thread.run_sync(lambda: list((small_disk / "state").glob("logs/*"))) == []


async def until_gone(pid: int) -> None:
    """Until the process ``pid`` (not our child) has ended."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(20):
            await anyio.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def fill_the_last_page(path: Path) -> None:
    """Append a line no reader takes that ends ``path`` at a page's end: its next line then
    needs a page of its own, which a full tmpfs refuses."""
    page = os.sysconf("SC_PAGESIZE")
    size = path.stat().st_size
    pad = -(size + 2) % page
    with path.open("ab") as f:
        f.write(b"\n" + b"x" * pad + b"\n")
    assert path.stat().st_size % page == 0


async def test_an_end_the_full_disk_kept_out_of_the_journal_is_written_once_there_is_room(
    small_disk: Path, tmp_path: Path
) -> None:
    """The disk is full when an instance ends, and its runtime is killed: its spawner, left
    alone, keeps the exit line the disk refused until there is room. The next runtime adopts
    the attempt with that end instead of running it again."""
    state_dir = small_disk / "state"
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    command = f'echo run >> "{runs}"; until test -e "{gate}"; do sleep 0.02; done'
    spec = {"name": "held", "tasks": [{"name": "t", "command": command}]}
    pidfile = tmp_path / "runtime.pid"
    with runtime_child(state_dir, pidfile, {}, json.dumps(spec), "--running", "1") as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "running"
        spawner = spawner_of(child.pid)
        (pid,) = running_pids(state_dir, job_id)
        fill_the_last_page(state_dir / "logs" / job_id / ".attempts")
        await anyio.to_thread.run_sync(fill, small_disk / "filler")
        gate.touch()
        await until_gone(pid)  # its end is heard of; its exit line finds no room
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    journal = state_dir / "logs" / job_id / ".attempts"
    assert b'"status"' not in journal.read_bytes()  # no exit line: no room for it
    assert process_alive(spawner)  # it waits for room, its runtime gone
    (small_disk / "filler").unlink()
    await until_gone(spawner)  # it wrote what it owed, then went
    assert b'"status"' in journal.read_bytes()

    async with Runtime(state_dir) as rt:
        job = await rt.get_job(job_id)
        with anyio.fail_after(20):
            await job.wait_for_success()
        result = await job.get_task_result("t")
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)]
    assert runs.read_text().splitlines() == ["run"], "adopted with its end, not run again"
