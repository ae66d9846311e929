"""Deleting ended jobs: on request (``Runtime.delete_job``) and by age (``[retention]``).

A job's rows go first, in one transaction (the space reclaimed after it), then its files
(work dirs, logs, attempt records) off the event loop. A crash in between leaves files of a
job the database no longer knows; the next start removes them (``remove_orphans``), so
nothing of a deleted job stays. Remote storage (uploaded outputs, redirected logs) is
never touched. Deleting by age goes in small batches, each its own short transaction,
yielding between them, so dispatch never waits long behind it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path

import anyio
import anyio.lowlevel

from aiobatch.errors import JobNotFinal
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger
from aiobatch.queries import Queries
from aiobatch.states import JOB_TERMINAL, JobState
from aiobatch.storage.beneath import remove_tree
from aiobatch.store import Store

log = get_logger("aiobatch.retention")

BATCH = 50  # jobs per deletion transaction
# While instances run, deleting by age takes at most this share of the time (its file
# removal and SQLite work compete with the instances for the cores): each batch is followed
# by a pause of its own duration times (1 - share) / share. When nothing runs, no pause.
BUSY_SHARE = 0.05
# How often ages are looked at: a tenth of the shortest, between these bounds.
CHECK_MIN_S, CHECK_MAX_S = 1.0, 60.0


class Deletions:
    def __init__(
        self,
        *,
        store: Store,
        queries: Queries,
        layout: StateLayout,
        stop_and_wait: Callable[[str], Awaitable[object]],
        dirs_settled: Callable[[Collection[str]], Awaitable[None]],
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._store, self._queries, self._layout = store, queries, layout
        self._stop_and_wait = stop_and_wait
        self._dirs_settled = dirs_settled  # none of these jobs' work dirs are made any more
        self._busy = busy  # whether instances run now
        self.deleted = 0  # jobs deleted since the start (by request or by age)

    async def delete_job(self, job_id: str, *, stop: bool = False) -> None:
        """Delete an ended job, rows and files. One that has not ended raises JobNotFinal,
        unless ``stop``: then it is stopped, and deleted once it has ended."""
        job = await self._queries.job(job_id)  # JobNotFound
        if job.state not in JOB_TERMINAL:
            if not stop:
                raise JobNotFinal(job_id, job.state.value)
            await self._stop_and_wait(job_id)
        if not await self._delete([job_id]):  # retried meanwhile (or deleted by another)
            job = await self._queries.job(job_id)
            raise JobNotFinal(job_id, job.state.value)

    async def _delete(self, job_ids: list[str]) -> list[str]:
        """Delete these jobs, but for any running again (retried since they were chosen):
        those deleted."""
        queries = self._queries
        async with queries.retrying_or_deleting, queries.deleting(job_ids) as chosen:
            # Those still there: another deletion may have taken some while we waited.
            there = await self._store.existing_jobs(chosen) if chosen else set()
            deleting = [job_id for job_id in chosen if job_id in there]
            if deleting:
                await self._store.delete_jobs(deleting)
        if deleting:
            await self._dirs_settled(deleting)
            await anyio.to_thread.run_sync(self._remove_files, deleting)
            self.deleted += len(deleting)
            log.info("jobs_deleted", count=len(deleting), first=deleting[0])
        return deleting

    def _remove_files(self, job_ids: Collection[str]) -> None:
        # Not shutil.rmtree: it recurses once per folder, and a task may nest thousands
        # (RecursionError, which ignore_errors does not cover, at every later start).
        for job_id in job_ids:
            for top in ("work", "logs"):
                remove_tree(self._layout.root / top / job_id)

    async def expire(self, ages_s: Mapping[str, float]) -> int:
        """Delete every job that ended longer ago than its state's age; returns how many."""
        deleted = 0
        for state, age in ages_s.items():
            while True:
                before = time.time() - age
                job_ids = await self._store.ended_before(JobState(state), before, BATCH)
                if not job_ids:
                    break
                began = time.monotonic()
                done = await self._delete(job_ids)
                deleted += len(done)
                if len(done) < len(job_ids):
                    break  # some run again (their rows may say otherwise yet): next check

                if self._busy():
                    await anyio.sleep((time.monotonic() - began) * (1 / BUSY_SHARE - 1))
                else:
                    await anyio.lowlevel.checkpoint()  # let dispatch and requests in between
        return deleted

    async def keep_expiring(self, ages_s: Mapping[str, float]) -> None:
        """Expire jobs for as long as the runtime runs (a task of its own)."""
        interval = min(max(min(ages_s.values()) / 10, CHECK_MIN_S), CHECK_MAX_S)
        while True:
            try:
                await self.expire(ages_s)
            except Exception:  # a full disk, say: try again at the next round
                log.exception("retention_failed")
            await anyio.sleep(interval)

    async def remove_orphans(self) -> None:
        """Remove the files of jobs the database does not know (deleted just before a
        crash); at start, before any job runs."""
        known: set[str] | None = None
        for top in ("work", "logs"):
            folder = self._layout.root / top
            names = await anyio.to_thread.run_sync(_names, folder)
            if names and known is None:
                known = await self._store.job_ids()
            orphans = [name for name in names if known is not None and name not in known]
            if orphans:
                try:
                    await anyio.to_thread.run_sync(self._remove_files, orphans)
                except Exception:  # files left over must never keep the runtime from starting
                    log.exception("orphan_files_not_removed", where=top, jobs=len(orphans))
                    continue
                log.warning("orphan_files_removed", where=top, jobs=len(orphans))


def _names(folder: Path) -> list[str]:
    try:
        return [entry.name for entry in folder.iterdir() if entry.is_dir()]
    except FileNotFoundError:
        return []
