"""The read side of ``Runtime``'s API, each method handing its call to the part that answers
it: ``queries.py`` (jobs, their results and history, waiting for their end, their logs), the
bus (events, as streams or callbacks), the engine (a running job's live records) and the
state dir's layout (where a log is). Nothing here changes a job.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from anyio.streams.memory import MemoryObjectReceiveStream

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
from aiobatch.events import Bus, Event
from aiobatch.layout import StateLayout, Stream
from aiobatch.model import TaskRec
from aiobatch.queries import Queries
from aiobatch.spec import JobDef
from aiobatch.states import JobState


class RuntimeReads:
    """Mixed into ``Runtime``, which sets these parts."""

    _queries: Queries
    _engine: Engine
    _bus: Bus
    _layout: StateLayout

    async def exist_job(self, job_id: str) -> bool:
        return await self._queries.exists(job_id)

    async def list_jobs(
        self,
        *,
        status: JobState | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> list[JobSummary]:
        """Jobs newest first, optionally of one status and with all of ``labels``; ``offset``
        skips that many."""
        return await self._queries.list_jobs(
            status=status, limit=limit, offset=offset, labels=labels
        )

    async def job_definition(self, job_id: str) -> JobDef:
        """The job as resolved at submission: its tasks, edges, mappings."""
        return await self._queries.definition(job_id)

    async def job_history(
        self, job_id: str, *, after: int = 0, limit: int = 10_000
    ) -> list[HistoryEntry]:
        """The job's stored events after ``after`` (a ``seq``), oldest first."""
        return await self._queries.history(job_id, after=after, limit=limit)

    def cached_status(self, job_id: str) -> JobState:
        return self._queries.cached_status(job_id)

    async def job_snapshot(self, job_id: str, *, instances: bool = False) -> JobSnapshot:
        return await self._queries.snapshot(job_id, instances=instances)

    async def instance_result(self, job_id: str, task_name: str, index: int) -> InstanceDetail:
        """One instance's result; its stderr tail (read for it alone) if it failed."""
        return await self._queries.instance_result(job_id, task_name, index)

    async def task_result(
        self, job_id: str, task_name: str, *, instances: bool = True
    ) -> TaskResult:
        """The task's counts, its instances (unless not asked for) and the stderr tails of
        its first failed instances (``MAX_STDERR_TAILS``)."""
        return await self._queries.task_result(job_id, task_name, instances=instances)

    async def instance_results(
        self, job_id: str, task_name: str, start: int, stop: int
    ) -> list[InstanceResult]:
        """The results of the task's instances ``start`` to ``stop`` (not included)."""
        return await self._queries.instance_results(job_id, task_name, start, stop)

    async def wait_job(self, job_id: str) -> JobSnapshot:
        return await self._queries.wait(job_id)

    # -- events -------------------------------------------------------------------------------

    def job_events(self, job_id: str) -> AsyncIterator[Event]:
        return self._queries.job_events(job_id)

    def events(self, job_id: str | None = None) -> AsyncIterator[Event]:
        """Every state change (of one job, ending with it; or of all jobs, without end)."""
        return self._queries.events(job_id)

    @asynccontextmanager
    async def subscribe(
        self, job_id: str | None = None, *, limit: float = math.inf
    ) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        """Events (of one job, if given) as a stream; once entered, every later event is sure
        to reach it. A consumer ``limit`` events behind is cut off: its stream ends."""
        with self._bus.stream(job_id, limit=limit) as stream:
            yield stream

    def on_event(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` with each event as it is published, in this thread and before
        anything else happens (it must not block; an exception is logged). Returns the
        function that unsubscribes it. For in-process views; others use ``subscribe``."""
        return self._bus.subscribe(callback)

    def live_tasks(self, job_id: str) -> Mapping[str, TaskRec]:
        """The records of a running job's tasks, as the engine changes them (for in-process
        views that follow ``on_event``); empty once the job has ended."""
        job = self._engine.jobs.get(job_id)
        return job.tasks if job is not None else {}

    def waiting_reason(self, task: TaskRec) -> str | None:
        return self._engine.waiting_reason(task)

    # -- logs ---------------------------------------------------------------------------------

    def log_path(self, job_id: str, task: str, index: int, stream: Stream) -> Path:
        """Where an instance's log is kept (it may not exist yet)."""
        return self._layout.log_path(job_id, task, index, stream)

    async def read_log(
        self,
        job_id: str,
        task: str,
        index: int,
        *,
        stream: LogStream = "stdout",
        offset: int = 0,
        limit: int | None = None,
    ) -> bytes:
        """Bytes of an instance's log from ``offset`` (empty if it has not started)."""
        return await self._queries.read_log(job_id, task, index, stream, offset, limit)

    def follow_log(
        self, job_id: str, task: str, index: int, *, stream: LogStream = "stdout", offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Chunks of an instance's log as they are written, until the instance has ended."""
        return self._queries.follow_log(job_id, task, index, stream, offset)
