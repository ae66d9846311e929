"""SQLite persistence: group commit of events, and the reads that load jobs back (the tables
and rows are in ``schema.py``; opening, checking and migrating the file in ``database.py``).

The store subscribes to the bus. Events are buffered and written by one writer task, many
per transaction: the writer takes whatever accumulated while the previous transaction ran.
Rows of the same instance or task within a batch are coalesced (the last event carries the
whole row), while every event is appended to the ``events`` table.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
from anyio.abc import TaskStatus
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from aiobatch.database import in_db_thread, is_storage_failure, open_database, probe_write
from aiobatch.errors import RuntimeClosed, SpecError, StateDirUnwritable
from aiobatch.events import (
    Event,
    InstanceStateChanged,
    InstanceStopRequested,
    JobStateChanged,
    JobStopRequested,
    JobSubmitted,
    TaskStateChanged,
    event_decoder,
    event_encoder,
)
from aiobatch.logging import get_logger
from aiobatch.schema import (
    TERMINAL_INSTANCE_STATES,
    TERMINAL_JOB_STATES,
    InstanceRow,
    JobRow,
    job_row,
)
from aiobatch.spec import JobDef
from aiobatch.states import InstanceState, JobState
from aiobatch.writes import Batch, TrialRows, Waiter, write_batch

log = get_logger("aiobatch.store")

RETRY_FIRST_S = 0.1  # a failed write is tried again after this, doubling up to RETRY_MAX_S
RETRY_MAX_S = 5.0
# While commits come faster than this, the writer waits out the rest before the next.
COMMIT_EVERY_S = 0.002


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._batch = Batch()
        self._trial = TrialRows()
        self._wake = anyio.Event()
        self.commits = 0  # transactions written, for statistics and tests
        self._last_commit = -math.inf
        self._flush_asked = anyio.Event()  # a flush waits: the pacing stops
        self._writing = False  # a writer task runs
        # Why the last write failed (disk full, I/O error); None while writes succeed.
        self.unwritable: str | None = None
        self.on_writable: Callable[[], None] | None = None  # called when writes work again
        self.on_commit: Callable[[float], None] | None = None  # each commit's seconds

    @property
    def queued_events(self) -> int:
        """History events buffered, not yet committed."""
        return len(self._batch.events)

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "store is not open"
        return self._db

    async def open(self) -> None:
        """Open the database, or refuse to (DatabaseUnusable, StateDirUnwritable) before
        anything is written to it (``database.py``)."""
        self._db = await open_database(self.path)

    async def close(self) -> None:
        if self._batch.events or self._batch.new_jobs:
            # Only while the disk stayed full to the end: the next start replays from what
            # is stored (an attempt whose end was not written runs again).
            log.error("store_closed_unwritten", events=len(self._batch.events))
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- writing ----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Bus subscriber: buffer the event's effect on the tables (no I/O here)."""
        if isinstance(event, JobSubmitted):
            return  # stored with its job (add_job), before anyone heard of it
        batch = self._batch
        batch.events.append((event.job_id, event_encoder.encode(event)))
        if isinstance(event, InstanceStateChanged):
            ended = event.ts if event.state in TERMINAL_INSTANCE_STATES else None
            batch.instances[(event.job_id, event.task, event.index)] = (
                event.job_id, event.task, event.index, event.attempt, event.state,
                event.reason, event.exit_code, event.signal, event.pid, event.started_at,
                ended, event.duration_s, event.lost, event.interrupted, event.not_before,
                event.cpu_user_s, event.cpu_system_s, event.max_rss_bytes,
            )  # fmt: skip
        elif isinstance(event, TaskStateChanged):
            batch.tasks[(event.job_id, event.task)] = (
                event.state,
                event.reason,
                event.job_id,
                event.task,
            )
        elif isinstance(event, JobStateChanged):
            started = event.ts if event.state == JobState.RUNNING else None
            ended = event.ts if event.state in TERMINAL_JOB_STATES else None
            batch.job_updates.append((event.state, event.reason, started, ended, event.job_id))
        elif isinstance(event, JobStopRequested):
            batch.job_stops.append((event.state, event.reason, event.job_id))
        elif isinstance(event, InstanceStopRequested):
            batch.instance_stops.append(
                (event.reason, event.job_id, event.task, event.index, event.attempt)
            )
        self._wake.set()

    def add_job(self, submitted: JobSubmitted, seq: int, defn: JobDef) -> None:
        """Buffer a new job with its tasks, all PENDING, and its ``JobSubmitted`` event;
        ``flush`` makes them durable. The caller publishes the event once they are: a
        watcher never hears of a job that was refused.

        The rows are encoded and tried here (``trial_rows``): a job that the writer could not
        store is refused now, with SpecError, and nothing of it is buffered."""
        job_id, submitted_at = submitted.job_id, submitted.ts
        try:
            spec = msgspec.json.encode(defn)
            event = event_encoder.encode(submitted)
        except (msgspec.EncodeError, UnicodeEncodeError, OverflowError) as exc:
            raise SpecError([f"$: cannot be stored: {exc}"]) from None
        job = (
            job_id, seq, defn.name, defn.priority, spec, JobState.SUBMITTED.value, None,
            None, None, submitted_at, None, None,
        )  # fmt: skip
        tasks = [(job_id, task.name, "PENDING", None) for task in defn.tasks]
        labels = [(job_id, key, value) for key, value in defn.labels.items()]
        self._trial.check(job, tasks, (job_id, event), labels)
        batch = self._batch
        batch.new_jobs.append(job)
        batch.new_tasks.extend(tasks)
        batch.new_labels.extend(labels)
        batch.events.append((job_id, event))
        self._wake.set()

    def fail_job(self, job_id: str, reason: str, ts: float) -> None:
        """Store an unfinished job as FAILED without loading it (it cannot be: see restart),
        its unfinished tasks and instances CANCELLED, and the event in its history; ``flush``
        makes it durable."""
        event = JobStateChanged(job_id=job_id, state=JobState.FAILED.value, reason=reason, ts=ts)
        self._batch.job_failures.append((reason, ts, job_id))
        self._batch.events.append((job_id, event_encoder.encode(event)))
        self._wake.set()

    async def flush(self, *, required: bool = False) -> None:
        """Return once everything buffered so far is committed.

        While the state dir cannot be written, return at once (queries then read what is
        committed), or with ``required``, raise StateDirUnwritable."""
        if not self._writing:  # no writer task: write here
            await self.write_pending()
            return
        if self.unwritable is not None and not required:
            return
        waiter = Waiter()
        self._batch.waiters.append(waiter)
        self._wake.set()
        self._flush_asked.set()
        await waiter.done.wait()
        if waiter.error is not None and required:
            raise waiter.error

    def withdraw_job(self, job_id: str) -> None:
        """Forget a new job whose commit failed: the caller refuses it, nothing is stored."""
        self._batch.withdraw_job(job_id)

    async def delete_jobs(self, job_ids: Sequence[str]) -> None:
        """Remove every row of these ended jobs in one transaction (then reclaim the space);
        return once it is committed. Raises StateDirUnwritable if it cannot be."""
        for job_id in job_ids:
            self._batch.delete_job(job_id)
        await self.flush(required=True)

    async def existing_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` (at most a few hundred) that are stored."""
        marks = ",".join("?" * len(job_ids))
        sql = f"SELECT id FROM jobs WHERE id IN ({marks})"
        async with self.db.execute(sql, tuple(job_ids)) as cursor:
            return {row[0] for row in await cursor.fetchall()}

    async def job_ids(self) -> set[str]:
        """Every stored job's id."""
        async with self.db.execute("SELECT id FROM jobs") as cursor:
            return {row[0] for row in await cursor.fetchall()}

    async def job_counts(self) -> dict[str, int]:
        """Every stored job, counted by state (committed ones: a new job is within ms)."""
        async with self.db.execute("SELECT state, count(*) FROM jobs GROUP BY state") as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def ended_before(self, state: JobState, before: float, limit: int) -> list[str]:
        """Jobs that ended in ``state`` before ``before``, the oldest first."""
        async with self.db.execute(
            "SELECT id FROM jobs WHERE state = ? AND ended_at < ? ORDER BY ended_at LIMIT ?",
            (state.value, before, limit),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: one transaction per wake-up, holding all that accumulated. While the
        state dir cannot be written it keeps what it has and tries again, backing off."""
        self._writing = True
        task_status.started()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StateDirUnwritable),
            wait=wait_exponential(multiplier=RETRY_FIRST_S, max=RETRY_MAX_S),
            reraise=True,
        )
        try:
            while True:
                await self._wake.wait()
                await self._pace()
                self._wake = anyio.Event()
                if self._flush_asked.is_set():
                    self._flush_asked = anyio.Event()
                try:
                    await self.write_pending()
                except StateDirUnwritable:
                    # Retried with backoff until there is room (tenacity's loop costs more
                    # than a small transaction: it is entered only when one has failed).
                    await anyio.sleep(RETRY_FIRST_S)
                    async for attempt in retrying:
                        with attempt:
                            await self.write_pending()
        finally:
            self._writing = False
            # Nobody waits for a writer that is gone (flush writes itself from now on).
            self._batch.release(RuntimeClosed("the store's writer has stopped"))

    async def _pace(self) -> None:
        """Let state changes gather for the next transaction while commits come fast: each
        one costs a round trip to SQLite's thread, more than the rows it writes. A flush
        that someone waits for goes at once."""
        pause = self._last_commit + COMMIT_EVERY_S - anyio.current_time()
        if pause > 0 and not self._batch.waiters:
            with anyio.move_on_after(pause):
                await self._flush_asked.wait()

    async def write_pending(self) -> None:
        """Write what is buffered in one transaction. If the disk is full (or the file
        system fails), keep it for the next try and raise StateDirUnwritable."""
        batch, self._batch = self._batch, Batch()
        if not batch and self.unwritable is None:
            return
        began = time.perf_counter()
        try:
            # With nothing to write (what failed was withdrawn), a write of no consequence
            # still tells whether there is room again.
            await self._write(batch) if batch else await probe_write(self.db)
        except BaseException as exc:
            if not (isinstance(exc, sqlite3.Error) and is_storage_failure(exc)):
                batch.release(exc)  # a bug, not the disk: its waiters hear of it, not wait
                raise
            batch.absorb(self._batch)  # what came since goes after it
            self._batch = batch
            error = StateDirUnwritable(self.path.parent, str(exc))
            if self.unwritable is None:
                log.error("store_unwritable", error=str(exc), held_events=len(batch.events))
            self.unwritable = str(exc)
            batch.release(error)  # nobody waits on a full disk
            raise error from exc
        self.commits += 1
        self._last_commit = anyio.current_time()
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)
        batch.release()
        if self.unwritable is not None:
            log.warning("store_resumed", events_dropped=batch.events_dropped)
            self.unwritable = None
            if self.on_writable is not None:
                self.on_writable()

    async def _write(self, batch: Batch) -> None:
        # A transaction must not be torn by cancellation: shield it, it is short. All of it
        # runs in one call in the connection's thread: one round trip, not one per statement.
        with anyio.CancelScope(shield=True):
            await in_db_thread(self.db, write_batch, batch)

    # -- reading ----------------------------------------------------------------------------

    async def next_job_seq(self) -> int:
        async with self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) + 1 if row else 1

    async def unfinished_job_ids(self) -> list[str]:
        async with self.db.execute(
            "SELECT id FROM jobs WHERE state NOT IN (?, ?, ?) ORDER BY seq",
            tuple(TERMINAL_JOB_STATES),
        ) as cursor:
            return [row[0] async for row in cursor]

    async def list_job_rows(
        self,
        *,
        states: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[JobRow]:
        """Jobs newest first: of one of ``states``, with every one of ``labels``."""
        query = "SELECT * FROM jobs"
        where: list[str] = []
        params: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params += states
        for key, value in (labels or {}).items():  # each one found by the (key, value) index
            where.append("id IN (SELECT job_id FROM job_labels WHERE key = ? AND value = ?)")
            params += [key, value]
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        async with self.db.execute(query, params) as cursor:
            return [job_row(row) for row in await cursor.fetchall()]

    async def job_row(self, job_id: str) -> JobRow | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return job_row(row) if row is not None else None

    async def task_rows(self, job_id: str) -> dict[str, tuple[str, str | None]]:
        async with self.db.execute(
            "SELECT name, state, reason FROM tasks WHERE job_id = ?", (job_id,)
        ) as cursor:
            return {row[0]: (row[1], row[2]) async for row in cursor}

    async def instance_rows(self, job_id: str) -> list[InstanceRow]:
        async with self.db.execute(
            "SELECT task, idx, attempt, state, reason, exit_code, signal, pid, started_at, "
            "ended_at, duration_s, lost, interrupted, stop_reason, not_before, cpu_user_s, "
            "cpu_system_s, max_rss_bytes FROM instances "
            "WHERE job_id = ?",
            (job_id,),
        ) as cursor:
            return [
                InstanceRow(r[0], r[1], r[2], InstanceState(r[3]), *r[4:])
                for r in await cursor.fetchall()
            ]

    async def events(
        self, job_id: str, *, after: int = 0, limit: int = 100_000
    ) -> list[tuple[int, Event]]:
        """A job's stored events after ``after``, everything buffered so far included."""
        await self.flush()
        async with self.db.execute(
            "SELECT seq, body FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, after, limit),
        ) as cursor:
            # One fetch, not a trip to the database thread per row.
            return [(row[0], event_decoder.decode(row[1])) for row in await cursor.fetchall()]
