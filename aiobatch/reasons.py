"""Why an instance or a task is where it is: the reasons the core records, the decision
between a retry and a failure, and the reason a task waits (derived, so always current).

Part of the pure core: no I/O, and nothing from the executors, hooks or the runtime.
"""

from __future__ import annotations

from aiobatch import resolver
from aiobatch.attempt import NOT_STARTED_FOR_ROOM, Outcome
from aiobatch.model import InstanceRec, TaskRec
from aiobatch.scheduler import Scheduler, parallel_limit
from aiobatch.states import InstanceState, JobState, TaskState

STOPPED_BY_USER = "stopped_by_user"
RUNTIME_LOST_LIMIT = "runtime_lost_limit"
INTERRUPTED = "interrupted"
RETRIED = "retried"
# The job's own ``timeout`` passed: the job ends FAILED, what ran or waited is stopped.
JOB_TIMEOUT = "job_timeout"
# A PENDING instance waiting out its retry's backoff (its row says until when).
BACKOFF = "backoff"


def should_retry(task: TaskRec, inst: InstanceRec, outcome: Outcome) -> bool:
    """Whether a failed attempt gets another under the task's policy. Attempts lost with
    the runtime are not charged: only the attempts the program itself failed count."""
    defn = task.defn
    if inst.charged_attempts > defn.retry_limit:
        return False
    codes, reasons = defn.retry_exit_codes, defn.retry_reasons
    if codes is None and reasons is None:
        return True
    if codes is not None and outcome.code is not None and outcome.code in codes:
        return True
    return reasons is not None and reason_kind(outcome.failure_reason()) in reasons


def reason_kind(reason: str) -> str:
    """A failure reason's kind, as a retry policy names it: ``timeout``, ``exit_code``,
    ``engine_error`` (from ``engine_error: host: ...``)."""
    return reason.split(":", 1)[0]


def not_started_for_room(inst: InstanceRec, outcome: Outcome) -> str | None:
    """What the attempt waits for (``state_dir_full``, ``system_limit``) if it ended before
    its program started for want of room in the state dir or the system: not a failure."""
    reason = outcome.reason
    if inst.state is not InstanceState.STAGING or reason is None:
        return None
    kind = reason.split(":", 1)[0]
    return kind if kind in NOT_STARTED_FOR_ROOM else None


def waiting_reason(task: TaskRec, scheduler: Scheduler) -> str | None:
    """Why a task is not done yet, or why it ended."""
    state = task.state
    if state is TaskState.PENDING:
        waiting = resolver.waiting_for(task)
        return f"waiting_for: {', '.join(waiting)}" if waiting else None
    if state in (TaskState.READY, TaskState.RUNNING) and task.pending:
        if not task.dispatchable:  # what waits is held: a backoff, or a closed index
            if any(i.not_before is not None for i in task.held):
                return BACKOFF
            return f"waiting_for: {', '.join(task.defn.by_index)}"
        limit = parallel_limit(task, scheduler.self_throttled)
        if task.job.state is JobState.SUSPENDED:
            return "job_suspended"
        if limit is not None and task.active >= limit:
            return "max_parallel"
        if not scheduler.has_free_slot(task.defn.compute_env):
            return f"no_free_slot: {task.defn.compute_env}"
    return task.reason
