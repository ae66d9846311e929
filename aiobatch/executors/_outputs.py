"""The spawner's copy of each local process's output into its log files.

A process writes into a pipe; the spawner copies what comes into the log file. When the
file cannot take it (the disk is full), the copy pauses: what was read waits here, the pipe
fills, and the program's next write blocks. It is paused, not failed, and nothing of its
output is lost: once there is room the copy goes on where it stopped, and the program with
it. A log file is made when its stream first brings something (or at the start, if asked):
a program that writes nothing costs no file, which on a busy disk costs more than the start.
Standard library only, as the spawner.
"""

from __future__ import annotations

import errno
import fcntl
import os
import selectors

CHUNK = 1 << 16
NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class Output:
    """One stream of one process: the pipe's read end, the log file, what waits for room."""

    __slots__ = ("fd", "log", "owner", "path", "pending", "stream", "written")

    def __init__(self, fd: int, path: str, owner: object, stream: str) -> None:
        self.fd, self.path, self.owner, self.stream = fd, path, owner, stream
        self.log = -1  # the log file, once made
        self.pending = b""  # read from the pipe, not yet written: the disk had no room
        self.written = 0  # bytes written into the log file


class Outputs:
    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.open_count = 0
        self.paused: set[Output] = set()

    def open(
        self, path: str, owner: object, stream: str, *, make_log: bool = False
    ) -> tuple[int, Output]:
        """A pipe for a process's ``stream`` into ``path``; the write end is the process's.
        The log file is made now with ``make_log`` (what must exist once the program ends,
        even empty), else with the stream's first bytes."""
        log = open_log(path) if make_log else -1
        try:
            read, write = os.pipe2(os.O_CLOEXEC)
        except OSError:
            if log >= 0:
                os.close(log)
            raise
        output = Output(read, path, owner, stream)
        output.log = log
        try:
            fcntl.fcntl(read, fcntl.F_SETFL, os.O_NONBLOCK)  # one call: its flags are known
            self.selector.register(read, selectors.EVENT_READ, output)
        except OSError:
            for fd in (read, write, log):
                if fd >= 0:
                    os.close(fd)
            raise
        self.open_count += 1
        return write, output

    def copy(self, output: Output) -> str | None:
        """Copy what the pipe holds. Returns why the copy paused, if it did now."""
        while output.fd >= 0 and not output.pending:
            try:
                data = os.read(output.fd, CHUNK)
            except BlockingIOError:
                return None
            if not data:  # every writer is gone
                self.close(output)
                return None
            output.pending = data
            why = self._write(output)
            if why is not None:
                self.selector.unregister(output.fd)  # the program blocks once the pipe is full
                self.paused.add(output)
                return why
        return None

    def resume(self) -> list[Output]:
        """Try the paused copies again; those that could go on are returned."""
        resumed = []
        for output in list(self.paused):
            if self._write(output) is None:
                self.paused.discard(output)
                self.selector.register(output.fd, selectors.EVENT_READ, output)
                resumed.append(output)
        return resumed

    def _write(self, output: Output) -> str | None:
        while output.pending:
            try:
                if output.log < 0:
                    output.log = open_log(output.path)
                written = os.write(output.log, output.pending)
            except OSError as exc:
                if exc.errno not in NO_ROOM:
                    output.pending = b""  # a broken log: what cannot be written is dropped
                    return None
                return exc.strerror or "no room"
            output.pending = output.pending[written:]
            output.written += written
        return None

    def close(self, output: Output) -> None:
        if output in self.paused:
            self.paused.discard(output)
        else:
            self.selector.unregister(output.fd)
        os.close(output.fd)
        if output.log >= 0:
            os.close(output.log)
        output.fd = output.log = -1
        self.open_count -= 1

    def close_all(self) -> None:
        """At the very end: copy what can still be, then let go of every pipe."""
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, Output):
                self.copy(key.data)
        for key in list(self.selector.get_map().values()):
            if isinstance(key.data, Output):
                self.close(key.data)
        for output in list(self.paused):
            self.close(output)


LOG_MODE = 0o600  # a task's output is the service's to show, through its API


def open_log(path: str) -> int:
    try:
        return os.open(path, LOG_FLAGS, LOG_MODE)
    except FileNotFoundError:  # a task's log dir is made at its first log
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, LOG_FLAGS, LOG_MODE)
