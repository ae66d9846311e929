"""The runtime's end of the spawner process (``_spawner.py``): start it, have it start and
signal processes, and hear when they end, with the times it saw."""

from __future__ import annotations

import asyncio
import itertools
import marshal
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from aiobatch.executors import spawner_process
from aiobatch.executors._launch import start_ticks
from aiobatch.executors._processes import KEY_VARS
from aiobatch.logging import get_logger
from aiobatch.users import Identity

log = get_logger("aiobatch.spawner")

HEADER = struct.Struct(">I")
REPLY_TIMEOUT_S = 30.0  # a spawn the spawner does not answer in this time has failed
# A spawn request the spawner reads later than this before the runtime gives up on it is
# refused: its answer could come too late, and the attempt would run after being counted lost.
EXPIRY_MARGIN_S = 5.0
CLOSE_TIMEOUT_S = 10.0
# What one read of the socket takes at most: dozens of frames. Not 1 MiB: a buffer that large
# is mapped and unmapped by malloc at every read (~16 us each, here), for a few KiB of news.
READ_SIZE = 1 << 16

_encode = marshal.dumps  # the spawner runs this very interpreter: marshal, not json (it is
_decode = marshal.loads  # built in: the spawner starts without importing json and re)
_json = msgspec.json.Encoder().encode  # an attempt's first line, written as we encode it


class Started(msgspec.Struct, frozen=True):
    id: int
    pid: int
    mono: float  # the system's monotonic clock (as the event loop's) when the process started
    wall: float


class Exited(msgspec.Struct, frozen=True):
    status: int  # as wait(2) gives it
    mono: float  # when it ended, as the spawner saw it: not delayed by a stalled runtime
    wall: float
    utime: float
    stime: float
    maxrss_kib: int

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


class SpawnFailed(Exception):
    """The process was not started. ``exec_failed``: the program itself could not be run;
    ``errno``: why, as the system said."""

    def __init__(self, error: str, *, exec_failed: bool, errno: int | None = None) -> None:
        super().__init__(error)
        self.error, self.exec_failed, self.errno = error, exec_failed, errno


class SpawnerGone(Exception):
    """The spawner ended: what it started can no longer be heard of."""


class _Pending:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        # asyncio's own (this module runs on asyncio's loop): two per start, and anyio's
        # looks up the running backend at every one.
        self.done = asyncio.Event()
        self.value: dict[str, Any] | None = None  # None once done: the spawner is gone


class Spawner:
    def __init__(self, reply_timeout_s: float | None = None) -> None:
        self._reply_timeout_s = REPLY_TIMEOUT_S if reply_timeout_s is None else reply_timeout_s
        self._sock: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, _Pending] = {}  # spawn requests waiting for started/failed
        self._exits: dict[int, _Pending] = {}  # started processes waiting for their end
        # Frames not yet taken by the socket; sent when it has room again while it is full.
        self._outbox = bytearray()
        self._waiting_for_room = False
        self._asked_to_close = False  # after a garbled frame, bypassing the link's end
        self._gone = False
        self._reader_done = anyio.Event()  # the socket is no longer watched
        self._watching = False
        self._buffer = b""  # the start of a frame not yet whole
        self._identity: list[int | None] = []  # the spawner's pid and start: who writes exits
        # Output copies paused for lack of room: (job, task, index, attempt, stream).
        self.paused_logs: set[tuple[str, str, str, str, str]] = set()
        self.log_bytes = 0  # what the spawner wrote into log files, as it tells at each end

    async def open(self) -> None:
        self._process, ours = spawner_process.take()  # a fork, once per spawner
        ours.setblocking(False)
        self._sock = ours
        self._identity = [self._process.pid, start_ticks(self._process.pid)]
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_readable)
        self._watching = True

    async def aclose(self) -> None:
        """Ask the spawner to end (it kills what still runs) and wait for it, bounded."""
        sock, process = self._sock, self._process
        if sock is None or process is None:
            return
        try:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(CLOSE_TIMEOUT_S):
                    try:
                        self._send({"op": "close"})
                    except SpawnerGone:
                        # It cannot be asked: it died, or what it sent made no sense (its
                        # attempts are counted lost already). Alive and not asked already,
                        # it would wait forever.
                        if not self._asked_to_close and process.poll() is None:
                            process.kill()
                    # Abandoned at the time limit (a stopped spawner): then killed below.
                    await anyio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
                    await self._reader_done.wait()  # it has seen the end
                if process.poll() is None:
                    process.kill()
                    with anyio.move_on_after(CLOSE_TIMEOUT_S):
                        await anyio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
        finally:
            self._end()  # if it timed out: unwatched before the socket closes
            self._sock = None
            sock.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def gone(self) -> bool:
        return self._gone

    @property
    def starting(self) -> int:
        """Starts asked for and not answered yet: how busy it is."""
        return len(self._replies)

    # -- requests ----------------------------------------------------------------------------

    async def spawn(
        self,
        *,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        stdout: Path,
        stderr: Path,
        journal: Path,
        runtime_id: str,
        user: Identity | None = None,
        make_logs: bool = False,
    ) -> Started:
        """Start a process in a session of its own; its first line in the attempts
        ``journal`` is written before. With
        ``user``, it runs as that user, in a work dir made that user's. Its log files are
        made at its first output, or at once with ``make_logs``."""
        request_id = next(self._ids)
        pending = self._replies[request_id] = _Pending()
        key = [env.get(name, "") for name in KEY_VARS]
        tag = _json(key)
        head = b'\n{"key":%b,"runtime":%b,"spawner":%b}\n' % (
            tag,
            _json(runtime_id),
            _json(self._identity),
        )
        margin = min(EXPIRY_MARGIN_S, self._reply_timeout_s / 4)
        request = {
            "op": "spawn", "id": request_id, "argv": argv, "cwd": str(cwd), "env": env,
            "stdout": str(stdout), "stderr": str(stderr), "make_logs": make_logs,
            "journal": str(journal), "head": head, "tag": tag,
            "user": None if user is None else [user.uid, user.gid, list(user.groups)],
            # The system's monotonic clock, the same in both processes.
            "expires": time.monotonic() + self._reply_timeout_s - margin,
        }  # fmt: skip
        # Shielded: once asked, the answer must be heard, or a started process is unknown.
        with anyio.move_on_after(self._reply_timeout_s, shield=True):
            try:
                self._send(request)
                await pending.done.wait()
            except SpawnerGone:
                pass  # reply stays None: gone
            finally:
                self._replies.pop(request_id, None)
        reply = pending.value
        if reply is None:
            raise SpawnerGone  # asked, never answered: the process may or may not run
        if reply["op"] == "failed":
            if reply.get("expired"):  # the spawner was stalled: as lost, not as failed
                raise SpawnerGone
            raise SpawnFailed(
                reply["error"], exec_failed=bool(reply.get("exec")), errno=reply.get("errno")
            )
        return Started(request_id, reply["pid"], reply["mono"], reply["wall"])

    async def wait(self, started: Started) -> Exited:
        """The process's end. Raises SpawnerGone if the spawner ended first."""
        pending = self._exits.get(started.id)
        if pending is None:
            raise SpawnerGone
        await pending.done.wait()
        self._exits.pop(started.id, None)
        if pending.value is None:
            raise SpawnerGone
        return _exited(pending.value)

    async def signal(self, started: Started, sig: int) -> None:
        """Signal the process group, unless the process has been reaped already."""
        if not self._gone:
            try:
                self._send({"op": "signal", "pid": started.pid, "sig": int(sig)})
            except SpawnerGone:
                pass  # every waiter has been told

    def _send(self, message: dict[str, Any]) -> None:
        """Queue a frame and send what the socket takes now, without waiting: no lock and no
        trip through the event loop per request. What it cannot take yet goes when it has
        room; frames stay whole and in order, as they only ever join the outbox's end."""
        sock = self._sock
        if sock is None or self._gone:
            raise SpawnerGone
        self._outbox += _frame(message)
        if not self._waiting_for_room:
            self._flush()

    def _flush(self) -> None:
        """Send what the socket takes; called again by the event loop once it has room."""
        sock = self._sock
        if sock is None:
            return
        try:
            while self._outbox:
                del self._outbox[: sock.send(self._outbox)]
        except BlockingIOError:  # full: the spawner reads more slowly than we ask
            if not self._waiting_for_room:
                self._waiting_for_room = True
                asyncio.get_running_loop().add_writer(sock.fileno(), self._flush)
            return
        except OSError:
            self._outbox.clear()  # the spawner is gone: its socket's end tells the waiters
        self._stop_waiting_for_room()

    def _stop_waiting_for_room(self) -> None:
        if self._waiting_for_room and self._sock is not None:
            self._waiting_for_room = False
            asyncio.get_running_loop().remove_writer(self._sock.fileno())

    # -- news --------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Read what the spawner sent: a callback of the event loop, watching the socket from
        open to end (no task, and no watch set up again for every read)."""
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # reset: the spawner died with requests unread
            data = b""
        if not data:
            self._end()
            return
        buffer = self._buffer + data if self._buffer else data
        at = 0  # frames are read in place, not copied once per frame
        try:
            while len(buffer) - at >= HEADER.size:
                (size,) = HEADER.unpack_from(buffer, at)
                if len(buffer) - at < HEADER.size + size:
                    break
                self._deliver(_decode(buffer[at + HEADER.size : at + HEADER.size + size]))
                at += HEADER.size + size
        except Exception:  # a frame that makes no sense: nothing after it can be trusted
            log.exception("spawner_garbled")
            self._close_after_garble()
            self._end()
            return
        self._buffer = buffer[at:]

    def _close_after_garble(self) -> None:
        """Its attempts are counted lost from now on. Asked to close, it kills what it runs,
        strays included, and what it starts from requests it reads before the close (as a
        late start); if its socket cannot take the request now, it is killed instead."""
        sock, process = self._sock, self._process
        frame = _frame({"op": "close"})
        sent = 0
        if sock is not None and not self._outbox:
            try:
                sent = sock.send(frame)
            except OSError:
                sent = 0
        if sent == len(frame):
            self._asked_to_close = True
        elif process is not None and process.poll() is None:
            process.kill()

    def _end(self) -> None:
        """The spawner is gone (or being closed): stop watching, wake every waiter."""
        if self._reader_done.is_set():
            return
        self._stop_waiting_for_room()
        self._outbox.clear()
        if self._sock is not None and self._watching:
            self._watching = False
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._gone = True
        self._reader_done.set()
        # Its copies ended with it: none waits for room now (another spawner may go on).
        self.paused_logs.clear()
        if self._replies or self._exits:
            log.error("spawner_gone", waiting=len(self._replies) + len(self._exits))
        for pending in (*self._replies.values(), *self._exits.values()):
            pending.done.set()

    def _deliver(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op in ("log_paused", "log_resumed"):
            self._log_news(op, message)
            return
        if op == "exited":
            self.log_bytes += message.get("log_bytes", 0)  # a spawner before this: none
        table = self._exits if op == "exited" else self._replies
        pending = table.get(message["id"])
        if pending is not None:
            pending.value = message
            pending.done.set()
            if op == "started":  # its end is heard of after this, in order
                self._exits[message["id"]] = _Pending()
        elif op == "started":
            # It started after we stopped waiting: its attempt is counted lost and runs again,
            # so this one must not run on (the spawner signals only a leader it has not reaped).
            try:
                self._send({"op": "signal", "pid": message["pid"], "sig": int(signal.SIGKILL)})
            except SpawnerGone:
                pass

    def _log_news(self, op: str, message: dict[str, Any]) -> None:
        """A copy of an instance's output into its log paused for lack of room, or went on."""
        job_id, task, index, attempt = message["key"]
        where = (job_id, task, index, attempt, message["stream"])
        ids = {"job_id": job_id, "task": task, "index": index, "stream": message["stream"]}
        if op == "log_paused":
            self.paused_logs.add(where)
            log.error("log_paused", **ids, error=message["error"])
        else:
            self.paused_logs.discard(where)
            log.warning("log_resumed", **ids)


def _frame(message: dict[str, Any]) -> bytes:
    body = _encode(message)
    return HEADER.pack(len(body)) + body


def _exited(message: dict[str, Any]) -> Exited:
    return Exited(
        status=message["status"],
        mono=message["mono"],
        wall=message["wall"],
        utime=message["utime"],
        stime=message["stime"],
        maxrss_kib=message["maxrss_kib"],
    )
