"""A task's processes never outlive its instance: a setsid daemon and a double-forked process
are killed when the instance ends, when it is stopped, and when ``aiobatch run`` is
interrupted. Real processes, real signals; each death is awaited on a pidfd."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from aiobatch import Runtime
from tests.helpers import instance_is, processes_of, runtime_id, until

pytestmark = pytest.mark.anyio

# Leaves two processes behind that are in no group of the instance: one in a session of its
# own (setsid), one double-forked (its parent exits at once). Their pids go to $1; the script
# returns once both are written.
ESCAPE = """\
setsid sh -c 'echo $$ >> "$0"; exec sleep 1000' "$1" &
( sh -c 'echo $$ >> "$0"; exec sleep 1000' "$1" & )
until [ "$(wc -l < "$1")" -ge 2 ]; do sleep 0.01; done
"""


def escape_command(tmp_path: Path, then: str) -> str:
    script = tmp_path / "escape.sh"
    script.write_text(ESCAPE)
    pids = tmp_path / "pids"
    pids.touch()
    return f'sh "{script}" "{pids}"; {then}'


@contextmanager
def pidfds(pids: list[int]) -> Iterator[list[int]]:
    """Handles on the processes, taken while they run: a reused pid cannot fool them."""
    fds = [os.pidfd_open(pid) for pid in pids]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


async def all_end(fds: list[int], limit_s: float = 10) -> None:
    with anyio.fail_after(limit_s):
        for fd in fds:
            await anyio.wait_readable(fd)


def escaped(tmp_path: Path) -> list[int]:
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    return pids


async def test_processes_left_behind_are_killed_when_the_instance_ends(
    state_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    command = escape_command(tmp_path, f'read _ < "{gate}"')
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit({"name": "leaves", "tasks": [{"name": "t", "command": command}]})
            await until(events, instance_is("t", "RUNNING"))

        with contextlib.ExitStack() as stack:

            def open_gate() -> list[int]:
                # Opens once the instance reads: the escape script has written both pids.
                # Their handles are taken before the instance is let go: it ends at once.
                with gate.open("w") as fifo:
                    fds = stack.enter_context(pidfds(escaped(tmp_path)))
                    fifo.write("go\n")
                    return fds

            fds = await anyio.to_thread.run_sync(open_gate)
            snapshot = await job.wait_for_success()
            await all_end(fds)
        assert snapshot.status == "SUCCEEDED"
        assert processes_of(runtime_id(rt.state_dir)) == []


async def test_processes_left_behind_are_killed_when_the_instance_is_stopped(
    state_dir: Path, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    command = escape_command(tmp_path, f'echo ready > "{ready}"; exec sleep 1000')
    async with Runtime(state_dir) as rt:
        job = await rt.submit({"name": "stopped", "tasks": [{"name": "t", "command": command}]})

        def wait_ready() -> list[int]:
            with ready.open() as fifo:
                fifo.read()
            return escaped(tmp_path)

        pids = await anyio.to_thread.run_sync(wait_ready)
        with pidfds(pids) as fds:
            await rt.stop_instance(job.id, "t", 0)
            snapshot = await job.wait_for_completion()
            await all_end(fds)
        assert snapshot.status == "CANCELLED"
        assert processes_of(runtime_id(rt.state_dir)) == []


def test_processes_left_behind_are_killed_when_aiobatch_run_is_interrupted(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    os.mkfifo(ready)
    command = escape_command(tmp_path, f'echo ready > "{ready}"; exec sleep 1000')
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: j\ntasks:\n  - name: t\n    command: '{command}'\n")
    run = subprocess.Popen(
        [sys.executable, "-m", "aiobatch", "run", str(spec), "--quiet"],
        env={**os.environ, "AIOBATCH_STATE_DIR": str(tmp_path / "state")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with ready.open() as fifo:
        fifo.read()
    with pidfds(escaped(tmp_path)) as fds:
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=30)
        assert run.returncode == 130, err
        anyio.run(all_end, fds)
    runtime_id = (tmp_path / "state" / "runtime-id").read_text().strip()
    assert processes_of(runtime_id) == []
