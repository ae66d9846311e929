"""Read models: the snapshots and results the API returns, built from the live records."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from aiobatch.api import InstanceResult, JobSnapshot, TaskResult
from aiobatch.model import JobRec, TaskRec
from aiobatch.states import TASK_TERMINAL, InstanceState

WaitingReason = Callable[[TaskRec], "str | None"]
# Why a task's instances handed to their executor have not started: a queue of the
# executor's own (Slurm's pending reasons), by index; empty when none waits there.
QueuedOf = Callable[[TaskRec], "dict[int, str]"]
STDERR_TAIL_LINES = 10
LOG_CHUNK = 64 * 1024  # bytes of a log read (and sent) at a time


def job_snapshot(
    job: JobRec, waiting_reason: WaitingReason, instances: bool, queued_of: QueuedOf | None = None
) -> JobSnapshot:
    return JobSnapshot(
        id=job.id,
        name=job.defn.name,
        status=job.state.value,
        reason=job.reason,
        submitted_at=job.submitted_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        tasks={
            name: task_result(task, waiting_reason, instances, queued_of)
            for name, task in job.tasks.items()
        },
        labels=job.defn.labels,
    )


def task_result(
    task: TaskRec,
    waiting_reason: WaitingReason,
    instances: bool,
    queued_of: QueuedOf | None = None,
) -> TaskResult:
    queued = queued_of(task) if queued_of is not None else {}
    return TaskResult(
        status=task.state.value,
        reason=waiting_reason(task),
        total=task.total,
        done=task.done,
        running=task.active,
        succeeded=task.succeeded,
        failed=task.failed,
        cancelled=task.cancelled,
        cpu_user_s=round(task.usage.cpu_user_s, 6),
        cpu_system_s=round(task.usage.cpu_system_s, 6),
        max_rss_bytes=task.usage.max_rss_bytes,
        queued=queued or None,
        instances=[
            instance_result(task, i, waiting_reason, queued.get(i)) for i in range(task.total)
        ]
        if instances
        else None,
    )


def instance_result(
    task: TaskRec, index: int, waiting_reason: WaitingReason, queued: str | None = None
) -> InstanceResult:
    inst = task.instances[index]
    if inst is None:
        # Never started: pending while the task may still run it, else it never will.
        if task.state in TASK_TERMINAL:
            return InstanceResult(index=index, status="CANCELLED", reason=task.reason)
        if task.gates is not None and task.gates[index]:
            return InstanceResult(index=index, status="PENDING", reason=_closed(task, index))
        return InstanceResult(index=index, status="PENDING", reason=waiting_reason(task))
    usage = inst.usage
    reason = inst.reason
    if reason is None and inst.state is InstanceState.STAGING:
        reason = queued  # waiting in its executor's queue (Slurm's), if it says why
    return InstanceResult(
        index=index,
        status=inst.state.value,
        reason=reason,
        attempts=inst.attempt - (inst.state is InstanceState.PENDING),
        exit_code=inst.exit_code,
        duration_s=None if inst.duration_s is None else round(inst.duration_s, 6),
        not_before=inst.not_before,
        cpu_user_s=usage.cpu_user_s if usage is not None else None,
        cpu_system_s=usage.cpu_system_s if usage is not None else None,
        max_rss_bytes=usage.max_rss_bytes if usage is not None else None,
    )


def _closed(task: TaskRec, index: int) -> str:
    """Why an index of a by-index dependent waits: the counterparts that have not succeeded."""
    tasks = task.job.tasks
    waiting = [
        f"{name}[{index}]"
        for name in task.defn.by_index
        if (upstream := tasks[name].instances[index]) is None
        or upstream.state is not InstanceState.SUCCEEDED
    ]
    return f"waiting_for: {', '.join(waiting)}"


def tail(path: Path, lines: int = STDERR_TAIL_LINES) -> list[str]:
    """The last lines of a log file (reading at most its last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    return [line.decode(errors="replace") for line in deque(data.splitlines(), lines)]


def size(path: Path) -> int:
    """The size of a file; 0 if it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def fstat_size(file: IO[bytes]) -> int:
    return os.fstat(file.fileno()).st_size


def read_bytes(path: Path, offset: int, limit: int | None) -> bytes:
    """Up to ``limit`` bytes of a file from ``offset``; nothing if the file does not exist,
    or ends before ``offset`` (which may be beyond what a seek takes)."""
    try:
        with path.open("rb") as f:
            if offset >= fstat_size(f):
                return b""
            f.seek(offset)
            return f.read(-1 if limit is None else limit)
    except FileNotFoundError:
        return b""
