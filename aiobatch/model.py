"""In-memory records of jobs, tasks and instances, kept small for jobs of 100,000 instances.

An instance that never left PENDING has no record: its task counts it (``fresh``) and its
state is derived. Records appear at first dispatch, or when recovery or a stop needs one.
"""

from __future__ import annotations

from collections import deque

from aiobatch.attempt import Usage
from aiobatch.spec import JobDef, TaskDef
from aiobatch.spec_types import When
from aiobatch.states import (
    INSTANCE_ACTIVE,
    InstanceState,
    JobState,
    TaskState,
)


class InstanceRec:
    __slots__ = (
        "attempt",
        "duration_s",
        "ended_at",
        "exit_code",
        "index",
        "interrupted",
        "limit_waits",
        "lost",
        "not_before",
        "pid",
        "reason",
        "signal",
        "started_at",
        "state",
        "stop_reason",
        "task",
        "usage",
    )

    def __init__(self, task: TaskRec, index: int) -> None:
        self.task = task
        self.index = index
        self.state = InstanceState.PENDING
        self.reason: str | None = None
        self.attempt = 1
        # Attempts that ended with the runtime, re-run without being charged to retries:
        # lost in a crash (bounded by the engine's lost_limit), or interrupted by a shutdown.
        self.lost = 0
        self.interrupted = 0
        # Starts in a row that hit a system limit and waited, uncharged, while nothing else
        # of its compute env ran (bounded by the engine; kept in memory only).
        self.limit_waits = 0
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.duration_s: float | None = None
        self.stop_reason: str | None = None
        self.not_before: float | None = None  # waiting out a retry's backoff until then
        self.usage: Usage | None = None  # what its latest attempt that ended cost

    @property
    def active(self) -> bool:
        return self.state in INSTANCE_ACTIVE

    @property
    def charged_attempts(self) -> int:
        """Attempts the task's retry policy counts: those that did not end with the runtime."""
        return self.attempt - self.lost - self.interrupted

    def __repr__(self) -> str:
        return f"<Instance {self.task.job.id}/{self.task.name}[{self.index}] {self.state}>"


class TaskUsage:
    __slots__ = ("cpu_system_s", "cpu_user_s", "max_rss_bytes")

    def __init__(self) -> None:
        self.cpu_user_s = 0.0
        self.cpu_system_s = 0.0
        self.max_rss_bytes = 0  # the largest of the instances' peaks (not their sum)

    def add(self, usage: Usage) -> None:
        self.cpu_user_s += usage.cpu_user_s or 0.0
        self.cpu_system_s += usage.cpu_system_s or 0.0
        self.max_rss_bytes = max(self.max_rss_bytes, usage.max_rss_bytes or 0)

    def remove(self, usage: Usage) -> None:
        # A peak cannot be taken back: the task's stays the highest ever seen.
        self.cpu_user_s -= usage.cpu_user_s or 0.0
        self.cpu_system_s -= usage.cpu_system_s or 0.0


class TaskRec:
    __slots__ = (
        "active",
        "cancelled",
        "defn",
        "dependents",
        "failed",
        "fresh",
        "gates",
        "held",
        "index_dependents",
        "index_deps_left",
        "instances",
        "job",
        "name",
        "next_fresh",
        "open",
        "queued",
        "reason",
        "retry_queue",
        "seq",
        "state",
        "succeeded",
        "unmet",
        "usage",
    )

    def __init__(self, job: JobRec, defn: TaskDef, seq: int) -> None:
        self.job = job
        self.defn = defn
        self.name = defn.name
        self.seq = seq
        self.state = TaskState.PENDING
        self.reason: str | None = None
        # Whole-task dependencies not met yet; by-index ones gate each index instead.
        self.unmet = len(defn.depends_on) - len(defn.by_index)
        self.dependents: list[tuple[TaskRec, When]] = []  # waiting on this task as a whole
        self.index_dependents: list[TaskRec] = []  # joined to this task by index
        # Per index: by-index dependencies whose instance at that index has not SUCCEEDED
        # (None without any). Fresh indices whose gates are all open wait in ``open``.
        self.gates: list[int] | None = (
            [len(defn.by_index)] * defn.instances if defn.by_index else None
        )
        self.index_deps_left = len(defn.by_index)  # by-index dependencies not ended yet
        self.open: deque[int] = deque()
        # One slot per index; None until the instance first needs a record.
        self.instances: list[InstanceRec | None] = [None] * defn.instances
        self.fresh = defn.instances  # never dispatched, no record
        self.next_fresh = 0  # lowest index that may still be fresh
        self.retry_queue: deque[InstanceRec] = deque()
        # Waiting records that may not start yet: a retry's backoff, or a closed gate.
        self.held: set[InstanceRec] = set()
        self.active = 0
        self.succeeded = 0
        self.failed = 0
        self.cancelled = 0
        self.queued = False  # in the scheduler's heap
        # Summed over its instances' latest attempts that ended: CPU seconds (user,
        # system) and the highest peak memory.
        self.usage = TaskUsage()

    def set_usage(self, inst: InstanceRec, usage: Usage | None) -> None:
        """An attempt of ``inst`` ended costing ``usage``: it replaces its earlier one's."""
        if inst.usage is not None:
            self.usage.remove(inst.usage)
        inst.usage = usage
        if usage is not None:
            self.usage.add(usage)

    @property
    def pending(self) -> int:
        """Instances that have not ended and are not running."""
        return self.fresh + len(self.retry_queue) + len(self.held)

    @property
    def dispatchable(self) -> int:
        """Instances that may start as soon as a slot is free."""
        fresh = self.fresh if self.gates is None else len(self.open)
        return fresh + len(self.retry_queue)

    @property
    def total(self) -> int:
        return self.defn.instances

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    def take_fresh(self) -> InstanceRec:
        """Create the record of the lowest fresh index."""
        while self.instances[self.next_fresh] is not None:
            self.next_fresh += 1
        inst = InstanceRec(self, self.next_fresh)
        self.instances[self.next_fresh] = inst
        self.fresh -= 1
        return inst

    def record(self, index: int) -> InstanceRec:
        """The record of ``index``, created (and no longer fresh) if it had none."""
        inst = self.instances[index]
        if inst is None:
            inst = InstanceRec(self, index)
            self.instances[index] = inst
            self.fresh -= 1
        return inst

    def __repr__(self) -> str:
        return f"<Task {self.job.id}/{self.name} {self.state}>"


class JobRec:
    __slots__ = (
        "deadline_from",
        "defn",
        "ended_at",
        "id",
        "reason",
        "seq",
        "started_at",
        "state",
        "stopping",
        "submitted_at",
        "tasks",
        "unfinished_tasks",
    )

    def __init__(self, job_id: str, defn: JobDef, seq: int, submitted_at: float) -> None:
        self.id = job_id
        self.defn = defn
        self.seq = seq
        self.state = JobState.SUBMITTED
        self.reason: str | None = None
        self.submitted_at = submitted_at
        self.started_at: float | None = None
        self.ended_at: float | None = None
        # When the job's timeout began to count (the wall clock): its first start, or the
        # retry that took it back to RUNNING. A resume does not restart it.
        self.deadline_from: float | None = None
        # Set once the job must wind down: its final state and the reason.
        self.stopping: tuple[JobState, str] | None = None
        self.tasks: dict[str, TaskRec] = {}
        for seq_in_job, task_def in enumerate(defn.tasks):
            self.tasks[task_def.name] = TaskRec(self, task_def, seq_in_job)
        for task in self.tasks.values():
            task_def = task.defn
            for dep in task_def.depends_on:
                if dep in task_def.by_index:
                    self.tasks[dep].index_dependents.append(task)
                else:
                    when = task_def.conditions.get(dep, "succeeded")
                    self.tasks[dep].dependents.append((task, when))
        self.unfinished_tasks = len(self.tasks)

    @property
    def priority(self) -> int:
        return self.defn.priority

    @property
    def deadline(self) -> float | None:
        """When the job times out (the wall clock), or None: no timeout, or not started."""
        timeout, since = self.defn.timeout_s, self.deadline_from
        return None if timeout is None or since is None else since + timeout

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.defn.name} {self.state}>"
