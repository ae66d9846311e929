"""States of jobs, tasks and instances, and the one table of legal transitions for each."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from aiobatch.errors import InvalidTransition


class Status(enum.Enum):
    """PyODPS' ``Instance.Status``: the coarse view of a job, with PyODPS' members and values."""

    RUNNING = "Running"
    SUSPENDED = "Suspended"
    TERMINATED = "Terminated"


class JobState(enum.StrEnum):
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"


class InstanceState(enum.StrEnum):
    PENDING = "PENDING"
    STAGING = "STAGING"
    RUNNING = "RUNNING"
    UPLOADING = "UPLOADING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


J, T, I = JobState, TaskState, InstanceState  # noqa: E741 - short names keep the tables legible

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    J.SUBMITTED: frozenset({J.RUNNING, J.CANCELLED}),
    J.RUNNING: frozenset({J.SUSPENDED, J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    # A suspended job still lets running instances finish, so it can end from here.
    J.SUSPENDED: frozenset({J.RUNNING, J.SUCCEEDED, J.FAILED, J.CANCELLED}),
    J.SUCCEEDED: frozenset(),
    # Retry: back to RUNNING, re-running only what did not succeed.
    J.FAILED: frozenset({J.RUNNING}),
    J.CANCELLED: frozenset({J.RUNNING}),
}

TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    T.PENDING: frozenset({T.READY, T.SKIPPED, T.CANCELLED}),
    T.READY: frozenset({T.RUNNING, T.CANCELLED}),
    T.RUNNING: frozenset({T.SUCCEEDED, T.FAILED, T.CANCELLED}),
    T.SUCCEEDED: frozenset(),
    # A retried job takes every task that did not succeed back to PENDING.
    T.FAILED: frozenset({T.PENDING}),
    T.CANCELLED: frozenset({T.PENDING}),
    T.SKIPPED: frozenset({T.PENDING}),
}

INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    I.PENDING: frozenset({I.STAGING, I.CANCELLED}),
    # PENDING again is a retry: the failed attempt is over, attempt + 1 waits for a slot.
    I.STAGING: frozenset({I.RUNNING, I.PENDING, I.FAILED, I.CANCELLED}),
    # Straight from RUNNING only when nothing can be uploaded: crash recovery, hard shutdown.
    I.RUNNING: frozenset({I.UPLOADING, I.PENDING, I.FAILED, I.CANCELLED}),
    I.UPLOADING: frozenset({I.SUCCEEDED, I.PENDING, I.FAILED, I.CANCELLED}),
    I.SUCCEEDED: frozenset(),
    # A retried job gives each failed or cancelled instance one more attempt.
    I.FAILED: frozenset({I.PENDING}),
    I.CANCELLED: frozenset({I.PENDING}),
}

# Terminal: nothing changes them on its own; only a user's retry leaves FAILED or CANCELLED.
JOB_TERMINAL = frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED})
TASK_TERMINAL = frozenset({T.SUCCEEDED, T.FAILED, T.CANCELLED, T.SKIPPED})
INSTANCE_TERMINAL = frozenset({I.SUCCEEDED, I.FAILED, I.CANCELLED})
# An instance in one of these holds a compute slot.
INSTANCE_ACTIVE = frozenset({I.STAGING, I.RUNNING, I.UPLOADING})


def check_job(old: JobState, new: JobState) -> JobState:
    if new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition("job", old, new)
    return new


def check_task(old: TaskState, new: TaskState) -> TaskState:
    if new not in TASK_TRANSITIONS[old]:
        raise InvalidTransition("task", old, new)
    return new


def check_instance(old: InstanceState, new: InstanceState) -> InstanceState:
    if new not in INSTANCE_TRANSITIONS[old]:
        raise InvalidTransition("instance", old, new)
    return new


def coarse_status(state: JobState) -> Status:
    """PyODPS' three-valued view of a job: any final state is TERMINATED."""
    if state is J.SUSPENDED:
        return Status.SUSPENDED
    if state in JOB_TERMINAL:
        return Status.TERMINATED
    return Status.RUNNING
