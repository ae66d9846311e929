"""Work dirs made ahead: once a job is accepted, its first work dirs are made in a worker
thread, so that a start does not wait for its dir to be made.

Making a dir costs a start ~70 µs per level on an ext4 that has freed many inodes (this
is what a state dir that deletes old jobs becomes), more on a network file system; an
instance's first start makes two levels (its task's dir and its own). In a chain, every
hop waited for both. Made ahead, in dependency order, they are there by the time each task
is ready.

Bounded: the first ``AHEAD_PER_TASK`` instances of each task, ``AHEAD_PER_JOB`` dirs in
all; whatever is past that is made at its start, as every dir still is (``mkdir`` of one
that exists is cheap, and a program may have removed it). One job at a time, in the order
they were accepted. A job's making stops at its end, and a deletion waits for it to stop
before removing the job's files, so nothing is made again under a job being removed. A dir
that cannot be made (a full disk) ends its job's making: the start makes it, or fails as
it always would.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Collection
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from aiobatch.dag import dependency_order
from aiobatch.layout import StateLayout
from aiobatch.spec import JobDef

AHEAD_PER_TASK = 8
AHEAD_PER_JOB = 1024


class _Making:
    __slots__ = ("defn", "done", "stopped")

    def __init__(self, defn: JobDef) -> None:
        self.defn = defn
        self.stopped = False  # read by the worker thread between two dirs
        self.done = anyio.Event()


class DirsAhead:
    def __init__(self, layout: StateLayout) -> None:
        self._layout = layout
        self._group: TaskGroup | None = None
        self._making: dict[str, _Making] = {}  # by job id, until its making ends
        self._queue: deque[str] = deque()  # job ids, in the order they were accepted
        self._working = False

    def open(self, group: TaskGroup) -> None:
        self._group = group

    def make(self, job_id: str, defn: JobDef) -> None:
        """Make the job's first work dirs, in the background."""
        if self._group is None or job_id in self._making:
            return
        self._making[job_id] = _Making(defn)
        self._queue.append(job_id)
        if not self._working:
            self._working = True
            self._group.start_soon(self._work)

    def stop(self, job_id: str) -> None:
        """The job has ended: what is not made yet will not be needed."""
        making = self._making.get(job_id)
        if making is not None:
            making.stopped = True

    async def stopped(self, job_ids: Collection[str]) -> None:
        """Stop making these jobs' dirs; return once nothing more is made for them."""
        for job_id in job_ids:
            self.stop(job_id)
        await self.made(job_ids)

    async def made(self, job_ids: Collection[str]) -> None:
        """Return once these jobs' dirs are made, or their making stopped."""
        for job_id in job_ids:
            making = self._making.get(job_id)
            if making is not None:
                await making.done.wait()

    async def _work(self) -> None:
        try:
            while self._queue:
                job_id = self._queue[0]
                making = self._making[job_id]
                try:
                    if not making.stopped:
                        # Not waited for when cancelled (a shutdown): it stops at its next dir.
                        await anyio.to_thread.run_sync(
                            _make_ahead, self._layout, job_id, making, abandon_on_cancel=True
                        )
                finally:
                    self._settle(self._queue.popleft())
        finally:
            self._working = False
            while self._queue:  # cancelled: what was waiting will not be made
                self._settle(self._queue.popleft())

    def _settle(self, job_id: str) -> None:
        making = self._making.pop(job_id)
        making.stopped = True
        making.done.set()


def planned(layout: StateLayout, job_id: str, defn: JobDef) -> list[Path]:
    """The dirs to make ahead, each after its parent: the job's, then each task's and its
    first instances', tasks in dependency order."""
    tasks = {task.name: task for task in defn.tasks}
    dirs = [layout.job_work_dir(job_id)]
    for name in dependency_order({name: task.depends_on for name, task in tasks.items()}):
        task_dir = layout.task_work_dir(job_id, name)
        dirs.append(task_dir)
        dirs += (task_dir / str(i) for i in range(min(tasks[name].instances, AHEAD_PER_TASK)))
        if len(dirs) >= AHEAD_PER_JOB:
            return dirs[:AHEAD_PER_JOB]
    return dirs


def _make_ahead(layout: StateLayout, job_id: str, making: _Making) -> None:
    for path in planned(layout, job_id, making.defn):
        if making.stopped:
            return
        try:
            os.mkdir(path)  # never its parents: a job removed meanwhile is not made again
        except FileExistsError:
            pass
        except OSError:
            return
