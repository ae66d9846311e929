"""What a runtime does when it opens a state dir that a runtime before it left behind.

Every unfinished job is loaded; the attempts that outlived the last runtime (containers,
local processes, and any started in the crash's commit window) are adopted; the attempts
really lost run again, uncharged; whatever of ours no attempt claims is killed or removed,
before anything starts again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from aiobatch.attempts import Attempts
from aiobatch.engine import Engine
from aiobatch.events import JobStateChanged
from aiobatch.executors import records
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger
from aiobatch.model import InstanceRec, JobRec
from aiobatch.queries import Queries
from aiobatch.recovery import claimable, is_orphan, take_over
from aiobatch.resources import Found, Resources
from aiobatch.spec import JobDef
from aiobatch.states import JobState
from aiobatch.store import Store

log = get_logger("aiobatch.restart")

UNRECOVERABLE = "unrecoverable: "  # the reason of a job stored FAILED because it could not load


async def recover(
    *,
    store: Store,
    engine: Engine,
    queries: Queries,
    resources: Resources,
    attempts: Attempts,
    layout: StateLayout,
    check: Callable[[JobDef], object],
) -> None:
    """``check`` validates a stored job against the config (it fails if an env this job
    needs is gone). A job that cannot be loaded or checked is stored FAILED, and the others
    are recovered: one job must not keep the runtime from starting, start after start."""
    jobs: list[tuple[JobRec, list[InstanceRec]]] = []
    for job_id in await store.unfinished_job_ids():
        problem = await _load(store, queries, job_id, check, jobs)
        if problem is not None:
            reason = UNRECOVERABLE + problem
            store.fail_job(job_id, reason, time.time())
            log.error("job_unrecoverable", job_id=job_id, reason=reason)
    await store.flush()
    for job, _ in jobs:
        await resources.open_for(job.defn)
    found = await resources.find_attempts([job.id for job, _ in jobs], claimable(jobs))
    to_stop: list[InstanceRec] = []
    adopted: list[tuple[InstanceRec, Found | None]] = []
    for job, lost in jobs:
        if job.defn.timeout_s is not None and job.state is not JobState.SUBMITTED:
            job.deadline_from = await deadline_from(store, job)
        adopted_here, lost = take_over(job, lost, found)
        if lost:
            log.warning("instances_lost", job_id=job.id, count=len(lost))
        if adopted_here:
            log.info("attempts_adopted", job_id=job.id, count=len(adopted_here))
        to_stop += engine.recover_job(job, lost, [inst for inst, _ in adopted_here])
        deadline = job.deadline
        if deadline is not None and deadline <= time.time():  # it passed while none ran
            log.warning("job_timed_out", job_id=job.id, timeout_s=job.defn.timeout_s)
            to_stop += engine.time_out_job(job)
        adopted += adopted_here
        log.info("job_recovered", job_id=job.id, state=job.state.value)
    # Before anything starts again: no process of ours runs that no attempt claims.
    keep = {(i.task.job.id, i.task.name, i.index, i.attempt) for i, _ in adopted}
    runtime_id = await anyio.to_thread.run_sync(layout.runtime_id)
    for key in await anyio.to_thread.run_sync(records.sweep, runtime_id, keep):
        log.warning("stray_killed", job_id=key[0], task=key[1], index=key[2], attempt=key[3])
    attempts.adopt(adopted, to_stop)
    for job, _ in jobs:
        attempts.watch_deadline(job)
    recovered = {job.id: job for job, _ in jobs}
    for executor, orphan in found.values():
        if is_orphan(orphan, recovered) and await executor.discard(orphan):
            log.warning(
                "orphan_removed", job_id=orphan.job_id, task=orphan.task, index=orphan.index
            )


async def deadline_from(store: Store, job: JobRec) -> float | None:
    """When the job's timeout began to count, from its stored events: the last time it went
    RUNNING other than by a resume (its start, or a retry). Its start time if none is found."""
    since, before = job.started_at, None
    after = 0
    while batch := await store.events(job.id, after=after):
        for seq, event in batch:
            after = seq
            if isinstance(event, JobStateChanged):
                if event.state is JobState.RUNNING and before is not JobState.SUSPENDED:
                    since = event.ts
                before = event.state
    return since


async def _load(
    store: Store,
    queries: Queries,
    job_id: str,
    check: Callable[[JobDef], object],
    into: list[tuple[JobRec, list[InstanceRec]]],
) -> str | None:
    """Load a job into ``into``; or say, in one line, why it cannot be."""
    try:
        row = await store.job_row(job_id)
        if row is not None and row.damaged is not None:
            return row.damaged
        loaded = await queries.load(job_id)
        check(loaded[0].defn)
    except Exception as exc:  # whatever its rows hold, it is this job's problem alone
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    into.append(loaded)
    return None
