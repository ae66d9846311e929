"""The read side of a runtime: finding jobs (live, recently ended, or stored), their snapshots,
results, history, events and logs. Reads only: nothing here changes a job."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec

from aiobatch import views
from aiobatch.api import (
    HistoryEntry,
    InstanceDetail,
    InstanceResult,
    JobSnapshot,
    JobSummary,
    LogStream,
    TaskResult,
)
from aiobatch.engine import Engine
from aiobatch.errors import InstanceNotFound, JobNotFound, TaskNotFound
from aiobatch.events import Bus, Event, JobStateChanged
from aiobatch.labels import checked_labels
from aiobatch.layout import StateLayout
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.recovery import restore_job
from aiobatch.spec import JobDef
from aiobatch.states import INSTANCE_TERMINAL, JOB_TERMINAL, TASK_TERMINAL, InstanceState, JobState
from aiobatch.store import Store

LOG_POLL_S = 0.2  # how often a followed log file is checked for new bytes
ARCHIVE_SIZE = 256  # ended jobs kept in memory for queries; older ones are read from SQLite
MAX_STDERR_TAILS = 100  # failed instances whose stderr tails a task's result has


class Queries:
    def __init__(
        self,
        engine: Engine,
        store: Store,
        bus: Bus,
        layout: StateLayout,
        queued_of: views.QueuedOf | None = None,
    ) -> None:
        self._engine, self._store, self._bus, self._layout = engine, store, bus, layout
        self._queued_of = queued_of
        # Ended jobs (of this run, or loaded for a query), most recent last; bounded.
        self._archive: OrderedDict[str, JobRec] = OrderedDict()
        self._job_done: dict[str, anyio.Event] = {}
        # Jobs whose rows are being deleted: gone for every reader from the start of it.
        self._deleting: set[str] = set()
        # A job read from its rows, and rows deleted, one at a time: a read sees all of a
        # job's rows or none, and never brings back into memory a job deleted meanwhile.
        self._rows = anyio.Lock()
        # Held to retry a job and to delete jobs: a retry never revives a job being deleted.
        self.retrying_or_deleting = anyio.Lock()

    # -- finding jobs ------------------------------------------------------------------------

    async def load(self, job_id: str) -> tuple[JobRec, list[InstanceRec]]:
        """The job as stored, and its instances that were active when it was stored."""
        row = await self._store.job_row(job_id)
        if row is None:
            raise JobNotFound(job_id)
        tasks = await self._store.task_rows(job_id)
        instances = await self._store.instance_rows(job_id)
        return restore_job(row, tasks, instances)

    async def job(self, job_id: str) -> JobRec:
        if job_id in self._deleting:
            raise JobNotFound(job_id)
        job = self._engine.jobs.get(job_id) or self._archive.get(job_id)
        if job is None:
            # A job that ended a moment ago may have left the archive before the store
            # committed its end: what is stored must catch up with the engine first.
            await self._store.flush()
            async with self._rows:
                job, _ = await self.load(job_id)
                if job_id in self._deleting:  # its deletion began while it was read
                    raise JobNotFound(job_id)
                self.remember(job)
        return job

    @asynccontextmanager
    async def deleting(self, job_ids: list[str]) -> AsyncIterator[list[str]]:
        """Take these ended jobs out of every reader's sight while their rows are deleted
        (yielded: those that are not running again, retried meanwhile). The caller holds
        ``retrying_or_deleting``."""
        ids = [i for i in job_ids if i not in self._engine.jobs and i not in self._deleting]
        self._deleting.update(ids)
        for job_id in ids:
            self._archive.pop(job_id, None)
        try:
            async with self._rows:
                yield ids
        finally:
            self._deleting.difference_update(ids)

    async def live_job(self, job_id: str) -> JobRec | None:
        """The job if it has not ended; None if it has; JobNotFound if there is none."""
        job = self._engine.jobs.get(job_id)
        if job is None:
            await self.job(job_id)
        return job

    def remember(self, job: JobRec) -> None:
        self._archive[job.id] = job
        self._archive.move_to_end(job.id)
        while len(self._archive) > ARCHIVE_SIZE:
            self._archive.popitem(last=False)

    def forget(self, job_id: str) -> None:
        """A retried job is live again: the engine holds it, not the archive."""
        self._archive.pop(job_id, None)

    def job_ended(self, job_id: str, job: JobRec | None) -> None:
        """A job ended (``job``: its records, as the engine let them go): wake its waiters."""
        if job is not None:
            self.remember(job)
        done = self._job_done.pop(job_id, None)
        if done is not None:
            done.set()

    def cached_status(self, job_id: str) -> JobState:
        job = self._engine.jobs.get(job_id) or self._archive.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job.state

    async def exists(self, job_id: str) -> bool:
        if job_id in self._deleting:
            return False
        return job_id in self._engine.jobs or await self._store.job_row(job_id) is not None

    async def task(self, job_id: str, task_name: str) -> TaskRec:
        task = (await self.job(job_id)).tasks.get(task_name)
        if task is None:
            raise TaskNotFound(job_id, task_name)
        return task

    async def instance_task(self, job_id: str, task_name: str, index: int) -> TaskRec:
        """The task, once ``index`` is known to be one of its instances."""
        task = await self.task(job_id, task_name)
        if not 0 <= index < task.total:
            raise InstanceNotFound(job_id, task_name, index)
        return task

    # -- snapshots and results ---------------------------------------------------------------

    async def list_jobs(
        self,
        *,
        status: JobState | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> list[JobSummary]:
        """Jobs newest first, optionally of one status and with all of ``labels``;
        ``offset`` skips that many."""
        labels = checked_labels(labels) if labels else None
        await self._store.flush()
        states = [JobState(status).value] if status is not None else None
        rows = await self._store.list_job_rows(
            states=states, labels=labels, limit=limit, offset=offset
        )
        summaries = []
        for row in rows:
            if row.id in self._deleting:
                continue  # gone for readers already; its rows go in a moment
            live = self._engine.jobs.get(row.id)
            total = sum(task.instances for task in row.defn.tasks)
            done = sum(task.done for task in live.tasks.values()) if live else total
            summaries.append(
                JobSummary(
                    id=row.id,
                    name=row.defn.name,
                    status=(live.state if live else row.state).value,
                    reason=live.reason if live else row.reason,
                    submitted_at=row.submitted_at,
                    started_at=row.started_at,
                    ended_at=row.ended_at,
                    done=done,
                    total=total,
                    seq=row.seq,
                    labels=row.defn.labels,
                )
            )
        return summaries

    async def definition(self, job_id: str) -> JobDef:
        return (await self.job(job_id)).defn

    async def history(self, job_id: str, *, after: int, limit: int) -> list[HistoryEntry]:
        await self.job(job_id)  # JobNotFound for an unknown id
        events = await self._store.events(job_id, after=after, limit=limit)
        return [HistoryEntry(seq=seq, event=event) for seq, event in events]

    async def snapshot(self, job_id: str, *, instances: bool = False) -> JobSnapshot:
        return views.job_snapshot(
            await self.job(job_id), self._engine.waiting_reason, instances, self._queued_of
        )

    async def instance_result(self, job_id: str, task_name: str, index: int) -> InstanceDetail:
        task = await self.instance_task(job_id, task_name, index)
        queued = self._queued_of(task).get(index) if self._queued_of is not None else None
        result = views.instance_result(task, index, self._engine.waiting_reason, queued)
        tail = None
        if result.status == InstanceState.FAILED:
            path = self._layout.log_path(job_id, task_name, index, "stderr")
            tail = await anyio.to_thread.run_sync(views.tail, path)
        return InstanceDetail(**msgspec.structs.asdict(result), stderr_tail=tail)

    async def task_result(
        self, job_id: str, task_name: str, *, instances: bool = True
    ) -> TaskResult:
        task = await self.task(job_id, task_name)
        waiting_reason, queued_of = self._engine.waiting_reason, self._queued_of
        result = views.task_result(task, waiting_reason, instances, queued_of)
        failed = [i.index for i in task.instances if i and i.state is InstanceState.FAILED]
        del failed[MAX_STDERR_TAILS:]  # a file read each: bounded, however many failed

        def read_tails() -> dict[int, list[str]]:  # file reads: off the event loop
            log_path = self._layout.log_path
            return {i: views.tail(log_path(job_id, task_name, i, "stderr")) for i in failed}

        tails = await anyio.to_thread.run_sync(read_tails)
        return msgspec.structs.replace(result, stderr_tails=tails)

    async def instance_results(
        self, job_id: str, task_name: str, start: int, stop: int
    ) -> list[InstanceResult]:
        task = await self.task(job_id, task_name)
        queued = self._queued_of(task) if self._queued_of is not None else {}
        waiting_reason = self._engine.waiting_reason
        return [
            views.instance_result(task, index, waiting_reason, queued.get(index))
            for index in range(max(0, start), min(stop, task.total))
        ]

    async def wait(self, job_id: str) -> JobSnapshot:
        job = await self.job(job_id)
        if job.state not in JOB_TERMINAL:
            done = self._job_done.setdefault(job_id, anyio.Event())
            await done.wait()
        return await self.snapshot(job_id)

    # -- events and logs ---------------------------------------------------------------------

    async def job_events(self, job_id: str) -> AsyncIterator[Event]:
        job = await self.job(job_id)
        if job.state in JOB_TERMINAL:
            return
        with self._bus.stream(job_id) as stream:
            async for event in stream:
                yield event
                if isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
                    return

    async def events(self, job_id: str | None = None) -> AsyncIterator[Event]:
        if job_id is not None:
            async for event in self.job_events(job_id):
                yield event
            return
        with self._bus.stream() as stream:
            async for event in stream:
                yield event

    async def log_file(self, job_id: str, task: str, index: int, stream: LogStream) -> Path:
        await self.instance_task(job_id, task, index)
        return self._layout.log_path(job_id, task, index, stream)

    async def read_log(
        self, job_id: str, task: str, index: int, stream: LogStream, offset: int, limit: int | None
    ) -> bytes:
        path = await self.log_file(job_id, task, index, stream)
        return await anyio.to_thread.run_sync(views.read_bytes, path, offset, limit)

    async def follow_log(
        self, job_id: str, task: str, index: int, stream: LogStream, offset: int
    ) -> AsyncIterator[bytes]:
        path = await self.log_file(job_id, task, index, stream)
        while True:
            # Read after checking the state, so the last bytes of an ended instance are seen.
            ended = _instance_ended(await self.job(job_id), task, index)
            chunk = await anyio.to_thread.run_sync(views.read_bytes, path, offset, views.LOG_CHUNK)
            if chunk:
                offset += len(chunk)
                yield chunk
            elif ended:
                return
            else:
                await anyio.sleep(LOG_POLL_S)


def _instance_ended(job: JobRec, task: str, index: int) -> bool:
    if job.state in JOB_TERMINAL:
        return True
    task_rec = job.tasks[task]
    inst = task_rec.instances[index]
    if inst is None:
        return task_rec.state in TASK_TERMINAL
    return inst.state in INSTANCE_TERMINAL
