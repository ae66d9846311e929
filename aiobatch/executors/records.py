"""How local attempts started and ended, and the scan for processes a runtime left behind.

The spawner appends to each job's attempts journal (``logs/JOB/.attempts``) before a process
starts: a line with the attempt's key, then one with its pid once it runs, one with its exit
status once it ended (or one saying it never started). After a crash they tell the next
runtime which attempt started, whether it still runs and how it ended. A runtime of an
earlier version wrote one record file per instance instead (``logs/JOB/TASK/INDEX.run``, the
same lines without the key after the first); those are read too. Blocking file reads: call
these off the event loop.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

import msgspec

from aiobatch.attempt import AttemptKey
from aiobatch.executors import _processes as processes
from aiobatch.executors.spawner import Exited
from aiobatch.layout import JOURNAL_NAME

SWEEP_WAIT_S = 5.0  # how long a sweep waits for what it killed to be gone
RUNTIME_VAR = "AIOBATCH_RUNTIME_ID"  # names the runtime in every local process's environment
KEY_VARS = tuple(name.encode() for name in processes.KEY_VARS)  # as /proc gives them
READ_CHUNK = 1 << 20
FIRST_LINE_BYTES = 512  # past the first line: its key, runtime and spawner
MAX_LINE = 1 << 20  # far past any line written: bytes this long without a newline are not one
LEGACY_SUFFIX = ".run"


class _Line(msgspec.Struct, forbid_unknown_fields=False):
    key: tuple[str, str, str, str] | None = None
    runtime: str | None = None
    spawner: tuple[int, int | None] | None = None
    pid: int | None = None
    mono: float | None = None
    wall: float | None = None
    status: int | None = None
    utime: float = 0.0
    stime: float = 0.0
    maxrss_kib: int = 0
    abandoned: bool = False


_line = msgspec.json.Decoder(_Line)


class Record(msgspec.Struct, frozen=True):
    key: AttemptKey
    runtime: str
    spawner: tuple[int, int | None] | None = None  # the process that writes the exit line
    pid: int | None = None  # None: the spawner did not get to start it (or to say so)
    started: float | None = None  # monotonic
    exited: Exited | None = None


def _then(record: Record, line: _Line) -> Record:
    """The record with what a line after the first says."""
    if line.pid is not None:
        return msgspec.structs.replace(record, pid=line.pid, started=line.mono)
    if line.status is not None and line.mono is not None:
        exited = Exited(
            line.status, line.mono, line.wall or 0.0, line.utime, line.stime, line.maxrss_kib
        )
        return msgspec.structs.replace(record, exited=exited)
    return record


class Journal:
    """A job's attempts journal, as read so far: ``refresh`` reads what was appended since
    (a line is one write that begins and ends with a newline; one torn by a full disk, or
    not whole yet, is skipped or waited for, never misread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: dict[AttemptKey, Record] = {}
        self.file: tuple[int, int, bytes] | None = None  # which file was read so far
        self.users = 0  # the runtime's readers that share it
        self._reading = threading.Lock()  # refreshed from worker threads

    def refresh(self) -> None:
        with self._reading:
            self._refresh()

    def _refresh(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            held = os.fstat(fd)
            # Its device, inode and first line: a file system may give a new file the inode
            # of one just removed.
            file = (held.st_dev, held.st_ino, os.pread(fd, FIRST_LINE_BYTES, 0))
            if file != self.file or held.st_size < self.offset:
                # Another file now (the job's logs removed, and it ran again): read it anew.
                self.file, self.offset, self.records = file, 0, {}
            # A chunk at a time (a journal of a large job is tens of MB); what follows the
            # last newline so far is carried to the next one, or left for the next refresh.
            at, tail = self.offset, b""
            while chunk := os.pread(fd, READ_CHUNK, at):
                at += len(chunk)
                data = tail + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    tail = data if len(data) <= MAX_LINE else b""  # else: no line, skipped
                    continue
                for raw in data[:end].split(b"\n"):
                    if raw:
                        self._apply(raw)
                tail = data[end + 1 :]
                self.offset = at - len(tail)
        finally:
            os.close(fd)

    def _apply(self, raw: bytes) -> None:
        try:
            line = _line.decode(raw)
            if line.key is None:
                return
            job, task, index, attempt = line.key
            key = (job, task, int(index), int(attempt))
        except (msgspec.DecodeError, ValueError):
            return  # torn by a full disk: what it says cannot be trusted
        if line.runtime is not None:
            self.records[key] = Record(key, line.runtime, line.spawner)
        elif line.abandoned:
            record = self.records.get(key)
            # Only its own spawner's (one written before spawners named themselves: any).
            if record is not None and _same_spawner(line.spawner, record.spawner):
                del self.records[key]
        elif (record := self.records.get(key)) is not None:
            self.records[key] = _then(record, line)

    def get(self, key: AttemptKey) -> Record | None:
        self.refresh()
        return self.records.get(key)


class JournalLike(Protocol):
    def get(self, key: AttemptKey) -> Record | None: ...


class RecordFile:
    """An earlier version's record file of one instance's latest attempt, read as a journal."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: AttemptKey) -> Record | None:
        record = read_record(self.path)
        return record if record is not None and record.key == key else None


def read_record(path: Path) -> Record | None:
    """An earlier version's record file, or None if there is none or it names no attempt."""
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
            record = _then(record, _line.decode(raw))
    except (msgspec.DecodeError, ValueError):
        return None  # torn by a crash mid-write: what it says cannot be trusted
    return record


def records_of(logs: Path, job_ids: list[str]) -> list[tuple[str, Record]]:
    """Every attempt recorded under the log dirs of these jobs, with where it was found."""
    found: list[tuple[str, Record]] = []
    for job_id in job_ids:
        journal = Journal(logs / job_id / JOURNAL_NAME)
        journal.refresh()
        found += ((str(journal.path), record) for record in journal.records.values())
        for path in sorted((logs / job_id).glob(f"*/*{LEGACY_SUFFIX}")):
            record = read_record(path)
            if record is not None and record.key not in journal.records:
                found.append((str(path), record))
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
    return record.pid is not None and _spawner_lives(record)


def _same_spawner(
    taking_back: tuple[int, int | None] | None, started: tuple[int, int | None] | None
) -> bool:
    """Whether a line taking back a start comes from the spawner that made it: the same pid,
    and the same start unless one side could not read it."""
    if taking_back is None or started is None:
        return True
    (pid, ticks), (started_pid, started_ticks) = taking_back, started
    return pid == started_pid and (ticks is None or started_ticks is None or ticks == started_ticks)


def pid_to_come(record: Record) -> bool:
    """Whether the attempt's pid line may still come: its spawner lives, and was starting it
    (when its runtime died), or holds the line until a full disk has room."""
    return record.pid is None and _spawner_lives(record)


def _spawner_lives(record: Record) -> bool:
    """Whether the spawner that wrote the record still runs (to write what it still owes)."""
    return record.spawner is not None and _same_process(*record.spawner)


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
