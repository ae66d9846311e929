"""What an end sets off, and how a task or a job ends.

A task ends once none of its instances runs or waits: FAILED, CANCELLED or SUCCEEDED, with
a reason, from how its instances ended. Its end may start, skip or sweep (cancel the indices
that will never open of) the tasks that depend on it, and the job ends with its last task.
A wind-down (a stop, a timeout, a failure with ``on_failure = "fail_job"``) cancels what
waits and marks what runs to be stopped. ``Engine`` builds on ``Endings`` for all of this.

Part of the pure core: no I/O, and nothing from the executors, hooks or the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

from aiobatch import gates, resolver
from aiobatch.changes import StateChanges
from aiobatch.events import JobStopRequested
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.reasons import STOPPED_BY_USER
from aiobatch.scheduler import Scheduler
from aiobatch.states import JOB_TERMINAL, InstanceState, JobState, TaskState


class Endings(StateChanges):
    def __init__(self, clock: Callable[[], float], scheduler: Scheduler) -> None:
        super().__init__(clock)
        self.scheduler = scheduler

    def _wind_down(self, job: JobRec, final: JobState, reason: str) -> list[InstanceRec]:
        """The job is to end ``final``: what waits is cancelled; returns what runs, marked
        to be stopped. A job winding down already keeps its own end."""
        if job.stopping is not None or job.state not in (JobState.RUNNING, JobState.SUSPENDED):
            return []
        job.stopping = (final, reason)
        self.outbox.append(
            JobStopRequested(job_id=job.id, state=final, reason=reason, ts=self._clock())
        )
        to_stop: list[InstanceRec] = []
        for task in job.tasks.values():
            if task.state not in (TaskState.READY, TaskState.RUNNING):
                continue  # PENDING tasks are skipped when their upstream ends
            self._cancel_waiting(task, reason)
            for inst in task.instances:
                if inst is not None and inst.active:
                    inst.stop_reason = reason
                    to_stop.append(inst)
        for task in list(job.tasks.values()):
            self._maybe_finish_task(task)
        return to_stop

    def _cancel_waiting(self, task: TaskRec, reason: str) -> None:
        """Every instance of the task that waits to start ends CANCELLED."""
        for waiting in [*task.retry_queue, *sorted(task.held, key=lambda i: i.index)]:
            self._instance_to(waiting, InstanceState.CANCELLED, reason)
            task.cancelled += 1
        task.retry_queue.clear()
        task.held.clear()
        task.open.clear()
        task.cancelled += task.fresh  # never started: no record, no event
        task.fresh = 0

    def _maybe_finish_job(self, job: JobRec) -> None:
        if job.unfinished_tasks or job.state in JOB_TERMINAL:
            return
        final, reason = job_ending(job)
        job.stopping = None
        job.ended_at = self._clock()
        self._job_to(job, final, reason)

    def _maybe_finish_task(self, task: TaskRec) -> None:
        if task.state not in (TaskState.READY, TaskState.RUNNING):
            return
        if task.active or task.pending:
            return
        self._task_to(task, *task_ending(task))
        self._after_task_finished(task)

    def _after_task_finished(self, task: TaskRec) -> None:
        job = task.job
        job.unfinished_tasks -= 1
        settled = resolver.after_task_finished(task)
        if settled.skipped:
            reason = resolver.upstream_reason(task)
            for dependent in settled.skipped:
                self._task_to(dependent, TaskState.SKIPPED, reason)
                job.unfinished_tasks -= 1
        for dependent, dep in settled.swept:
            for inst, reason in gates.never_opening(dependent, dep):
                self._instance_to(inst, InstanceState.CANCELLED, reason)
                dependent.cancelled += 1
        for dependent in settled.ready:
            self._wake(dependent)
        for dependent, _ in settled.swept:
            self._maybe_finish_task(dependent)
        self._maybe_finish_job(job)

    def _wake(self, task: TaskRec) -> None:
        """A PENDING task whose whole-task dependencies are met starts (READY), unless it is
        joined by index and none of its indices is open while some still may open."""
        if task.state is not TaskState.PENDING or task.unmet or gates.all_closed(task):
            return
        job = task.job
        if job.stopping is not None:
            # Its upstream ended but the job is winding down: it never starts.
            self._task_to(task, TaskState.CANCELLED, job.stopping[1])
            self._cancel_waiting(task, job.stopping[1])  # waiting since a retry of the job
            self._after_task_finished(task)
        else:
            self._task_to(task, TaskState.READY)
            self.scheduler.offer(task)
            self._maybe_finish_task(task)  # all its instances may have been stopped


def task_ending(task: TaskRec) -> tuple[TaskState, str | None]:
    """FAILED if an instance failed (with the first one's reason), else CANCELLED if one was
    cancelled, else SUCCEEDED."""
    if task.failed:
        failed = (i for i in task.instances if i and i.state is InstanceState.FAILED)
        return TaskState.FAILED, next((i.reason for i in failed), None)
    if task.cancelled:
        stopping = task.job.stopping
        return TaskState.CANCELLED, stopping[1] if stopping else _cancelled_reason(task)
    return TaskState.SUCCEEDED, None


def job_ending(job: JobRec) -> tuple[JobState, str | None]:
    """The end a wind-down asked for; else FAILED naming the first failed task, else
    CANCELLED naming the first task cancelled or skipped, else SUCCEEDED."""
    if job.stopping is not None:
        return job.stopping
    final: JobState = JobState.SUCCEEDED
    reason: str | None = None
    for task in job.tasks.values():
        if task.state is TaskState.FAILED:
            return JobState.FAILED, f"task_failed: {task.name}"
        if task.state is not TaskState.SUCCEEDED and final is JobState.SUCCEEDED:
            final, reason = JobState.CANCELLED, f"task_{task.state.lower()}: {task.name}"
    return final, reason


def _cancelled_reason(task: TaskRec) -> str:
    """Why a task whose job goes on ended CANCELLED: what cancelled its first instance (a
    stop, or a by-index counterpart that did not succeed)."""
    for inst in task.instances:
        if inst is not None and inst.state is InstanceState.CANCELLED and inst.reason:
            return inst.reason
    return STOPPED_BY_USER
