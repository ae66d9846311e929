"""Local executor: each attempt a process in its own session, started by the spawner.

The spawner (``spawner.py``, ``_spawner.py``) starts and reaps the processes, records each
attempt in its job's journal, and kills whatever an attempt leaves behind when it ends. Here the
runtime waits for the end, enforces timeouts and stops, and, after a restart, adopts the
processes that outlived the runtime before it.
"""

from __future__ import annotations

import errno
import math
import os
import signal
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from aiobatch.attempt import (
    NO_SPACE,
    RUNTIME_LOST,
    SYSTEM_LIMIT,
    AttemptKey,
    FoundAttempt,
    InstanceContext,
    Outcome,
    Usage,
)
from aiobatch.executors import _processes as processes
from aiobatch.executors import records
from aiobatch.executors.base import any_attempt
from aiobatch.executors.spawner import Exited, Spawner, SpawnerGone, SpawnFailed, Started
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger
from aiobatch.spec import TaskDef
from aiobatch.users import may_switch_user, resolve_user

log = get_logger("aiobatch.local")

KILL_WAIT_S = 30.0  # after SIGKILL, how long an end may take to be heard of
EXIT_LINE_WAIT_S = 5.0  # an adopted process ended: how long its old spawner may take to say how
EXIT_LINE_POLL_S = 0.01
# After a restart, how long a living spawner may take to write a start's pid line: it was
# making the start when its runtime died (ms), or a full disk held the line (it tries again
# every second).
PID_LINE_WAIT_S = 2.5
PID_LINE_POLL_S = 0.05
# Spawners at most: a second overlaps its starts with the first's (2,000 x `true` at 8 slots
# took ~15% less time on 2 cores); a third gained nothing measurable there.
SPAWNERS = 2
# A start that failed with one of these ran out of open files (the spawner's, the system's),
# processes or memory: it waits for dispatch to resume, it is not the program's failure.
SHORT_OF_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class LocalExecutor:
    kind = "local"

    def __init__(self, layout: StateLayout) -> None:
        self.layout = layout
        self.runtime_id = ""
        self._spawners = [Spawner()]  # the first runs from the start, the others once needed
        self._changing = anyio.Lock()  # the pool grows, or a spawner is replaced
        self._log_bytes_before = 0  # what spawners replaced since the start wrote
        self._journals: dict[str, records.Journal] = {}  # being read, by path

    async def open(self, background: TaskGroup) -> None:
        self.runtime_id = await anyio.to_thread.run_sync(self.layout.runtime_id)
        await self._spawners[0].open()

    async def _live_spawner(self) -> Spawner:
        """The spawner for a start: the one with the fewest starts unanswered. A start
        holds its spawner until the new process has exec'd its program (``posix_spawn``
        waits for it: ~0.15 ms on an idle machine, 0.5 ms with both cores busy), so while
        every spawner is starting one, another is added, up to SPAWNERS; a chain of tasks
        (one start at a time) keeps to one. One that ended (killed, crashed) is dropped at
        the next start, and a new one started if none is left."""
        spawners = self._spawners  # empty only while the lock below is held
        if spawners and not any(each.gone for each in spawners):
            spawner = min(spawners, key=_starting)
            if not (spawner.starting and len(spawners) < SPAWNERS):
                return spawner  # no lock: an uncontended anyio lock still costs a loop trip
        async with self._changing:
            await self._drop_gone()
            least_busy = min(self._spawners, key=_starting, default=None)
            if least_busy is not None and not (
                least_busy.starting and len(self._spawners) < SPAWNERS
            ):
                return least_busy
            fresh = Spawner()
            try:
                await fresh.open()
            except OSError as exc:
                if least_busy is None:
                    raise  # no spawner at all: the start fails
                # The busy one takes the start, as it would have without a second one.
                log.warning("spawner_not_added", error=str(exc))
                return least_busy
            self._spawners.append(fresh)  # only once open: the check above takes no lock
            return fresh

    async def _drop_gone(self) -> None:
        for old in [spawner for spawner in self._spawners if spawner.gone]:
            log.error("spawner_dropped", pid=old.pid)
            # Its count joins the others' as it leaves the pool: the total never dips.
            self._spawners.remove(old)
            self._log_bytes_before += old.log_bytes
            await old.aclose()

    async def aclose(self) -> None:
        async with anyio.create_task_group() as closing:
            for spawner in self._spawners:
                closing.start_soon(spawner.aclose)

    @property
    def log_bytes(self) -> int:
        """Bytes of output written into log files since the start (counted by the spawners,
        which copy them: no stat of the files on the event loop)."""
        return self._log_bytes_before + sum(spawner.log_bytes for spawner in self._spawners)

    @property
    def logs_paused(self) -> int:
        """Instances' outputs whose copy into their logs waits for room (the program too)."""
        return sum(len(spawner.paused_logs) for spawner in self._spawners)

    def unsupported(self, task: TaskDef) -> list[str]:
        """What only a container honours (the spec refuses it too; a JobDef made in Python
        comes here unchecked), and a user this runtime may not become."""
        found = [name for name in ("image", "workdir", "network") if getattr(task, name)]
        if task.cpus is not None or task.memory_bytes is not None:
            found.append("resources")
        if task.pull != "if_missing":
            found.append("pull")
        if task.keep_failed:
            found.append("keep_failed")
        if task.user is not None and not may_switch_user():
            found.append("user")
        return found

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        command = ctx.task.command
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command or ())
        user = None
        if ctx.task.user is not None:  # checked at submission; looked up again at each start
            try:
                user = await anyio.to_thread.run_sync(resolve_user, ctx.task.user)
            except LookupError as exc:
                return Outcome(reason=f"spawn_failed: user: {exc}")
        spawner = await self._live_spawner()
        journal = self.layout.journal_path(ctx.job_id)
        key = (ctx.job_id, ctx.task.name, ctx.index, ctx.attempt)
        try:
            started = await spawner.spawn(
                argv=argv,
                cwd=ctx.work_dir,
                env={**ctx.env, records.RUNTIME_VAR: self.runtime_id},
                stdout=ctx.stdout_path,
                stderr=ctx.stderr_path,
                journal=journal,
                runtime_id=self.runtime_id,
                user=user,
                # Uploaded logs must exist even if empty; the others wait for output.
                make_logs=ctx.task.stdout is not None or ctx.task.stderr is not None,
            )
        except SpawnFailed as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Its record or logs found no room: nothing ran, and it is not the task's doing.
                return Outcome(reason=f"{NO_SPACE}: {exc.error}")
            if exc.errno in SHORT_OF_LIMITS:  # the system's or ours, not the program's
                return Outcome(reason=f"{SYSTEM_LIMIT}: {exc.error}")
            kind = "exec_failed" if exc.exec_failed else "spawn_failed"
            return Outcome(reason=f"{kind}: {exc.error}")
        except SpawnerGone:
            # Asked but never answered: the process may run. The journal says; lost either way.
            with self._journal(str(journal)) as read:
                recorded = await anyio.to_thread.run_sync(read.get, key)
            if recorded is not None:  # it may have started just before its spawner died
                await self._end_lost(recorded.pid, key)
            return Outcome(reason=RUNTIME_LOST)
        on_started(started.pid)
        deadline = _deadline(ctx, started.mono)
        try:
            with ctx.control.scope as scope:
                scope.deadline = min(scope.deadline, deadline)
                exited: Exited | None = await spawner.wait(started)
            if scope.cancelled_caught:
                exited = await _terminate(spawner, started, ctx.kill_grace_s)
        except SpawnerGone:
            exited = None
        except BaseException:
            # Cancelled from outside (shutdown, Ctrl-C): never leave the process behind.
            with anyio.CancelScope(shield=True):
                await _terminate(spawner, started, ctx.kill_grace_s)
            raise
        if exited is None:
            # Its exit status went with the spawner: the attempt is lost, not failed.
            await self._end_lost(started.pid, key)
            return Outcome(reason=RUNTIME_LOST)
        return _outcome(exited, started.mono, deadline, ctx)

    async def _end_lost(self, pid: int | None, key: AttemptKey) -> None:
        """Kill what runs of an attempt whose spawner died: its process group, if its pid is
        known (and still the attempt's, by its environment), and what it left behind,
        found by its environment (no spawner is its subreaper any more)."""
        if pid is not None:
            await anyio.to_thread.run_sync(_kill_attempt, pid, self.runtime_id, key)
        await anyio.to_thread.run_sync(records.sweep, self.runtime_id, set(), {key})

    # -- after a restart ---------------------------------------------------------------------

    async def find_attempts(
        self, job_ids: Collection[str], claimable: Callable[[AttemptKey], bool] = any_attempt
    ) -> list[FoundAttempt]:
        """The attempts of these jobs that a spawner started (or was asked to), from their
        journals: each is adopted, or found lost, by the instance it belongs to."""
        logs = self.layout.root / "logs"
        found = await anyio.to_thread.run_sync(records.records_of, logs, list(job_ids))
        # A start whose pid line its living spawner has yet to write is waited for, briefly:
        # found without it, its process would be killed and run again. Only one an instance
        # may claim: one whose line will never come (the spawner could not take it back)
        # would otherwise cost every later restart the whole wait.
        with anyio.move_on_after(PID_LINE_WAIT_S):
            while waiting := await anyio.to_thread.run_sync(
                _pids_to_come, [(w, r) for w, r in found if claimable(r.key)]
            ):
                await anyio.sleep(PID_LINE_POLL_S)  # no event: another process writes it
                again = await anyio.to_thread.run_sync(records.records_of, logs, sorted(waiting))
                found = [(w, r) for w, r in found if r.key[0] not in waiting] + again
        # Those whose spawner died too: how they end can never be known. Their processes go
        # now (found by their environment: a record may not have got its pid line), before
        # anything starts again; their instances find the attempts lost.
        gone = await anyio.to_thread.run_sync(_unadoptable, [record for _, record in found])
        if gone:
            await anyio.to_thread.run_sync(records.sweep, self.runtime_id, set(), gone)
        return [
            FoundAttempt(*record.key, handle=where)
            for where, record in found
            if record.runtime == self.runtime_id
        ]

    async def discard(self, found: FoundAttempt) -> bool:
        return False  # a journal is part of the logs; its process, if any, the sweep killed

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Take over a process a runtime before this one started: wait for its end, then read
        its exit status from the line its spawner writes. Its logs go on by themselves: its
        spawner, which outlived the last runtime, copies its output as before."""
        key = (found.job_id, found.task, found.index, found.attempt)
        with self._journal(found.handle) as journal:
            record = await anyio.to_thread.run_sync(journal.get, key)
            if record is None or record.started is None:
                return Outcome(reason=RUNTIME_LOST)  # no pid: nothing to wait for or stop
            if not await anyio.to_thread.run_sync(records.adoptable, record):
                # Its spawner died too (find_attempts stopped it, unless that was just now):
                # how it ends can never be known. It ran, so it counts as lost.
                if record.pid is not None:
                    await anyio.to_thread.run_sync(_kill_attempt, record.pid, record.runtime, key)
                return Outcome(reason=RUNTIME_LOST)
            deadline = _deadline(ctx, record.started)
            exited = record.exited
            if exited is None:
                exited = await self._wait_adopted(ctx, journal, record, deadline)
        if exited is None:
            return Outcome(reason=RUNTIME_LOST)
        return _outcome(exited, record.started, deadline, ctx)

    @contextmanager
    def _journal(self, handle: str) -> Iterator[records.JournalLike]:
        """The journal (or an earlier version's record file) at ``handle``, read once for
        all who read it at the same time: after a restart, thousands of adopted attempts
        wait for their exit lines in one job's journal."""
        if handle.endswith(records.LEGACY_SUFFIX):
            yield records.RecordFile(Path(handle))
            return
        journal = self._journals.get(handle)
        if journal is None:
            journal = self._journals[handle] = records.Journal(Path(handle))
        journal.users += 1
        try:
            yield journal
        finally:
            journal.users -= 1
            if not journal.users:
                del self._journals[handle]

    async def _wait_adopted(
        self,
        ctx: InstanceContext,
        journal: records.JournalLike,
        record: records.Record,
        deadline: float,
    ) -> Exited | None:
        assert record.pid is not None
        if not await anyio.to_thread.run_sync(records.is_running, record):
            return await self._exit_line(journal, record.key)  # it may just have ended
        try:
            pidfd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            return await self._exit_line(journal, record.key)
        try:
            try:
                with ctx.control.scope as scope:
                    scope.deadline = min(scope.deadline, deadline)
                    await anyio.wait_readable(pidfd)
                if scope.cancelled_caught:
                    await _terminate_adopted(record.pid, pidfd, ctx.kill_grace_s)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _terminate_adopted(record.pid, pidfd, ctx.kill_grace_s)
                raise
        finally:
            os.close(pidfd)
        return await self._exit_line(journal, record.key)

    @staticmethod
    async def _exit_line(journal: records.JournalLike, key: AttemptKey) -> Exited | None:
        """The exit status the process's own spawner writes once it has reaped it."""
        with anyio.move_on_after(EXIT_LINE_WAIT_S):
            while True:
                record = await anyio.to_thread.run_sync(journal.get, key)
                if record is None:
                    return None
                if record.exited is not None:
                    return record.exited
                await anyio.sleep(EXIT_LINE_POLL_S)
        return None  # its spawner is gone too: the status is lost


async def _terminate(spawner: Spawner, started: Started, grace: float) -> Exited | None:
    """TERM the process group, KILL it after ``grace``; the end, once heard of."""
    try:
        await spawner.signal(started, signal.SIGTERM)
        with anyio.move_on_after(grace):
            return await spawner.wait(started)
        await spawner.signal(started, signal.SIGKILL)
        with anyio.move_on_after(KILL_WAIT_S):
            return await spawner.wait(started)
    except SpawnerGone:
        pass
    return None


def _starting(spawner: Spawner) -> int:
    return spawner.starting


def _pids_to_come(found: list[tuple[str, records.Record]]) -> set[str]:
    """The jobs with a start whose pid line may still come (their journals are read again)."""
    return {record.key[0] for _, record in found if records.pid_to_come(record)}


def _unadoptable(found: list[records.Record]) -> set[AttemptKey]:
    return {record.key for record in found if not records.adoptable(record)}


def _kill_attempt(pid: int, runtime_id: str, key: AttemptKey) -> None:
    """Kill ``pid``'s group if that process is still the attempt's (its environment says)."""
    if records.attempt_of(pid, runtime_id) == key:
        processes.kill_group(pid, signal.SIGKILL)


async def _terminate_adopted(pid: int, pidfd: int, grace: float) -> None:
    processes.kill_group(pid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        await anyio.wait_readable(pidfd)
        return
    processes.kill_group(pid, signal.SIGKILL)
    with anyio.move_on_after(KILL_WAIT_S):
        await anyio.wait_readable(pidfd)


def _deadline(ctx: InstanceContext, started: float) -> float:
    """The monotonic time the attempt must end by, counted from its real start."""
    timeout = ctx.task.timeout_s
    return math.inf if timeout is None else started + timeout


def _outcome(exited: Exited, started: float, deadline: float, ctx: InstanceContext) -> Outcome:
    """An end after the deadline is a timeout, one before it is not, however late the runtime
    heard of it (it may have been stopped or busy): the spawner's clock decides."""
    timed_out = ctx.control.stop_reason is None and exited.mono > deadline
    return Outcome(
        exit_code=exited.exit_code,
        signal=exited.signal,
        reason="timeout" if timed_out else None,
        duration_s=max(0.0, exited.mono - started),
        # wait4's: the leader and the descendants it waited for (ru_maxrss is in KiB).
        usage=Usage(exited.utime, exited.stime, exited.maxrss_kib * 1024),
    )
