"""Instances waiting out a retry's backoff before their next attempt.

Such an instance is PENDING with ``not_before`` set (when its wait ends, on the wall clock)
and held by its task (``TaskRec.held``), so it is not dispatched. A heap orders the waits,
earliest end first; when one ends, the instance joins its task's retry queue. An entry whose
instance started or ended meanwhile (a stop, a retry of the job, a wind-down) is dropped
when it comes up.

Part of the pure core: no I/O, and nothing from the executors, hooks or the runtime.
"""

from __future__ import annotations

import heapq
import itertools

from aiobatch.model import InstanceRec, TaskRec


class Backoffs:
    def __init__(self) -> None:
        # (when, tie-break, instance), earliest first.
        self._heap: list[tuple[float, int, InstanceRec]] = []
        self._seq = itertools.count()

    def hold(self, inst: InstanceRec) -> None:
        """Hold a PENDING instance until its ``not_before``."""
        assert inst.not_before is not None
        inst.task.held.add(inst)
        self._watch(inst.not_before, inst)

    def watch_held(self, task: TaskRec) -> None:
        """After a reload: the task's held records that wait out a backoff are timed again."""
        for inst in task.held:
            if inst.not_before is not None:
                self._watch(inst.not_before, inst)

    def _watch(self, until: float, inst: InstanceRec) -> None:
        heapq.heappush(self._heap, (until, next(self._seq), inst))

    def next_release(self) -> float | None:
        """When the next backoff ends (the wall clock), or None if none is waited out."""
        while self._heap and not _backing_off(self._heap[0][2]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def release_due(self, now: float) -> list[InstanceRec]:
        """The instances whose backoff has ended by ``now``, each moved to its task's retry
        queue, in the order they were released."""
        released: list[InstanceRec] = []
        while self._heap and self._heap[0][0] <= now:
            inst = heapq.heappop(self._heap)[2]
            if not _backing_off(inst):
                continue
            task = inst.task
            task.held.remove(inst)
            inst.not_before = None
            task.retry_queue.append(inst)
            released.append(inst)
        return released


def _backing_off(inst: InstanceRec) -> bool:
    return inst.not_before is not None and inst in inst.task.held
