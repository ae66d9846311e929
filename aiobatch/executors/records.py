"""Attempt records of local processes, and the scan for processes a runtime left behind.

The spawner writes one record file per instance before its process starts (``INDEX.run`` by
its logs): a line with the attempt's key, a line with its pid once it runs, a line with its
exit status once it ended. After a crash they tell the next runtime which attempt started,
whether it still runs and how it ended. Blocking file reads: call these off the event loop.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from aiobatch.attempt import AttemptKey
from aiobatch.executors import _processes as processes
from aiobatch.executors.spawner import Exited

SWEEP_WAIT_S = 5.0  # how long a sweep waits for what it killed to be gone
RUNTIME_VAR = "AIOBATCH_RUNTIME_ID"  # names the runtime in every local process's environment
KEY_VARS = tuple(name.encode() for name in processes.KEY_VARS)  # as /proc gives them


class _Line(msgspec.Struct, forbid_unknown_fields=False):
    key: list[str] | None = None
    runtime: str | None = None
    spawner: tuple[int, int | None] | None = None
    pid: int | None = None
    mono: float | None = None
    wall: float | None = None
    status: int | None = None
    utime: float = 0.0
    stime: float = 0.0
    maxrss_kib: int = 0


_line = msgspec.json.Decoder(_Line)


@dataclass(frozen=True, slots=True)
class Record:
    key: AttemptKey
    runtime: str
    spawner: tuple[int, int | None] | None = None  # the process that writes the exit line
    pid: int | None = None  # None: the spawner did not get to start it (or to say so)
    started: float | None = None  # monotonic
    exited: Exited | None = None


def read_record(path: Path) -> Record | None:
    """The record, or None if there is none or it does not name an attempt."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return None
    try:
        head = _line.decode(lines[0]) if lines else None
        if head is None or head.key is None or head.runtime is None:
            return None
        job, task, index, attempt = head.key
        record = Record((job, task, int(index), int(attempt)), head.runtime, head.spawner)
        for raw in lines[1:]:
            line = _line.decode(raw)
            if line.pid is not None:
                record = replace(record, pid=line.pid, started=line.mono)
            elif line.status is not None and line.mono is not None:
                exited = Exited(
                    line.status, line.mono, line.wall or 0.0, line.utime, line.stime,
                    line.maxrss_kib,
                )  # fmt: skip
                record = replace(record, exited=exited)
    except (msgspec.DecodeError, ValueError):
        return None  # torn by a crash mid-write: what it says cannot be trusted
    return record


def records_of(logs: Path, job_ids: list[str]) -> list[tuple[Path, Record]]:
    """Every record under the log dirs of these jobs."""
    found = []
    for job_id in job_ids:
        for path in sorted((logs / job_id).glob("*/*.run")):
            record = read_record(path)
            if record is not None:
                found.append((path, record))
    return found


def start_ticks(pid: int) -> int | None:
    """When a live process started (clock ticks since boot); None if none runs (a zombie has
    ended: it only waits for a parent that may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def is_running(record: Record) -> bool:
    """Whether the record's process still runs (the same process, not a reused pid: its
    environment names the very attempt)."""
    if record.pid is None or record.exited is not None:
        return False
    return attempt_of(record.pid, record.runtime) == record.key


def adoptable(record: Record) -> bool:
    """Whether the attempt's end is known, or will be: it has ended and its spawner wrote
    how, or it started and its spawner still runs to write it."""
    if record.exited is not None:
        return True
    return record.pid is not None and record.spawner is not None and _same_process(*record.spawner)


def _same_process(pid: int, ticks: int | None) -> bool:
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def attempt_of(pid: int, runtime_id: str) -> AttemptKey | None:
    """The attempt a process belongs to, by its environment, if this runtime started it."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    values: dict[bytes, bytes] = {}
    for entry in environ:
        name, _, value = entry.partition(b"=")
        values[name] = value
    if values.get(RUNTIME_VAR.encode()) != runtime_id.encode():
        return None
    try:
        job, task, index, attempt = (values[name].decode() for name in KEY_VARS)
        return job, task, int(index), int(attempt)
    except (KeyError, ValueError, UnicodeDecodeError):
        return (values.get(KEY_VARS[0], b"").decode(errors="replace"), "", -1, 0)


def sweep(
    runtime_id: str, keep: set[AttemptKey], only: set[AttemptKey] | None = None
) -> list[AttemptKey]:
    """Kill every process this runtime started whose attempt is not in ``keep`` (and is in
    ``only``, if given): a scan of all processes, so nothing a crash left unrecorded escapes
    it. Returns what it killed, once it is dead (or after ``SWEEP_WAIT_S``)."""
    killed = []
    dying = select.poll()
    pidfds = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        key = attempt_of(pid, runtime_id)
        if key is None or key in keep or (only is not None and key not in only):
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        pidfds.append(pidfd)
        dying.register(pidfd, select.POLLIN)
        for kill in (os.kill, os.killpg):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.append(key)
    try:
        deadline = time.monotonic() + SWEEP_WAIT_S
        waiting = len(pidfds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in dying.poll(left * 1000):
                dying.unregister(fd)
                waiting -= 1
    finally:
        for pidfd in pidfds:
            os.close(pidfd)
    return killed
