"""The pure core: applies state transitions to jobs, tasks and instances, and says what to do.

The engine does no I/O and never awaits. Each method changes records through the transition
tables, appends the resulting events to ``outbox`` and returns the instances the caller must
start or stop. The runtime publishes the outbox on the bus and performs the effects; tests
drive the engine directly. The engine coordinates; the parts live in their own modules:
recording a change as its event in ``changes.py``; what an end sets off (a task's or a job's
end, its dependents started, skipped or swept, a wind-down) in ``endings.py``, which the
engine builds on; the reasons, the retry decision and why a task waits in ``reasons.py``;
instances waiting out a retry's backoff in ``backoff.py``; the per-index dependency gates in
``gates.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence

from aiobatch import gates, resolver
from aiobatch.attempt import RUNTIME_LOST, SYSTEM_LIMIT, Outcome
from aiobatch.backoff import Backoffs
from aiobatch.endings import Endings
from aiobatch.events import InstanceStopRequested
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.reasons import (
    BACKOFF,
    INTERRUPTED,
    JOB_TIMEOUT,
    RETRIED,
    RUNTIME_LOST_LIMIT,
    STOPPED_BY_USER,
    not_started_for_room,
    should_retry,
    waiting_reason,
)
from aiobatch.scheduler import Scheduler, can_dispatch
from aiobatch.states import TASK_TERMINAL, InstanceState, JobState, TaskState

# The reasons live in reasons.py; they are still imported from here too.
__all__ = [
    "BACKOFF",
    "DEFAULT_LOST_LIMIT",
    "INTERRUPTED",
    "JOB_TIMEOUT",
    "RETRIED",
    "RUNTIME_LOST_LIMIT",
    "STOPPED_BY_USER",
    "Engine",
    "should_retry",
]

DEFAULT_LOST_LIMIT = 3  # crashes one instance may live through before it fails
# Starts of one instance in a row that may hit a system limit and wait, uncharged, while no
# other instance of its compute env runs (nothing of ours holds what it lacks), before one
# counts as the failure it then is: a limit nothing frees must not loop for ever.
SYSTEM_LIMIT_WAITS = 10


class Engine(Endings):
    def __init__(
        self,
        slots: dict[str, int],
        clock: Callable[[], float] = time.time,
        *,
        lost_limit: int = DEFAULT_LOST_LIMIT,
        self_throttled: frozenset[str] = frozenset(),
    ) -> None:
        # self_throttled: envs that apply a task's max_parallel themselves (Slurm's %M).
        super().__init__(clock, Scheduler(slots, self_throttled))
        self.jobs: dict[str, JobRec] = {}
        # How many attempts of one instance may be lost with the runtime (re-run uncharged)
        # before it fails: an instance that brings its runtime down must not loop forever.
        self.lost_limit = lost_limit
        self._backoffs = Backoffs()  # instances waiting out a retry's backoff

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, job: JobRec) -> None:
        """Take a stored job in (new or recovered) and start it if it has not started."""
        self.jobs[job.id] = job
        if job.state is JobState.SUBMITTED:
            self._job_to(job, JobState.RUNNING, None)
            for task in job.tasks.values():
                # A task joined by index waits for its first counterpart to succeed.
                if task.unmet == 0 and task.gates is None:
                    self._task_to(task, TaskState.READY)
        for task in job.tasks.values():
            self.scheduler.offer(task)

    def forget(self, job_id: str) -> JobRec | None:
        """Drop an ended job: the engine holds only jobs that can still change."""
        return self.jobs.pop(job_id, None)

    def suspend_job(self, job: JobRec) -> bool:
        if job.state is not JobState.RUNNING or job.stopping is not None:
            return False
        self._job_to(job, JobState.SUSPENDED, "suspended_by_user")
        return True

    def resume_job(self, job: JobRec) -> bool:
        if job.state is not JobState.SUSPENDED:
            return False
        self._job_to(job, JobState.RUNNING, None)
        for task in job.tasks.values():
            self.scheduler.offer(task)
        return True

    def retry_job(self, job: JobRec) -> None:
        """Take a FAILED or CANCELLED job back to RUNNING, re-running what did not succeed.

        Succeeded instances (and so their outputs) are kept; each failed or cancelled one
        gets one more attempt, and the task's retry policy applies to it as before.
        """
        self.jobs[job.id] = job
        job.ended_at = None
        job.stopping = None
        self._job_to(job, JobState.RUNNING, None)
        retried = [t for t in job.tasks.values() if t.state is not TaskState.SUCCEEDED]
        job.unfinished_tasks = len(retried)
        for task in retried:
            self._task_to(task, TaskState.PENDING, RETRIED)
            task.failed = task.cancelled = 0
            task.retry_queue.clear()
            task.held.clear()
            for inst in task.instances:
                if inst is None or inst.state is InstanceState.SUCCEEDED:
                    continue
                if inst.state is not InstanceState.PENDING:  # still waiting from a retry before
                    inst.attempt += 1
                    self._instance_to(inst, InstanceState.PENDING, RETRIED)
                inst.not_before = None
                inst.limit_waits = 0  # a new try of the user's: a new bound
                task.retry_queue.append(inst)
            task.fresh = task.instances.count(None)
            task.next_fresh = 0
        for task in retried:
            task.unmet = resolver.count_unmet(task)
            resolver.regate(task)
        for task in retried:
            self._wake(task)

    def stop_job(self, job: JobRec, reason: str = STOPPED_BY_USER) -> list[InstanceRec]:
        """Wind a job down to CANCELLED; returns the active instances to stop."""
        return self._wind_down(job, JobState.CANCELLED, reason)

    def time_out_job(self, job: JobRec) -> list[InstanceRec]:
        """The job's deadline passed: wind it down as a stop does, but to FAILED with
        ``job_timeout`` (as AWS Batch and Argo mark a job past its deadline). A job winding
        down already keeps its own end. Returns the active instances to stop."""
        return self._wind_down(job, JobState.FAILED, JOB_TIMEOUT)

    # -- instances --------------------------------------------------------------------------

    def dispatch(self, paused: Collection[str] = ()) -> list[InstanceRec]:
        """Start as many instances as free slots allow, but none in the ``paused`` compute
        envs: each goes PENDING -> STAGING."""
        started: list[InstanceRec] = []
        for env in self.scheduler.slots:
            if env in paused:
                continue
            while (task := self.scheduler.pick(env)) is not None:
                if task.retry_queue:
                    inst = task.retry_queue.popleft()
                elif task.gates is not None:
                    inst = task.record(task.open.popleft())
                else:
                    inst = task.take_fresh()
                inst.stop_reason = inst.not_before = None
                inst.exit_code = inst.signal = inst.pid = inst.duration_s = inst.started_at = None
                task.set_usage(inst, None)  # what it costs is the new attempt's
                task.active += 1
                if task.state is TaskState.READY:
                    self._task_to(task, TaskState.RUNNING)
                self._instance_to(inst, InstanceState.STAGING)
                started.append(inst)
        return started

    def instance_running(self, inst: InstanceRec, pid: int | None) -> None:
        inst.pid = pid
        inst.started_at = self._clock()
        self._instance_to(inst, InstanceState.RUNNING)

    def instance_exited(self, inst: InstanceRec, outcome: Outcome) -> None:
        """The program ended; the after-exit hooks (uploads) run next. The event carries the
        whole outcome (a timeout, an OOM as its reason): once stored, a crash during the
        uploads re-runs them, never the program."""
        inst.exit_code, inst.signal = outcome.exit_code, outcome.signal
        inst.duration_s = outcome.duration_s
        if outcome.usage is not None:
            inst.task.set_usage(inst, outcome.usage)
        self._instance_to(inst, InstanceState.UPLOADING, outcome.reason)

    def instance_finished(self, inst: InstanceRec, outcome: Outcome) -> list[InstanceRec]:
        """Settle an attempt: success, retry, failure or cancellation; returns instances to stop."""
        task, job = inst.task, inst.task.job
        inst.exit_code, inst.signal = outcome.exit_code, outcome.signal
        if outcome.duration_s is not None:
            inst.duration_s = outcome.duration_s
        if outcome.usage is not None:
            task.set_usage(inst, outcome.usage)
        inst.ended_at = self._clock()
        task.active -= 1
        self.scheduler.release(task.defn.compute_env)
        to_stop: list[InstanceRec] = []
        if inst.stop_reason is not None:
            self._instance_to(inst, InstanceState.CANCELLED, inst.stop_reason)
            task.cancelled += 1
        elif outcome.succeeded:
            self._instance_to(inst, InstanceState.SUCCEEDED)
            task.succeeded += 1
            for dependent in task.index_dependents:
                if gates.open_gate(dependent, inst.index):
                    self._wake(dependent)
                    self.scheduler.offer(dependent)
        elif (waits_for := not_started_for_room(inst, outcome)) and self._may_wait(inst, waits_for):
            if waits_for == SYSTEM_LIMIT:
                inst.limit_waits += 1
            self._instance_to(inst, InstanceState.PENDING, waits_for)
            task.retry_queue.appendleft(inst)
        elif outcome.disrupted and job.stopping is None:
            if inst.lost < self.lost_limit:
                # Not the program's failure: a new attempt, not charged to its retries.
                inst.lost += 1
                inst.attempt += 1
                self._instance_to(inst, InstanceState.PENDING, outcome.reason)
                task.retry_queue.append(inst)
            else:
                to_stop = self._fail(inst, f"{RUNTIME_LOST_LIMIT}: {self.lost_limit}")
        elif job.stopping is None and should_retry(task, inst, outcome):
            inst.attempt += 1  # the row of a waiting instance names the attempt it waits to make
            backoff = task.defn.retry_backoff
            if backoff is None:
                self._instance_to(inst, InstanceState.PENDING, outcome.failure_reason())
                task.retry_queue.append(inst)
            else:
                inst.not_before = self._clock() + backoff.wait_s(inst.charged_attempts - 1)
                self._instance_to(inst, InstanceState.PENDING, BACKOFF)
                self._backoffs.hold(inst)
        else:
            to_stop = self._fail(inst, outcome.failure_reason())
        self._maybe_finish_task(task)
        if can_dispatch(task, self.scheduler.self_throttled):
            self.scheduler.offer(task)
        return to_stop

    def _may_wait(self, inst: InstanceRec, waits_for: str) -> bool:
        """Whether a start that found no room waits for some (else it is a failure)."""
        if inst.task.job.stopping is not None:
            return False
        return waits_for != SYSTEM_LIMIT or inst.limit_waits < SYSTEM_LIMIT_WAITS

    def _fail(self, inst: InstanceRec, reason: str) -> list[InstanceRec]:
        task = inst.task
        self._instance_to(inst, InstanceState.FAILED, reason)
        task.failed += 1
        if task.defn.on_failure == "fail_job":
            return self._wind_down(task.job, JobState.FAILED, f"task_failed: {task.name}")
        return []

    def instance_interrupted(self, inst: InstanceRec) -> None:
        """The runtime is shutting down mid-attempt: back to PENDING; the next attempt is not
        charged to the task's retries (a new number all the same: each run has its own)."""
        if not inst.active:
            return
        task = inst.task
        task.active -= 1
        self.scheduler.release(task.defn.compute_env)
        inst.interrupted += 1
        inst.attempt += 1
        self._instance_to(inst, InstanceState.PENDING, INTERRUPTED)
        task.retry_queue.appendleft(inst)

    def stop_instance(self, task: TaskRec, index: int) -> InstanceRec | None:
        """Stop one instance. Returns it if it is active (the caller stops it), else None."""
        if task.state in TASK_TERMINAL or task.job.stopping is not None:
            return None  # every instance has ended or is being stopped already
        inst = task.instances[index]
        if inst is None:
            if task.fresh == 0:
                return None  # counted cancelled, without a record, when the job wound down
            inst = task.record(index)
        if inst.active:
            inst.stop_reason = STOPPED_BY_USER
            self.outbox.append(
                InstanceStopRequested(
                    job_id=task.job.id,
                    task=task.name,
                    index=index,
                    attempt=inst.attempt,
                    reason=STOPPED_BY_USER,
                    ts=self._clock(),
                )
            )
            return inst
        if inst.state is InstanceState.PENDING:
            if inst in task.retry_queue:
                task.retry_queue.remove(inst)
            task.held.discard(inst)
            if index in task.open:
                task.open.remove(index)
            self._instance_to(inst, InstanceState.CANCELLED, STOPPED_BY_USER)
            task.cancelled += 1
            self._maybe_finish_task(task)
        return None

    def recover_job(
        self, job: JobRec, lost: list[InstanceRec], adopted: Sequence[InstanceRec] = ()
    ) -> list[InstanceRec]:
        """Take in a job loaded after a crash; ``lost`` were active when the runtime died.

        Each lost instance gets a new attempt that its retry budget is not charged for
        (reason ``runtime_lost``), up to ``lost_limit`` times, then it fails.
        ``adopted`` ones were started and are taken over (a container, a local process still
        running or ended while no runtime watched): they are active, now RUNNING; a waiting
        one among them was started in the crash's commit window and is dispatched first.
        Then any step the crash interrupted is completed: ready, skipped and finished tasks.
        """
        if job.state is JobState.SUBMITTED:  # accepted; the crash came before it started
            self.add_job(job)
        self.jobs[job.id] = job
        stopping, job.stopping = job.stopping, None
        to_stop: list[InstanceRec] = []
        for inst in adopted:
            task = inst.task
            if inst.state is InstanceState.PENDING:  # started; the crash lost its dispatch
                if inst in task.retry_queue:
                    task.retry_queue.remove(inst)
                task.held.discard(inst)
                inst.not_before = None
                if task.state is TaskState.PENDING:
                    self._task_to(task, TaskState.READY)
                if task.state is TaskState.READY:
                    self._task_to(task, TaskState.RUNNING)
                self._instance_to(inst, InstanceState.STAGING)
            task.active += 1
            self.scheduler.used[task.defn.compute_env] += 1
            if inst.state is InstanceState.STAGING:  # it started; the crash lost the event
                self.instance_running(inst, None)
            if inst.stop_reason is not None:  # stopped before the crash: stop it again
                to_stop.append(inst)
        for inst in lost:
            inst.task.active += 1
            self.scheduler.used[inst.task.defn.compute_env] += 1
            to_stop += self.instance_finished(inst, Outcome(reason=RUNTIME_LOST))
        if stopping is not None:
            to_stop += self._wind_down(job, *stopping)
        for task in list(job.tasks.values()):
            self._backoffs.watch_held(task)
            if job.stopping is None:
                self._wake(task)
            self._maybe_finish_task(task)
            self.scheduler.offer(task)
        self._maybe_finish_job(job)
        return to_stop

    # -- retry backoff (backoff.py) --------------------------------------------------------

    def next_release(self) -> float | None:
        """When the next backoff ends (the wall clock), or None if none is waited out."""
        return self._backoffs.next_release()

    def release_due(self) -> None:
        """Instances whose backoff has ended may start (the caller dispatches next)."""
        for inst in self._backoffs.release_due(self._clock()):
            self.scheduler.offer(inst.task)

    # -- reasons (reasons.py) --------------------------------------------------------------

    def waiting_reason(self, task: TaskRec) -> str | None:
        """Why a task is not done yet, or why it ended; derived, so always current."""
        return waiting_reason(task, self.scheduler)
