"""Work dirs made ahead: once a job is accepted, its first work dirs are made in a worker
thread, so that a start does not wait for its dir to be made.

Making a dir cost a start 70-800 µs per level, measured on an ext4 without a journal that
had freed many inodes in the minutes before (as a state dir that deletes old jobs does),
and a round trip on a network file system; an instance's first start makes two levels
(its task's dir and its own). In a chain, every hop waited for both. Made ahead, in
dependency order, they are there by the time each task is ready.

Bounded: the first ``AHEAD_PER_TASK`` instances of each task, ``AHEAD_PER_JOB`` dirs in
all, for ``AHEAD_JOBS`` jobs at most (a backlog of accepted jobs must not become millions of
empty dirs before any of them runs); whatever is past that is made at its start, as every
dir still is (``mkdir`` of one that exists is cheap, and a program may have removed it). One
job at a time, in the order they were accepted. A job that ends stops its making: one not
begun yet is dropped at once, the one under way stops at its next dir, and a deletion waits
for that before it removes the job's files, so nothing is made again under a job being
removed (at a shutdown too: the thread is waited for, up to ``STOP_WAIT_S``). A dir that
cannot be made (a full disk) ends its job's making: the start makes it, or fails as it always
would. Anything else that goes wrong is logged: this is a head start, never a reason for a
start, or the runtime, to fail.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from aiobatch.dag import dependency_order
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger
from aiobatch.spec import JobDef

log = get_logger("aiobatch.dirs_ahead")

AHEAD_PER_TASK = 8
AHEAD_PER_JOB = 1024
AHEAD_JOBS = 16
STOP_WAIT_S = 5.0  # a mkdir that takes longer (a hung file system) is not waited for


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
        # By job id, in the order accepted: those waiting, and the one under way.
        self._making: dict[str, _Making] = {}
        self._current: str | None = None  # the job whose dirs the thread makes now
        self._working = False

    def open(self, group: TaskGroup) -> None:
        self._group = group

    def make(self, job_id: str, defn: JobDef) -> None:
        """Make the job's first work dirs, in the background."""
        if self._group is None or job_id in self._making or len(self._making) >= AHEAD_JOBS:
            return
        self._making[job_id] = _Making(defn)
        if not self._working:
            try:
                self._group.start_soon(self._work)
            except RuntimeError:  # the runtime has closed: its starts make the dirs
                self._settle(job_id)
                return
            self._working = True

    def stop(self, job_id: str) -> None:
        """The job has ended: what is not made yet will not be needed."""
        making = self._making.get(job_id)
        if making is not None:
            making.stopped = True
            if job_id != self._current:
                self._settle(job_id)  # not begun: nothing to wait for

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
            while self._making:
                job_id = self._current = next(iter(self._making))
                try:
                    await self._make(job_id, self._making[job_id])
                finally:
                    self._current = None
                    self._settle(job_id)
        finally:
            self._working = False
            for job_id in list(self._making):  # cancelled: what waited is not made
                self._settle(job_id)

    async def _make(self, job_id: str, making: _Making) -> None:
        began, finished = threading.Event(), threading.Event()

        def make() -> None:
            began.set()  # before its first look at ``stopped``
            try:
                _make_ahead(self._layout, job_id, making)
            finally:
                finished.set()

        try:
            await anyio.to_thread.run_sync(make, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # Stopped only once its thread has: a deletion waiting for this job removes
            # its files next, and a dir made after them would stay.
            making.stopped = True
            if began.is_set():  # else it makes nothing, if it begins at all
                with anyio.CancelScope(shield=True):
                    wait = finished.wait
                    await anyio.to_thread.run_sync(wait, STOP_WAIT_S, abandon_on_cancel=True)
            raise
        except Exception:
            log.exception("dirs_ahead_failed", job_id=job_id)

    def _settle(self, job_id: str) -> None:
        making = self._making.pop(job_id, None)
        if making is not None:
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
