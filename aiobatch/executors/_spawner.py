"""The spawner: a small process that starts, watches and reaps a runtime's local instances.

It runs apart from the runtime (``python -E -s -S`` on this file: the standard library and its
siblings only, ``_launch``, ``_processes``, ``_outputs`` and ``_owed``, so it starts in
~20 ms) for four reasons:

- **It outlives a runtime that crashes.** It is in its own session, so a ``kill -9`` of the
  runtime leaves it running; it goes on reaping the instances it started and writes each one's
  exit status into its job's attempts journal, where the next runtime finds it.
- **It is never stalled with the runtime.** It records each start and exit with the system's
  monotonic clock as they happen, so a runtime that was stopped (SIGSTOP) or busy can tell an
  exit before a deadline from a timeout.
- **It is a child subreaper** (``PR_SET_CHILD_SUBREAPER``): processes an instance leaves behind,
  even after ``setsid`` or a double fork, become its children instead of init's. When an
  instance's leader ends, its process group and every such process whose environment names
  that attempt are killed.
- **It copies the instances' output into their logs** (``_outputs.py``), through pipes: on a
  full disk the copy pauses and the program with it, and no output is lost.

A runtime runs one, and a second while starts overlap (``local.py``); each knows only the
attempts it started. Every attempt is recorded in its job's attempts journal
(``logs/JOB/.attempts``, appended to) before its process starts: one JSON line with the
attempt's key, one with its pid once it runs, one with its exit status once it ended (or one
saying it never started); a line a full disk refuses is kept, and written in order once
there is room. One journal
per job rather than a file per attempt: on a file system where making a file is slow, a file
per start was most of a start's cost.

Protocol with the runtime, over an inherited socket: frames of a 4-byte big-endian length and
a ``marshal``-ed dict (both ends run the same interpreter; marshal is built in, where json
would cost the spawner's start an import of re). Requests: ``spawn``, ``signal``, ``close``.
Replies and news: ``started``, ``failed``, ``exited``, ``log_paused``, ``log_resumed``. A
``spawn`` carries the attempt's first line as the runtime encoded it (and its key as JSON,
for the lines after), and when it expires: one
read later (we were stalled) is refused, as the runtime has given up on it. One that names a
``user`` (uid, gid, groups) starts its program as that user (``_launch.py``: fork, then exec).
Standard library only: this file must not import aiobatch.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import selectors
import signal
import sys
import time

TYPE_CHECKING = False  # typing's own flag costs an import of typing (so do json and socket)
if TYPE_CHECKING:
    from typing import Any

    from aiobatch.executors import _launch as launch
    from aiobatch.executors import _owed as owed
    from aiobatch.executors import _processes as processes
    from aiobatch.executors._outputs import Output, Outputs
else:  # run as a script: its siblings are on the path, aiobatch is not
    import _launch as launch
    import _owed as owed
    import _processes as processes
    from _outputs import Output, Outputs

PR_SET_CHILD_SUBREAPER = 36
PAUSE_RETRY_S = 1.0  # a copy paused for room, or a refused journal line, is tried this often
# An orphaned spawner (its runtime died) whose journal lines a full disk refused waits this long
# for room, from its last instance's end or its runtime's death (the later), before it gives
# up on them and goes: those attempts are then found lost.
ORPHANED_WRITES_S = 3600.0
HEADER_SIZE = 4  # a frame's length, big-endian
# What one read of the socket takes at most: dozens of requests. Not 1 MiB: a buffer that
# large is mapped and unmapped by malloc at every read, for a few KiB of requests.
READ_SIZE = 1 << 16

Key = processes.Key


class Leader:
    """The first process of one attempt: the spawner's child, leader of its process group."""

    __slots__ = ("id", "journal", "key", "outputs", "tag")

    def __init__(self, request_id: int, key: Key, journal: str, tag: bytes) -> None:
        self.id, self.key = request_id, key
        self.journal, self.tag = journal, tag  # where its lines go, and its key as JSON
        self.outputs: list[Output] = []  # its stdout and stderr pipes


class Spawner:
    def __init__(self, control: int) -> None:
        self.control = control  # the socket's fd: read and written as a plain fd
        os.set_blocking(control, False)
        self.inbox = b""
        self.outbox = bytearray()  # appended to in place: a burst of news is not recopied
        self.leaders: dict[int, Leader] = {}  # by pid
        self.closing = False  # the runtime asked us to end everything
        self.orphaned = False  # the runtime is gone without asking: finish what runs, then go
        self.listening = True  # until the socket's end: what the runtime sent is still read
        self.selector = selectors.DefaultSelector()
        wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector through the pipe
        self.wake_r = wake_r
        self.selector.register(wake_r, selectors.EVENT_READ, "wake")
        self.selector.register(control, selectors.EVENT_READ, "control")
        self.outputs = Outputs(self.selector)
        self.journals = launch.Journals()
        self.lines = owed.OwedLines(self.journals)  # and those a full disk refused
        self.busy_at = time.monotonic()  # when we last had an instance running
        self.identity = launch.identity(os.getpid())  # as the runtime names us in key lines

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        outputs = self.outputs
        while (
            (self.listening and not self.closing)
            or self.leaders
            or outputs.open_count
            or self.owes_lines()
        ):
            timeout = PAUSE_RETRY_S if outputs.paused or self.lines.owed else None
            for key, _ in self.selector.select(timeout):
                if isinstance(key.data, Output):
                    self.copy(key.data)
                elif key.data == "wake":
                    _drain(self.wake_r)
                elif key.data == "control":
                    self.read_control()
            for output in outputs.resume():
                self.tell_output(output, "log_resumed", None)
            if self.leaders:  # before reaping: the last one's end counts as busy
                self.busy_at = time.monotonic()
            self.reap()
            self.lines.retry()
            self.flush()
            if self.closing and not self.leaders:
                break  # what a closing runtime left behind is copied below, not waited for
        self.kill_strays(everything=True)
        self.reap()
        outputs.close_all()
        self.journals.close_all()

    def copy(self, output: Output) -> None:
        why = self.outputs.copy(output)
        if why is not None:
            self.tell_output(output, "log_paused", why)

    def tell_output(self, output: Output, op: str, why: str | None) -> None:
        assert isinstance(output.owner, Leader)
        key = output.owner.key
        self.send({"op": op, "key": list(key), "stream": output.stream, "error": why})

    def read_control(self) -> None:
        try:
            data = os.read(self.control, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the runtime is gone (or closed its end): no one reads news any more
            self.lose_runtime()
            self.selector.unregister(self.control)
            self.listening = False
            return
        inbox = self.inbox + data
        at = 0  # frames are read in place: a burst of requests is not copied once per frame
        while len(inbox) - at >= HEADER_SIZE:
            size = int.from_bytes(inbox[at : at + HEADER_SIZE], "big")
            if len(inbox) - at < HEADER_SIZE + size:
                break
            self.handle(marshal.loads(inbox[at + HEADER_SIZE : at + HEADER_SIZE + size]))
            at += HEADER_SIZE + size
            if self.outbox:
                self.flush()  # each start is heard as it happens, not after a whole burst
        self.inbox = inbox[at:]

    def send(self, message: dict[str, Any]) -> None:
        if self.orphaned:
            return
        body = marshal.dumps(message)
        self.outbox += len(body).to_bytes(HEADER_SIZE, "big")
        self.outbox += body

    def flush(self) -> None:
        """Send what the runtime can take now; the rest waits for the socket, never blocking
        the loop (a stopped runtime must not stop our reaping and its timestamps)."""
        if self.orphaned:
            return
        try:
            while self.outbox:
                sent = os.write(self.control, self.outbox)
                del self.outbox[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.lose_runtime()
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbox else 0)
        if self.selector.get_key(self.control).events != events:
            self.selector.modify(self.control, events, "control")

    def lose_runtime(self) -> None:
        """Nothing is sent any more. What the runtime sent before it went is still read and
        done, up to the socket's end: it may have stored those attempts as starting, and the
        next runtime adopts them by their records (a write that failed first must not drop
        them unread)."""
        if not self.orphaned:
            self.orphaned = True
            self.busy_at = time.monotonic()  # the wait for room counts from here at the earliest
            self.outbox.clear()
            if self.listening:
                self.selector.modify(self.control, selectors.EVENT_READ, "control")

    def handle(self, request: dict[str, Any]) -> None:
        op = request["op"]
        if op == "spawn":
            self.spawn(request)
        elif op == "signal":
            self.forward_signal(request["pid"], request["sig"])
        elif op == "close":
            self.closing = True
            for pid in self.leaders:
                processes.kill_group(pid, signal.SIGKILL)

    # -- starting --------------------------------------------------------------------------------

    def spawn(self, request: dict[str, Any]) -> None:
        request_id, env = request["id"], request["env"]
        expires = request.get("expires")
        if expires is not None and time.monotonic() > expires:
            # A stall this long (stopped, a hung system call): the runtime counts the attempt
            # lost and runs it again; started now, it would run twice.
            self.fail(request_id, "expired", None, exec_failed=False, expired=True)
            return
        job, task, index, attempt = (env.get(name, "") for name in processes.KEY_VARS)
        key: Key = (job, task, index, attempt)
        leader = Leader(request_id, key, request["journal"], request["tag"])
        argv, user = request["argv"], request.get("user")
        ends: list[int] = []  # the pipes' write ends, for the child
        try:
            try:  # first what needs room: a full disk then leaves no trace of the attempt
                for stream in ("stdout", "stderr"):
                    made = request["make_logs"]  # else at the first output: see _outputs.py
                    end, output = self.outputs.open(request[stream], leader, stream, make_log=made)
                    ends.append(end)
                    leader.outputs.append(output)
                launch.prepare(request["cwd"], user)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in a string
                self.abort(request_id, leader, argv, exc, recorded=False, piped=len(ends) == 2)
                return
            try:  # the key line, encoded by the runtime: the attempt is on record from here
                self.lines.write_first(leader.journal, request["head"])
            except OSError as exc:
                for output in leader.outputs:
                    self.outputs.close(output)
                # Part of it may be there, whole but for its last newline (which the next
                # line's first would give it): taken back, if there is room.
                self.write(leader, launch.abandoned_line(leader.tag, self.identity))
                self.fail(request_id, f"record: {exc.strerror}", exc, exec_failed=False)
                return
            try:
                pid = launch.start(argv, request["cwd"], env, ends[0], ends[1], user, expires)
            except (OSError, ValueError, launch.Expired) as exc:
                self.abort(request_id, leader, argv, exc, recorded=True, piped=True)
                return
        finally:
            for end in ends:
                os.close(end)  # the child holds them now: its exit is the pipes' end
        started, wall = time.monotonic(), time.time()
        self.leaders[pid] = leader
        # Before the news: once the runtime stores RUNNING, the journal names the pid (a line
        # a full disk refuses is kept, and written once there is room).
        self.write(leader, launch.started_line(leader.tag, pid, started, wall))
        self.send({"op": "started", "id": request_id, "pid": pid, "mono": started, "wall": wall})

    def abort(
        self,
        request_id: int,
        leader: Leader,
        argv: list[str],
        exc: Exception,
        *,
        recorded: bool,
        piped: bool,
    ) -> None:
        """A start that did not happen: its pipes closed, its key line (if written) taken
        back, the runtime told why."""
        for output in leader.outputs:
            self.outputs.close(output)
        if recorded:
            self.write(leader, launch.abandoned_line(leader.tag, self.identity))
        where = argv[0] if argv and piped else "log"
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        expired = isinstance(exc, launch.Expired)
        exec_failed = piped and not expired
        self.fail(request_id, f"{where}: {why}", exc, exec_failed=exec_failed, expired=expired)

    def fail(
        self,
        request_id: int,
        error: str,
        exc: Exception | None,
        *,
        exec_failed: bool = True,
        expired: bool = False,
    ) -> None:
        reply = {
            "op": "failed",
            "id": request_id,
            "error": error,
            "errno": getattr(exc, "errno", None),
        }
        self.send({**reply, "exec": exec_failed, "expired": expired})

    def write(self, leader: Leader, line: bytes) -> None:
        self.lines.write(leader.journal, line)

    def owes_lines(self) -> bool:
        """Lines are still to be written, and we wait for room: not once asked to close,
        nor, our runtime gone, longer than ORPHANED_WRITES_S since it went or since we last
        had something running (the later)."""
        if not self.lines.owed or self.closing:
            return False
        if self.orphaned and time.monotonic() - self.busy_at > ORPHANED_WRITES_S:
            return False
        return True

    def forward_signal(self, pid: int, sig: int) -> None:
        # Only a leader not reaped yet: its pid still names its group, never a stranger.
        if pid in self.leaders:
            processes.kill_group(pid, sig)

    # -- ending ----------------------------------------------------------------------------------

    def reap(self) -> None:
        reaped, ends = False, []
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None or info.si_pid == 0:
                break
            pid = info.si_pid
            leader = self.leaders.pop(pid, None)
            if leader is not None:
                # A zombie still holds its pid, so the group is ours to kill: nothing of the
                # attempt runs on after its leader.
                processes.kill_group(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            reaped = True
            if leader is not None:
                ends.append((pid, leader, status, usage, time.monotonic(), time.time()))
        if not reaped:
            return
        # Once for all that ended together, not once each (a read of our children), and
        # before the news: once the runtime hears, nothing of theirs is left. After any end,
        # not just a leader's: a stray that ends leaves its own children to us.
        self.kill_strays()
        for pid, leader, status, usage, ended, wall in ends:
            for output in leader.outputs:  # what it wrote is in its log before the news
                self.copy(output)
            self.ended(pid, leader, status, usage, ended, wall)

    def ended(
        self, pid: int, leader: Leader, status: int, usage: Any, ended: float, wall: float
    ) -> None:
        exited = {
            "status": status,
            "mono": ended,
            "wall": wall,
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
        }
        log_bytes = sum(output.written for output in leader.outputs)
        # If it cannot be written, the runtime still hears of it below.
        self.write(leader, launch.exited_line(leader.tag, status, ended, wall, usage))
        self.send({"op": "exited", "id": leader.id, "pid": pid, "log_bytes": log_bytes, **exited})

    def kill_strays(self, *, everything: bool = False) -> None:
        running = {leader.key for leader in self.leaders.values()}
        processes.kill_strays(self.leaders, running, everything=everything)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def main() -> None:
    fd = int(sys.argv[1])
    os.setsid()  # a kill of the runtime's process group must not take us along
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    os.set_inheritable(fd, False)  # passed to us; the programs we start must not hold it
    processes.raise_open_files_limit()
    Spawner(fd).run()
    # Everything is reaped, written and closed: skip the interpreter's teardown, which a
    # closing runtime would otherwise wait for.
    os._exit(0)


if __name__ == "__main__":
    main()
