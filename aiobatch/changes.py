"""Each state change of a job, task or instance: checked against the transition tables
(``states.py``), applied to its record, and appended as its event to the outbox.

``Engine`` builds on this and decides which changes to make; part of the pure core: no
I/O, and nothing from the executors, hooks or the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

from aiobatch.events import Event, InstanceStateChanged, JobStateChanged, TaskStateChanged
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.states import (
    InstanceState,
    JobState,
    TaskState,
    check_instance,
    check_job,
    check_task,
)


class StateChanges:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.outbox: list[Event] = []
        self._clock = clock

    def drain(self) -> list[Event]:
        """The events of the changes made since the last drain, oldest first."""
        events, self.outbox = self.outbox, []
        return events

    def _job_to(self, job: JobRec, state: JobState, reason: str | None) -> None:
        before = job.state
        job.state = check_job(before, state)
        job.reason = reason
        now = self._clock()
        if state is JobState.RUNNING and job.started_at is None:
            job.started_at = now
        if state is JobState.RUNNING and before is not JobState.SUSPENDED:
            job.deadline_from = now  # a start or a retry: the job's timeout counts from here
        self.outbox.append(JobStateChanged(job_id=job.id, state=state, reason=reason, ts=now))

    def _task_to(self, task: TaskRec, state: TaskState, reason: str | None = None) -> None:
        task.state = check_task(task.state, state)
        task.reason = reason
        self.outbox.append(
            TaskStateChanged(
                job_id=task.job.id, task=task.name, state=state, reason=reason, ts=self._clock()
            )
        )

    def _instance_to(
        self, inst: InstanceRec, state: InstanceState, reason: str | None = None
    ) -> None:
        inst.state = check_instance(inst.state, state)
        inst.reason = reason
        if state is not InstanceState.PENDING:
            inst.not_before = None  # a backoff's end means something only while it waits
        usage = inst.usage
        self.outbox.append(
            InstanceStateChanged(
                job_id=inst.task.job.id,
                task=inst.task.name,
                index=inst.index,
                attempt=inst.attempt,
                state=state,
                reason=reason,
                ts=self._clock(),
                exit_code=inst.exit_code,
                signal=inst.signal,
                pid=inst.pid,
                started_at=inst.started_at,
                duration_s=inst.duration_s,
                lost=inst.lost,
                interrupted=inst.interrupted,
                not_before=inst.not_before,
                cpu_user_s=usage.cpu_user_s if usage is not None else None,
                cpu_system_s=usage.cpu_system_s if usage is not None else None,
                max_rss_bytes=usage.max_rss_bytes if usage is not None else None,
            )
        )
