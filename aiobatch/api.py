"""The PyODPS-style facade: ``JobHandle``, task results and progress, over any backend.

A backend is the in-process ``Runtime`` (and, later, a ``Client`` over the control socket);
the handle only speaks the small ``Backend`` protocol, so it works the same over either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from aiobatch.errors import JobFailed, JobNotFound, TaskNotFound
from aiobatch.events import Event
from aiobatch.spec import JobDef

if TYPE_CHECKING:  # wire.py reads this module's structs
    from aiobatch.wire import EnvChange, EnvInfo
from aiobatch.states import JOB_TERMINAL, JobState, Status, coarse_status


class InstanceResult(msgspec.Struct, frozen=True, kw_only=True):
    index: int
    status: str
    reason: str | None = None
    attempts: int = 0
    exit_code: int | None = None
    duration_s: float | None = None
    # PENDING, waiting out a retry's backoff: when it may start (seconds since the epoch).
    not_before: float | None = None
    # What its latest attempt that ended cost: CPU seconds (user, system), peak memory.
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    max_rss_bytes: int | None = None


class InstanceDetail(InstanceResult, frozen=True, kw_only=True):
    """One instance's result and, if it failed, the last lines of its stderr."""

    stderr_tail: list[str] | None = None


class TaskResult(msgspec.Struct, frozen=True, kw_only=True):
    """A task's status, counts, and (when asked for) every instance."""

    status: str
    reason: str | None
    total: int
    # Instances that ended: succeeded + failed + cancelled (never-started ones of a stopped
    # or skipped task count as cancelled); PyODPS' terminated workers.
    done: int
    running: int  # started and not ended: staging, running or uploading
    succeeded: int
    failed: int
    cancelled: int
    # Summed over its instances' latest attempts that ended; the highest peak memory.
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    max_rss_bytes: int = 0
    instances: list[InstanceResult] | None = None
    # Why its instances that wait in their executor's own queue (Slurm's) have not started,
    # by index (``slurm_pending: Priority``); None when none waits there.
    queued: dict[int, str] | None = None
    # Last lines of stderr of failed instances, by index (filled by get_task_result).
    stderr_tails: dict[int, list[str]] | None = None


class JobSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A job as ``aiobatch run --json`` prints it."""

    id: str
    name: str
    status: str
    reason: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    tasks: dict[str, TaskResult]
    labels: dict[str, str] = {}


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    status: str
    reason: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    # Instances that have ended, of all the job's instances (an ended job counts all).
    done: int = 0
    total: int = 0
    # The job's place in submission order (newer: larger), which lists are sorted by.
    seq: int = 0
    labels: dict[str, str] = {}


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event of a job, with its place in the store's order."""

    seq: int
    event: Event


def finished_percentage(terminated: int, total: int) -> int:
    """PyODPS' percent of a stage: terminated workers of all, in whole percent rounded down
    (100 only once every one has ended); a stage without workers counts 0, as PyODPS' sum."""
    return 100 * terminated // total if total > 0 else 0


class StageProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One stage with the fields of PyODPS' ``Instance.Task.TaskProgress.StageProgress``."""

    name: str
    running_workers: int
    terminated_workers: int
    total_workers: int
    backup_workers: int = 0  # aiobatch runs no backup instances; kept for PyODPS' readers

    @property
    def finished_percentage(self) -> int:
        return finished_percentage(self.terminated_workers, self.total_workers)

    def formatted(self) -> str:
        """``NAME:RUNNING/TERMINATED/TOTAL[PCT%]``, as PyODPS writes a stage."""
        backups = f"(+{self.backup_workers} backups)" if self.backup_workers > 0 else ""
        workers = f"{self.running_workers}/{self.terminated_workers}/{self.total_workers}"
        return f"{self.name}:{workers}{backups}[{self.finished_percentage}%]"


class TaskProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One task seen as a PyODPS stage: ``name:running/terminated/total[pct%]``.

    ``terminated`` counts the task's instances that have ended (succeeded, failed or
    cancelled), as PyODPS counts terminated workers; ``running`` those started and not ended
    (staging, running or uploading)."""

    name: str
    running: int
    terminated: int
    total: int

    @classmethod
    def of(cls, name: str, task: TaskResult) -> TaskProgress:
        return cls(name=name, running=task.running, terminated=task.done, total=task.total)

    @property
    def percent(self) -> int:
        return finished_percentage(self.terminated, self.total)

    @property
    def stages(self) -> list[StageProgress]:
        """PyODPS' ``TaskProgress.stages``: an aiobatch task is one stage."""
        return [
            StageProgress(
                name=self.name,
                running_workers=self.running,
                terminated_workers=self.terminated,
                total_workers=self.total,
            )
        ]

    def stage_string(self) -> str:
        """``NAME:RUNNING/TERMINATED/TOTAL[PCT%]``: the stage alone, for CLI lines."""
        return self.stages[0].formatted()

    def get_stage_progress_formatted_string(self, now: datetime | None = None) -> str:
        """PyODPS' string: local time, a space, then each stage followed by a tab."""
        return stage_progress_formatted_string(self.stages, now)


def stage_progress_formatted_string(
    stages: Iterable[StageProgress], now: datetime | None = None
) -> str:
    """PyODPS' format, e.g. ``2016-05-19 18:14:03 M1_Stg1_job0:0/1/1[100%]`` and a tab, for
    any stages (the stages of one task, or every task of a job, each as its stage)."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d %H:%M:%S")
    return stamp + " " + "".join(f"{stage.formatted()}\t" for stage in stages)


class Backend(Protocol):
    """What a ``JobHandle`` needs from a runtime or a client."""

    def cached_status(self, job_id: str) -> JobState: ...
    async def job_snapshot(self, job_id: str, *, instances: bool = False) -> JobSnapshot: ...
    async def task_result(self, job_id: str, task: str) -> TaskResult: ...
    async def instance_result(self, job_id: str, task: str, index: int) -> InstanceDetail: ...
    async def wait_job(self, job_id: str) -> JobSnapshot: ...
    async def suspend_job(self, job_id: str) -> bool: ...
    async def resume_job(self, job_id: str) -> bool: ...
    async def stop_job(self, job_id: str) -> None: ...
    async def stop_instance(self, job_id: str, task: str, index: int) -> None: ...
    async def retry_job(self, job_id: str) -> bool: ...
    async def logview_address(self, job_id: str, *, hours: float = 24) -> str | None: ...
    def job_events(self, job_id: str) -> AsyncIterator[Event]: ...


LogStream = Literal["stdout", "stderr"]
SpecInput = str | Path | Mapping[str, Any]


class BatchAPI(Backend, Protocol):
    """The API that ``Runtime`` (in process) and ``Client`` (over the socket) both offer."""

    async def submit(self, spec: SpecInput) -> JobHandle: ...
    async def list_jobs(
        self,
        *,
        status: JobState | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> list[JobSummary]: ...
    async def job_definition(self, job_id: str) -> JobDef: ...
    async def job_history(
        self, job_id: str, *, after: int = 0, limit: int = 10_000
    ) -> list[HistoryEntry]: ...
    async def exist_job(self, job_id: str) -> bool: ...
    async def get_job(self, job_id: str) -> JobHandle: ...
    async def delete_job(self, job_id: str, *, stop: bool = False) -> None: ...
    async def list_envs(self) -> list[EnvInfo]: ...
    async def update_env(self, name: str, change: EnvChange) -> EnvInfo: ...
    async def read_log(
        self,
        job_id: str,
        task: str,
        index: int,
        *,
        stream: LogStream = "stdout",
        offset: int = 0,
        limit: int | None = None,
    ) -> bytes: ...
    def follow_log(
        self, job_id: str, task: str, index: int, *, stream: LogStream = "stdout", offset: int = 0
    ) -> AsyncIterator[bytes]: ...
    def events(self, job_id: str | None = None) -> AsyncIterator[Event]: ...
    def subscribe(
        self, job_id: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Events (of one job, if given); once entered, every later event is sure to come."""
        ...

    async def health(self) -> dict[str, Any]: ...


class JobHandle:
    """A submitted job. Cheap to create; holds only the id and the backend."""

    def __init__(
        self,
        backend: Backend,
        job_id: str,
        name: str,
        task_names: list[str],
        state: JobState = JobState.SUBMITTED,
    ) -> None:
        self._backend = backend
        self.id = job_id
        self.name = name
        self._task_names = task_names
        self._last_state = state  # for when the backend no longer holds the job

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.name!r} {self.state}>"

    @property
    def state(self) -> JobState:
        """Fine-grained state, as last known to the backend (live for a Runtime)."""
        try:
            self._last_state = self._backend.cached_status(self.id)
        except JobNotFound:
            pass
        return self._last_state

    @property
    def status(self) -> Status:
        """PyODPS' ``Instance.Status``: RUNNING, SUSPENDED or TERMINATED (any final state)."""
        return coarse_status(self.state)

    async def get_state(self) -> JobState:
        """The fine-grained state, asked of the backend now."""
        return JobState((await self.snapshot()).status)

    async def is_terminated(self) -> bool:
        return await self.get_state() in JOB_TERMINAL

    async def is_successful(self) -> bool:
        return await self.get_state() is JobState.SUCCEEDED

    async def wait_for_completion(self) -> JobSnapshot:
        snapshot = await self._backend.wait_job(self.id)
        self._last_state = JobState(snapshot.status)
        return snapshot

    async def wait_for_success(self) -> JobSnapshot:
        """Wait for the end; raise ``JobFailed`` naming the failed tasks unless it SUCCEEDED."""
        snapshot = await self.wait_for_completion()
        if snapshot.status != JobState.SUCCEEDED:
            failed = [name for name, task in snapshot.tasks.items() if task.status == "FAILED"]
            raise JobFailed(self.id, snapshot.status, failed)
        return snapshot

    def get_task_names(self) -> list[str]:
        return list(self._task_names)

    async def get_task_result(self, name: str) -> TaskResult:
        """Status, per-instance exit codes, attempts, durations, stderr tails of failures."""
        return await self._backend.task_result(self.id, name)

    async def get_task_results(self) -> dict[str, TaskResult]:
        return {name: await self.get_task_result(name) for name in self._task_names}

    async def get_task_progress(self, name: str) -> TaskProgress:
        """Raises ``TaskNotFound`` for a name the job has not, as ``get_task_result``."""
        task = (await self._backend.job_snapshot(self.id)).tasks.get(name)
        if task is None:
            raise TaskNotFound(self.id, name)
        return TaskProgress.of(name, task)

    async def snapshot(self, *, instances: bool = False) -> JobSnapshot:
        snapshot = await self._backend.job_snapshot(self.id, instances=instances)
        self._last_state = JobState(snapshot.status)
        return snapshot

    async def suspend(self) -> bool:
        return await self._backend.suspend_job(self.id)

    async def resume(self) -> bool:
        return await self._backend.resume_job(self.id)

    async def stop(self) -> None:
        await self._backend.stop_job(self.id)

    async def stop_instance(self, task: str, index: int) -> None:
        await self._backend.stop_instance(self.id, task, index)

    async def get_logview_address(self, hours: float = 24) -> str | None:
        """The address of this job's page in a browser: a link that shows this job only,
        read-only, for ``hours`` (0 < hours <= 8760); None when the runtime serves no log
        view (``Runtime(logview=...)``, ``[server] http``)."""
        return await self._backend.logview_address(self.id, hours=hours)

    async def retry(self) -> bool:
        """Re-run what did not succeed of a FAILED or CANCELLED job; its successes are kept."""
        retried = await self._backend.retry_job(self.id)
        if retried:
            self._last_state = JobState.RUNNING
        return retried

    def events(self) -> AsyncIterator[Event]:
        """Every state change of this job from now on, ending after its final state."""
        return self._backend.job_events(self.id)
