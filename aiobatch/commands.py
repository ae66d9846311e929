"""The commands that change jobs: the write side of ``Runtime`` (``queries.py`` is the read
side). A spec is resolved against the runtime's config and executors; a new job is stored
durably before it starts, or refused whole; an ended job is taken back for a retry; a job is
suspended, resumed or stopped, or one instance stopped. Each change goes to the engine, and
what it says to start or stop to the attempts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from aiobatch.attempts import Attempts
from aiobatch.config import Config
from aiobatch.engine import Engine
from aiobatch.errors import (
    InstanceNotFound,
    JobNotRetryable,
    SpecError,
    StateDirUnwritable,
    TaskNotFound,
)
from aiobatch.events import Bus, JobSubmitted
from aiobatch.logging import get_logger
from aiobatch.model import JobRec
from aiobatch.queries import Queries
from aiobatch.resources import Resources
from aiobatch.restart import UNRECOVERABLE
from aiobatch.spec import JobDef, JobSpec, load_spec
from aiobatch.states import JOB_TERMINAL, JobState
from aiobatch.store import Store

log = get_logger("aiobatch.commands")

SpecSource = str | Path | JobSpec | JobDef | Mapping[str, Any]


def new_job_id() -> str:
    """Sortable and readable: UTC time to the second, then 48 random bits (thousands of
    submissions in one second still do not collide)."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + os.urandom(6).hex()


class Commands:
    def __init__(
        self,
        *,
        config: Config,
        env_kinds: Mapping[str, str],
        resources: Resources,
        store: Store,
        bus: Bus,
        engine: Engine,
        attempts: Attempts,
        queries: Queries,
        state_dir: Path,
    ) -> None:
        self._config = config
        self._env_kinds = env_kinds
        self._resources = resources
        self._store = store
        self._bus = bus
        self._engine = engine
        self._attempts = attempts
        self._queries = queries
        self._state_dir = state_dir
        self._next_seq = 1

    async def open(self) -> None:
        """Number new jobs on from the stored ones (the store is open)."""
        self._next_seq = await self._store.next_job_seq()

    @property
    def next_job_number(self) -> int:
        """The number the next job submitted gets (they only grow while the runtime runs)."""
        return self._next_seq

    def resolve(self, spec: SpecSource) -> JobDef:
        """Validate a spec against the config and executors. Raises SpecError."""
        if isinstance(spec, JobDef):  # resolved already, maybe by another config (a stored job)
            defn = spec
            unknown = [
                f"$.tasks[{i}].compute_env: {task.compute_env!r} is not in the config"
                for i, task in enumerate(defn.tasks)
                if task.compute_env not in self._env_kinds
            ]
            if unknown:
                raise SpecError(unknown)
        else:
            defn = load_spec(
                spec,
                compute_envs=self._env_kinds,
                templates=self._config.templates,
                max_instances=self._config.max_instances,
            )
        self._resources.check(defn)
        return defn

    def _check_writable(self) -> None:
        """New work is refused while state changes cannot be stored (they wait in memory)."""
        reason = self._attempts.no_room
        if reason is not None:
            raise StateDirUnwritable(self._state_dir, reason)

    async def submit(self, spec: SpecSource) -> JobRec:
        """Validate, store durably, then start a job. Raises SpecError on bad input."""
        defn = self.resolve(spec)
        self._check_writable()
        await self._resources.open_for(defn)
        job_id, seq, now = new_job_id(), self._next_seq, time.time()
        self._next_seq += 1
        # Whatever can fail is done before the store has the job: its records in memory,
        # its rows encoded and tried (add_job raises SpecError for what SQLite cannot hold).
        job = JobRec(job_id, defn, seq, now)
        submitted = JobSubmitted(job_id=job_id, name=defn.name, ts=now)
        self._store.add_job(submitted, seq, defn)
        # Handed to the store, the job is accepted or refused as a whole: a caller that goes
        # away meanwhile (a client disconnecting) must not leave it stored but not running.
        with anyio.CancelScope(shield=True):
            try:
                await self._store.flush(required=True)
            except BaseException:
                self._store.withdraw_job(job_id)  # refused: nothing of it is stored later
                raise
            self._bus.publish(submitted)  # accepted: now the watchers hear of it
            self._engine.add_job(job)
        self._attempts.dirs_ahead.make(job_id, defn)  # before its first starts
        self._attempts.pump()
        self._attempts.watch_deadline(job)
        log.info("job_submitted", job_id=job_id, name=defn.name, tasks=len(defn.tasks))
        return job

    async def retry_job(self, job_id: str) -> bool:
        """Take a FAILED or CANCELLED job back to RUNNING; re-run only what did not succeed."""
        # Two retries at once must not both pass the check, nor a retry and a deletion.
        async with self._queries.retrying_or_deleting:
            job = await self._queries.job(job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                raise JobNotRetryable(job_id, job.state.value)
            if (job.reason or "").startswith(UNRECOVERABLE):  # its records are not whole
                raise JobNotRetryable(
                    job_id, f"{job.state.value} ({job.reason})", "submit it again"
                )
            await self._resources.open_for(job.defn)
            self._queries.forget(job_id)
            self._engine.retry_job(job)  # a fresh deadline, counted from now
            self._attempts.pump()
            self._attempts.watch_deadline(job)
        log.info("job_retried", job_id=job_id)
        return True

    async def suspend_job(self, job_id: str) -> bool:
        job = await self._queries.live_job(job_id)
        changed = job is not None and self._engine.suspend_job(job)
        self._attempts.pump()
        return changed

    async def resume_job(self, job_id: str) -> bool:
        job = await self._queries.live_job(job_id)
        changed = job is not None and self._engine.resume_job(job)
        self._attempts.pump()
        return changed

    async def stop_job(self, job_id: str) -> None:
        job = await self._queries.job(job_id)
        if job.state in JOB_TERMINAL:
            return
        self._attempts.pump(self._engine.stop_job(job))

    async def stop_instance(self, job_id: str, task: str, index: int) -> None:
        job = await self._queries.live_job(job_id) or await self._queries.job(job_id)
        task_rec = job.tasks.get(task)
        if task_rec is None:
            raise TaskNotFound(job_id, task)
        if not 0 <= index < task_rec.total:
            raise InstanceNotFound(job_id, task, index)
        inst = self._engine.stop_instance(task_rec, index)
        self._attempts.pump([inst] if inst is not None else None)
