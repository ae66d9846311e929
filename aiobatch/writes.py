"""What the store's next transaction writes, and what becomes of it when a write fails.

A batch holds the rows that events changed (coalesced per task and instance), the events
themselves for the history, new jobs, and the waiters of ``flush``. When the disk is full the
batch is kept and merged with what came after it, to be written once space returns; its
waiters are told at once, so nothing waits on a disk. ``write_batch`` writes a batch as one
transaction, in one call in SQLite's thread (``database.in_db_thread``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from aiobatch.errors import SpecError
from aiobatch.schema import (
    DELETE_JOB,
    END_UNLOADABLE_JOB,
    INSERT_EVENT,
    INSERT_JOB,
    INSERT_LABEL,
    INSERT_TASK,
    SCHEMA,
    STOP_INSTANCE,
    UPSERT_INSTANCE,
)

# While nothing can be written, events for the history are kept up to this many; the rows
# they changed are kept in any case (one per task and instance: bounded by the jobs).
MAX_HELD_EVENTS = 200_000


class Waiter:
    """One ``flush``: set once its batch is written, or failed to be (``error``)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None


class Batch(msgspec.Struct):
    new_jobs: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    new_tasks: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    new_labels: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    job_updates: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    job_stops: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    # Jobs that cannot load.
    job_failures: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    instance_stops: list[tuple[Any, ...]] = msgspec.field(default_factory=list)
    tasks: dict[tuple[str, str], tuple[Any, ...]] = msgspec.field(default_factory=dict)
    instances: dict[tuple[str, str, int], tuple[Any, ...]] = msgspec.field(default_factory=dict)
    events: list[tuple[str, bytes]] = msgspec.field(default_factory=list)
    waiters: list[Waiter] = msgspec.field(default_factory=list)
    events_dropped: int = 0  # history events let go while the disk was full
    deleted: list[tuple[str]] = msgspec.field(default_factory=list)  # jobs whose every row goes

    def __bool__(self) -> bool:
        return bool(self.new_jobs or self.events or self.waiters or self.deleted)

    def absorb(self, later: Batch) -> None:
        """Take in a batch buffered after this one (this one failed to be written)."""
        self.new_jobs += later.new_jobs
        self.new_tasks += later.new_tasks
        self.new_labels += later.new_labels
        self.job_updates += later.job_updates
        self.job_stops += later.job_stops
        self.job_failures += later.job_failures
        self.instance_stops += later.instance_stops
        self.tasks.update(later.tasks)  # later rows win, as they would have in their commit
        self.instances.update(later.instances)
        self.events += later.events
        self.waiters += later.waiters
        self.events_dropped += later.events_dropped
        for (job_id,) in later.deleted:  # rows buffered before the deletion go with it
            self.withdraw_job(job_id)
        self.deleted += later.deleted
        overflow = len(self.events) - MAX_HELD_EVENTS
        if overflow > 0:
            del self.events[:overflow]  # the oldest history goes; every row stays right
            self.events_dropped += overflow

    def withdraw_job(self, job_id: str) -> None:
        """Forget a new job that was refused: nothing of it may be stored later."""
        self.new_jobs = [row for row in self.new_jobs if row[0] != job_id]
        self.new_tasks = [row for row in self.new_tasks if row[0] != job_id]
        self.new_labels = [row for row in self.new_labels if row[0] != job_id]
        self.job_updates = [row for row in self.job_updates if row[-1] != job_id]
        self.job_stops = [row for row in self.job_stops if row[-1] != job_id]
        self.instance_stops = [row for row in self.instance_stops if row[1] != job_id]
        self.tasks = {key: row for key, row in self.tasks.items() if key[0] != job_id}
        self.instances = {key: row for key, row in self.instances.items() if key[0] != job_id}
        self.events = [event for event in self.events if event[0] != job_id]

    def delete_job(self, job_id: str) -> None:
        """Every row of an ended job goes: what is buffered of it too."""
        self.withdraw_job(job_id)
        self.deleted.append((job_id,))

    def release(self, error: BaseException | None = None) -> None:
        """Tell every waiter how the write went."""
        for waiter in self.waiters:
            waiter.error = error
            waiter.done.set()
        self.waiters = []


def write_batch(db: sqlite3.Connection, batch: Batch) -> None:
    """The batch as one transaction (blocking: run in the connection's thread). On an error
    nothing of it is written."""
    if batch.new_jobs:
        # An accepted job must survive even a power loss; state changes after it are
        # replayable (at-least-once), so they need not pay an fsync each.
        db.execute("PRAGMA synchronous = FULL")
    try:
        db.execute("BEGIN")
        _write_rows(db, batch)
        db.execute("COMMIT")
        if batch.deleted:  # give the freed pages back to the file system
            # A script, not execute: the pragma frees one page per step, and only
            # sqlite3_exec steps it to the end.
            db.executescript("PRAGMA incremental_vacuum;")
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already (a full disk)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise
    finally:
        if batch.new_jobs:
            db.execute("PRAGMA synchronous = NORMAL")


def _write_rows(db: sqlite3.Connection, batch: Batch) -> None:
    if batch.new_jobs:
        db.executemany(INSERT_JOB, batch.new_jobs)
        db.executemany(INSERT_TASK, batch.new_tasks)
        db.executemany(INSERT_LABEL, batch.new_labels)
    # Stop requests first: a job that ends in the same batch then clears them.
    if batch.job_stops:
        db.executemany(
            "UPDATE jobs SET stopping_state = ?, stopping_reason = ? WHERE id = ?",
            batch.job_stops,
        )
    if batch.job_updates:
        db.executemany(
            "UPDATE jobs SET state = ?1, reason = ?2, "
            "started_at = COALESCE(started_at, ?3), ended_at = ?4, "
            # An ended job's wind-down is over: a retry must not resume it.
            "stopping_state = IIF(?4 IS NULL, stopping_state, NULL), "
            "stopping_reason = IIF(?4 IS NULL, stopping_reason, NULL) WHERE id = ?5",
            batch.job_updates,
        )
    for failure in batch.job_failures:
        for statement in END_UNLOADABLE_JOB:
            db.execute(statement, failure)
    if batch.tasks:
        db.executemany(
            "UPDATE tasks SET state = ?, reason = ? WHERE job_id = ? AND name = ?",
            batch.tasks.values(),
        )
    if batch.instances:
        db.executemany(UPSERT_INSTANCE, batch.instances.values())
    if batch.instance_stops:  # after the rows they name, which this batch may create
        db.executemany(STOP_INSTANCE, batch.instance_stops)
    if batch.events:
        db.executemany(INSERT_EVENT, batch.events)
    if batch.deleted:
        (highest,) = db.execute("SELECT MAX(seq) FROM events").fetchone()
        for statement in DELETE_JOB:
            db.executemany(statement, batch.deleted)
        _keep_seqs_rising(db, highest)


def _keep_seqs_rising(db: sqlite3.Connection, highest: int | None) -> None:
    """An event's seq is never handed out twice: SQLite gives the next row the highest seq
    plus one, so deleting the newest events would hand theirs out again (and a notification
    target a reload added starts after the highest seq then). A row of no job keeps it."""
    if highest is None:
        return
    db.execute(
        "INSERT INTO events (seq, job_id, body) SELECT ?1, '', x'' "
        "WHERE NOT EXISTS (SELECT 1 FROM events WHERE seq >= ?1)",
        (highest,),
    )
    db.execute("DELETE FROM events WHERE job_id = '' AND seq < (SELECT MAX(seq) FROM events)")


Row = tuple[Any, ...]
INT64 = "a signed 64-bit integer (-9223372036854775808 to 9223372036854775807)"


class TrialRows:
    """An empty copy of the schema in memory, on which a new job's rows are inserted and
    rolled back: what the writer would fail on (an integer beyond 64 bits, text that is not
    UTF-8, a duplicate key) fails here, in ``submit``, as SpecError, never in the writer,
    whose failure would take the runtime down."""

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None

    def check(self, job: Row, tasks: Sequence[Row], event: Row, labels: Sequence[Row] = ()) -> None:
        db = self._connection()
        db.execute("BEGIN")
        try:
            db.execute(INSERT_JOB, job)
            db.executemany(INSERT_TASK, tasks)
            db.executemany(INSERT_LABEL, labels)
            db.execute(INSERT_EVENT, event)
        except (sqlite3.Error, OverflowError, UnicodeEncodeError) as exc:
            raise SpecError([self._problem(job, tasks, exc)]) from None
        finally:
            db.execute("ROLLBACK")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # Used from the event loop only; made there, or in whichever thread made the store.
            self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            self._db.executescript(SCHEMA)
        return self._db

    def _problem(self, job: Row, tasks: Sequence[Row], exc: Exception) -> str:
        """The field path and what is wrong with it, for the error that ``exc`` is."""
        if isinstance(exc, sqlite3.IntegrityError):
            seen: set[str] = set()
            for index, (_, name, _, _) in enumerate(tasks):
                if name in seen:
                    return f"$.tasks[{index}].name: {name[:60]!r} is the name of another task"
                seen.add(name)
        for column, field_path in ((2, "$.name"), (3, "$.priority")):
            why = self._unstorable(job[column])
            if why is not None:
                return f"{field_path}: {why}"
        for index, task in enumerate(tasks):
            why = self._unstorable(task[1])
            if why is not None:
                return f"$.tasks[{index}].name: {why}"
        return f"$: cannot be stored: {exc}"

    def _unstorable(self, value: Any) -> str | None:
        try:
            self._connection().execute("SELECT ?", (value,))
        except OverflowError:
            return f"is beyond {INT64}"
        except UnicodeEncodeError:
            return "is not valid text (it holds a lone surrogate)"
        except sqlite3.Error as exc:
            return f"cannot be stored: {exc}"
        return None
