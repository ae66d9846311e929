"""Test helpers: waiting on bus events, gates that hold an instance until released, child
processes, and starts asked of a spawner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

import aiobatch.executors
from aiobatch import Runtime
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.executors.spawner import Spawner, Started


async def until(
    stream: AsyncIterator[Event],
    predicate: Callable[[Event], bool],
    limit_s: float = 20,
) -> Event:
    """The first event from ``stream`` that matches (a safety limit, not synchronisation)."""
    with anyio.fail_after(limit_s):
        async for event in stream:
            if predicate(event):
                return event
    raise AssertionError("event stream ended")


async def until_each(
    stream: AsyncIterator[Event], task: str, state: str, indexes: Iterable[int]
) -> None:
    """Until each of these instances has reached ``state``, in any order: starts made at the
    same time may run in two spawners, and reach RUNNING in either order."""
    waiting = set(indexes)
    matches = instance_is(task, state)

    def one_of_them(event: Event) -> bool:
        return matches(event) and isinstance(event, InstanceStateChanged) and event.index in waiting

    while waiting:
        event = await until(stream, one_of_them)
        assert isinstance(event, InstanceStateChanged)
        waiting.discard(event.index)


def instance_is(task: str, state: str, index: int | None = None) -> Callable[[Event], bool]:
    def match(event: Event) -> bool:
        return (
            isinstance(event, InstanceStateChanged)
            and event.task == task
            and event.state == state
            and (index is None or event.index == index)
        )

    return match


class Gates:
    """One FIFO per instance index: ``command`` blocks until ``release(index)``."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            os.mkfifo(root / str(index))

    @property
    def command(self) -> str:
        return f'read _ < "{self.root}/$AIOBATCH_INSTANCE_INDEX"'

    async def release(self, index: int) -> None:
        def open_and_write() -> None:
            # Blocks until the instance opens its end: it may not have got there yet.
            with open(self.root / str(index), "w") as fifo:
                fifo.write("go\n")

        await anyio.to_thread.run_sync(open_and_write)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def processes_of(runtime_id: str) -> list[int]:
    """Live processes that a runtime started (their environment names it), zombies excluded."""
    marker = f"AIOBATCH_RUNTIME_ID={runtime_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


async def stored(rt: Runtime, job_id: str) -> list[tuple[int, Event]]:
    """A job's history as the store has it: (seq, event), oldest first."""
    return [(entry.seq, entry.event) for entry in await rt.job_history(job_id, limit=1_000_000)]


@contextmanager
def child_process(argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A child process, its stdout a text pipe; killed if it still runs at the end, then
    reaped and its pipe closed."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()


def kill_leftovers(state_dir: Path) -> None:
    """Kill what a runtime of ``state_dir`` left running (a test that failed midway, its
    runtime killed: by design its processes outlive it). Its spawner then ends by itself."""
    try:
        ours = runtime_id(state_dir)
    except OSError:
        return
    for pid in processes_of(ours):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def runtime_id(state_dir: Path) -> str:
    """The id a state dir's runtime gives what it starts (labels, environments)."""
    return (state_dir / "runtime-id").read_text().strip()


async def spawn_attempt(
    spawner: Spawner, argv: list[str], index: int, *, work: Path, logs: Path
) -> Started:
    """Ask a spawner for a start as the local executor does: attempt 1 of instance ``index``
    of task ``t`` of job ``job`` (its key in the environment), in ``work/INDEX``, its logs
    and its journal in ``logs``."""
    env = {
        "PATH": os.environ["PATH"],
        "AIOBATCH_JOB_ID": "job",
        "AIOBATCH_TASK_NAME": "t",
        "AIOBATCH_INSTANCE_INDEX": str(index),
        "AIOBATCH_ATTEMPT": "1",
    }
    return await spawner.spawn(
        argv=argv,
        cwd=work / str(index),
        env=env,
        stdout=logs / f"{index}.stdout",
        stderr=logs / f"{index}.stderr",
        journal=logs / ".attempts",
        runtime_id="r",
    )


def run_beside_the_spawner(script: str, *args: Path, timeout_s: float = 30) -> None:
    """Run ``script`` in a Python process of its own, given the spawner's dir (its modules
    import each other as scripts, as the spawner runs them) and then ``args``; it must end
    well."""
    executors = Path(aiobatch.executors.__file__).parent
    run = subprocess.run(
        [sys.executable, "-c", script, str(executors), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert run.returncode == 0, run.stderr
