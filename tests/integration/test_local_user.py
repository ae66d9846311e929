"""A local task with ``user`` runs as that user, for real: its uid, the files it makes, and the
processes it leaves behind, which still go when it ends. Needs a runtime that may switch users
(root here); the user is ``nobody``."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiobatch import JobFailed, Runtime
from aiobatch.users import may_switch_user
from tests.helpers import instance_is, processes_of, runtime_id, until
from tests.integration.test_processes import ESCAPE, all_end, pidfds

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not may_switch_user(), reason="the runtime may not switch users here"),
]

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A dir that nobody may use (a test's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="aiobatch-user-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_a_local_task_runs_as_its_user(state_dir: Path, shared: Path) -> None:
    script, pids, gate = shared / "escape.sh", shared / "pids", shared / "gate"
    script.write_text(ESCAPE)
    pids.touch()
    pids.chmod(0o666)
    os.mkfifo(gate, 0o666)
    command = (
        f'id -u; id -g; touch "{shared}/made" here; stat -c %u here; '
        f'sh "{script}" "{pids}"; read _ < "{gate}"'
    )
    spec = {"name": "as-nobody", "tasks": [{"name": "t", "command": command, "user": "nobody"}]}
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
        with contextlib.ExitStack() as stack:

            def open_gate() -> list[int]:
                # Opens once the instance reads: both escaped pids are written by then.
                with gate.open("w") as fifo:
                    fds = stack.enter_context(pidfds(escaped(pids)))
                    fifo.write("go\n")
                    return fds

            fds = await anyio.to_thread.run_sync(open_gate)
            snapshot = await job.wait_for_success()
            await all_end(fds)  # the setsid'd and double-forked strays were killed
        assert snapshot.status == "SUCCEEDED"
        assert processes_of(runtime_id(rt.state_dir)) == []
        out = await rt.read_log(job.id, "t", 0)
    uid, gid = str(NOBODY.pw_uid), str(NOBODY.pw_gid)
    # Its ids; and its work dir was its own: it made a file there, owned by it.
    assert out.decode().split() == [uid, gid, uid]
    assert (shared / "made").stat().st_uid == NOBODY.pw_uid


async def test_a_group_given_with_the_user(state_dir: Path, shared: Path) -> None:
    spec = {
        "name": "as-nobody-root",
        "tasks": [{"name": "t", "command": "id -u; id -g; id -G", "user": "nobody:0"}],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
        out = await rt.read_log(job.id, "t", 0)
    assert out.decode().split() == [str(NOBODY.pw_uid), "0", "0"]


async def test_a_program_the_user_may_not_run_fails_to_start(state_dir: Path, shared: Path) -> None:
    program = shared / "private.sh"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o700)  # root's only
    spec = {"name": "denied", "tasks": [{"name": "t", "command": [str(program)], "user": "nobody"}]}
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        with pytest.raises(JobFailed):
            await job.wait_for_success()
        result = await job.get_task_result("t")
    [instance] = result.instances or []
    assert instance.reason == f"exec_failed: {program}: Permission denied"


def escaped(pids: Path) -> list[int]:
    found = [int(line) for line in pids.read_text().split()]
    assert len(found) == 2
    return found


async def test_it_holds_only_its_standard_streams(state_dir: Path) -> None:
    # `ls` opens the directory it lists: fd 3 is its own; anything above leaked from us.
    spec = {
        "name": "fds",
        "tasks": [{"name": "t", "command": ["ls", "/proc/self/fd"], "user": "nobody"}],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
        out = await rt.read_log(job.id, "t", 0)
    assert out.decode().split() == ["0", "1", "2", "3"]


async def test_a_task_run_as_another_user_reads_nothing_of_other_jobs(shared: Path) -> None:
    """The state dir lets another user pass to its own work dir, not list the jobs' dirs,
    nor read their logs or the database (a job's spec and environment)."""
    state = shared / "state"
    spy = (
        f"ls {state}/work; cat {state}/logs/*/t/0.stdout; cat {state}/aiobatch.db; "
        f"ls {state}/logs; pwd > mine; cat mine"
    )
    async with Runtime(state) as rt:
        first = await rt.submit({"name": "a", "tasks": [{"name": "t", "command": "echo s3cr3t"}]})
        await first.wait_for_success()
        task = {"name": "t", "command": spy, "user": "nobody", "on_failure": "continue"}
        job = await rt.submit({"name": "b", "tasks": [task]})
        await job.wait_for_completion()
        out = (state / "logs" / job.id / "t" / "0.stdout").read_text()
        err = (state / "logs" / job.id / "t" / "0.stderr").read_text()
    assert "s3cr3t" not in out and first.id not in out
    assert out.strip().endswith(f"/work/{job.id}/t/0")  # its own work dir: reached
    assert err.count("Permission denied") == 4, err
