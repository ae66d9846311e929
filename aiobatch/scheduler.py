"""Which instance runs next: compute env slots, job priority, per-task ``max_parallel``.

Each compute env keeps a heap of tasks that have instances to dispatch, ordered by job
priority (higher first), then submission order, then task order. A dispatch is O(log n):
tasks that stop being eligible (suspended job, ``max_parallel`` reached, nothing pending)
are dropped lazily when they reach the top, and offered again when that changes.
"""

from __future__ import annotations

import heapq
import itertools

from aiobatch.model import TaskRec
from aiobatch.states import JobState, TaskState

_DISPATCHABLE_TASK = frozenset({TaskState.READY, TaskState.RUNNING})


def parallel_limit(task: TaskRec, self_throttled: frozenset[str]) -> int | None:
    """How many of the task's instances aiobatch lets run at once (None: no bound). In an
    env that throttles a task itself (``self_throttled``: Slurm's array ``%M``),
    ``max_parallel`` is left to the env: every instance is handed over at once."""
    return None if task.defn.compute_env in self_throttled else task.defn.max_parallel


def can_dispatch(task: TaskRec, self_throttled: frozenset[str] = frozenset()) -> bool:
    """True when the task has an instance that could start if a slot were free."""
    limit = parallel_limit(task, self_throttled)
    return (
        task.dispatchable > 0
        and task.state in _DISPATCHABLE_TASK
        and task.job.state is JobState.RUNNING
        and task.job.stopping is None
        and (limit is None or task.active < limit)
    )


class Scheduler:
    def __init__(self, slots: dict[str, int], self_throttled: frozenset[str] = frozenset()) -> None:
        self.slots = dict(slots)
        self.self_throttled = self_throttled  # envs that apply max_parallel themselves
        self.used = dict.fromkeys(slots, 0)
        self._heaps: dict[str, list[tuple[int, int, int, int, TaskRec]]] = {e: [] for e in slots}
        self._tiebreak = itertools.count()

    def offer(self, task: TaskRec) -> None:
        """Make a task a candidate again (idempotent)."""
        if not task.queued and can_dispatch(task, self.self_throttled):
            task.queued = True
            job = task.job
            key = (-job.priority, job.seq, task.seq, next(self._tiebreak), task)
            heapq.heappush(self._heaps[task.defn.compute_env], key)

    def pick(self, env: str) -> TaskRec | None:
        """The task to start one instance of in ``env`` now, its slot taken; None if none."""
        if self.used[env] >= self.slots[env]:
            return None
        heap = self._heaps[env]
        while heap:
            task = heap[0][-1]
            if can_dispatch(task, self.self_throttled):
                self.used[env] += 1
                return task
            heapq.heappop(heap)
            task.queued = False
        return None

    def release(self, env: str) -> None:
        self.used[env] -= 1

    def has_free_slot(self, env: str) -> bool:
        return self.used[env] < self.slots[env]

    def statistics(self) -> dict[str, dict[str, int]]:
        return {env: {"slots": self.slots[env], "used": self.used[env]} for env in self.slots}
