"""A spawner stalled past the runtime's patience (stopped, or stuck in a system call) never
starts what the runtime has given up on: that attempt is counted lost and run again, so a
late start would run it twice. Real spawner processes, real SIGSTOP and SIGCONT."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.executors import _launch as launch
from aiobatch.executors import spawner as spawner_module
from aiobatch.executors.spawner import Spawner, SpawnerGone
from tests.helpers import process_alive, spawn_attempt

pytestmark = pytest.mark.anyio

PATIENCE_S = 3.0  # the runtime's wait for a start's answer, shortened; it refuses from 2.25 s


async def start(spawner: Spawner, root: Path, index: int) -> None:
    """Start a program that leaves a mark, and wait for its end."""
    argv = ["touch", str(root / f"ran-{index}")]
    started = await spawn_attempt(spawner, argv, index, work=root / "work", logs=root / "logs")
    assert (await spawner.wait(started)).exit_code == 0


async def test_a_start_given_up_on_during_a_stall_never_runs(tmp_path: Path) -> None:
    spawner = Spawner(reply_timeout_s=PATIENCE_S)
    await spawner.open()
    assert spawner.pid is not None
    try:
        os.kill(spawner.pid, signal.SIGSTOP)
        try:
            with pytest.raises(SpawnerGone):
                await start(spawner, tmp_path, 0)
        finally:
            os.kill(spawner.pid, signal.SIGCONT)
        # Answered in order: by the time this one ran, the stalled request was read.
        await start(spawner, tmp_path, 1)
    finally:
        await spawner.aclose()
    assert (tmp_path / "ran-1").exists()
    assert not (tmp_path / "ran-0").exists()
    # Refused before any trace of a start: the journal has lines of the second start only.
    lines = (tmp_path / "logs" / ".attempts").read_text().split()
    assert lines and {json.loads(line)["key"][2] for line in lines} == {"1"}


async def test_a_job_whose_spawner_stalls_runs_each_instance_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawner_module, "REPLY_TIMEOUT_S", PATIENCE_S)
    marks = tmp_path / "marks"
    spec = {
        "name": "stall",
        "tasks": [{"name": "t", "command": f"echo $AIOBATCH_ATTEMPT >> {marks}"}],
    }
    async with Runtime(tmp_path / "state") as rt:
        warm = await rt.submit({"name": "warm", "tasks": [{"name": "w", "command": "true"}]})
        await rt.wait_job(warm.id)  # the spawner runs now
        [spawner] = rt.executors["local"]._spawners  # type: ignore[attr-defined]
        lost = anyio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, InstanceStateChanged) and event.reason == "runtime_lost":
                lost.set()

        unsubscribe = rt.on_event(on_event)
        os.kill(spawner.pid, signal.SIGSTOP)
        try:
            job = await rt.submit(spec)
            with anyio.fail_after(30):
                await lost.wait()  # its first attempt was given up on, uncharged
        finally:
            os.kill(spawner.pid, signal.SIGCONT)
            unsubscribe()
        with anyio.fail_after(60):
            snapshot = await job.wait_for_completion()
        assert snapshot.status == "SUCCEEDED", json.dumps(snapshot.tasks["t"].reason)
    attempts = marks.read_text().split()
    assert len(attempts) == 1 and attempts != ["1"], attempts


def test_a_start_whose_preparation_outlasted_its_expiry_is_not_made(tmp_path: Path) -> None:
    # Making the work dir (for a task run as another user: handing over its whole tree) came
    # after the request was read in time; the check before the spawn itself still holds.
    read, write = os.pipe()
    try:
        launch.prepare(str(tmp_path / "work"), None)
        with pytest.raises(launch.Expired):
            launch.start(
                ["touch", str(tmp_path / "ran")],
                str(tmp_path / "work"),
                {"PATH": os.environ["PATH"]},
                write,
                write,
                None,
                time.monotonic() - 1,
            )
    finally:
        os.close(read)
        os.close(write)
    assert (tmp_path / "work").is_dir() and not (tmp_path / "ran").exists()


async def test_a_refusal_heard_before_the_runtime_gives_up_is_lost_not_failed(
    tmp_path: Path,
) -> None:
    """Resumed after the request expired but before the runtime stopped waiting, the spawner
    refuses it, and the runtime hears so in time: the attempt is lost (run again uncharged),
    not failed (charged to the task)."""
    spawner = Spawner(reply_timeout_s=PATIENCE_S)
    await spawner.open()
    assert spawner.pid is not None
    outcome: list[BaseException] = []

    async def ask() -> None:
        try:
            await start(spawner, tmp_path, 0)
        except Exception as exc:  # what the runtime would see
            outcome.append(exc)

    try:
        os.kill(spawner.pid, signal.SIGSTOP)
        asked = anyio.current_time()
        async with anyio.create_task_group() as asking:
            asking.start_soon(ask)
            await anyio.sleep_until(asked + PATIENCE_S * 0.85)  # past 0.75: expired
            os.kill(spawner.pid, signal.SIGCONT)
        heard = anyio.current_time() - asked
    finally:
        os.kill(spawner.pid, signal.SIGCONT)
        await spawner.aclose()
    assert len(outcome) == 1 and type(outcome[0]) is SpawnerGone, outcome
    assert heard < PATIENCE_S  # the refusal itself was heard, not the timeout
    assert not (tmp_path / "ran-0").exists()


async def test_a_start_heard_after_the_runtime_gave_up_is_killed(tmp_path: Path) -> None:
    """A start whose answer comes after the runtime stopped waiting (a stall between the
    spawner's last check and its answer) is killed at once: its attempt runs again."""
    spawner = Spawner()
    await spawner.open()
    try:
        started = await spawn_attempt(
            spawner, ["sleep", "60"], 0, work=tmp_path / "work", logs=tmp_path / "logs"
        )
        # Its answer as it would come for a request no longer waited for.
        late = {"op": "started", "id": started.id + 1000, "pid": started.pid}
        spawner._deliver({**late, "mono": started.mono, "wall": started.wall})
        with anyio.fail_after(10):
            exited = await spawner.wait(started)
    finally:
        await spawner.aclose()
    assert exited.signal == signal.SIGKILL


async def test_requests_that_find_the_socket_full_go_in_order_once_it_has_room(
    tmp_path: Path,
) -> None:
    """A stopped spawner reads nothing: what its socket cannot take waits, whole and in
    order, and goes once the spawner reads again. Every start is answered and runs once."""
    padding = "x" * 65536  # each request ~64 KiB: a few fill the socket's buffer
    count = 40

    async def start_padded(index: int) -> None:
        argv = ["sh", "-c", 'echo "$2" >> "$0"', str(tmp_path / "ran"), padding, str(index)]
        started = await spawn_attempt(
            spawner, argv, index, work=tmp_path / "work", logs=tmp_path / "logs"
        )
        assert (await spawner.wait(started)).exit_code == 0

    spawner = Spawner()
    await spawner.open()
    assert spawner.pid is not None and spawner._sock is not None
    # A small send buffer, whatever the machine's default: 40 requests cannot all fit.
    spawner._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    try:
        with anyio.fail_after(60):
            os.kill(spawner.pid, signal.SIGSTOP)
            try:
                async with anyio.create_task_group() as group:
                    for index in range(count):  # asked in this order: tasks start in order
                        group.start_soon(start_padded, index)
                    await anyio.wait_all_tasks_blocked()
                    assert len(spawner._outbox) > 65536  # the socket is full: the rest waits
                    os.kill(spawner.pid, signal.SIGCONT)
            finally:
                os.kill(spawner.pid, signal.SIGCONT)
    finally:
        await spawner.aclose()
    # Each ran once; the spawner read the requests in the order they were asked (its key
    # lines, written as it reads each one, say which).
    assert sorted(map(int, (tmp_path / "ran").read_text().split())) == list(range(count))
    lines = (tmp_path / "logs" / ".attempts").read_bytes().split(b"\n")
    heads = [json.loads(line) for line in lines if line.startswith(b'{"key"')]
    keys = [head["key"] for head in heads if "runtime" in head]  # not the pid or exit lines
    assert [int(key[2]) for key in keys] == list(range(count))


async def test_a_spawner_that_sends_what_makes_no_sense_closes_with_all_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame that cannot be read ends the link: the waiters hear the spawner is gone. It is
    asked to close before that, and closing it waits for it: it kills what it runs, strays
    included, and goes by itself."""
    fifo = tmp_path / "stray"
    os.mkfifo(fifo)
    spawner = Spawner()
    await spawner.open()
    process = spawner._process
    assert process is not None
    argv = ["sh", "-c", f'setsid sleep 300 & echo $! > "{fifo}"; exec sleep 300']
    running = await spawn_attempt(spawner, argv, 0, work=tmp_path / "work", logs=tmp_path / "logs")
    with anyio.fail_after(10):
        stray = int(await anyio.to_thread.run_sync(fifo.read_text, abandon_on_cancel=True))

    def garbled(_: bytes) -> dict[str, object]:
        raise ValueError("bad marshal data")

    monkeypatch.setattr(spawner_module, "_decode", garbled)
    try:
        with anyio.fail_after(10), pytest.raises(SpawnerGone):
            await start(spawner, tmp_path, 1)
    finally:
        with anyio.fail_after(spawner_module.CLOSE_TIMEOUT_S / 2):
            await spawner.aclose()
    assert process.poll() == 0  # it closed, not killed
    assert not process_alive(running.pid) and not process_alive(stray)


async def test_closing_a_stopped_spawner_from_a_cancelled_scope_still_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while the spawner is stopped: closing it, cancelled, still kills it, stops
    watching its socket and closes it, within its time limits."""
    monkeypatch.setattr(spawner_module, "CLOSE_TIMEOUT_S", 0.5)
    spawner = Spawner()
    await spawner.open()
    process = spawner._process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    with anyio.fail_after(10):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await spawner.aclose()
    assert process.poll() == -signal.SIGKILL
    assert spawner.gone and spawner._sock is None
