"""What the runtime does once a job has ended: the attempts drop what they kept for it (its
tasks' environment, its deadline's wait), the engine's records of it become the queries' final
ones, and its ``on_job_end`` hooks run with its final snapshot (unless the runtime is closing).
"""

from __future__ import annotations

from aiobatch.attempts import Attempts
from aiobatch.engine import Engine
from aiobatch.events import Event, JobStateChanged
from aiobatch.hooks import Hooks
from aiobatch.logging import get_logger
from aiobatch.queries import Queries
from aiobatch.states import JOB_TERMINAL

log = get_logger("aiobatch.ended_jobs")


class EndedJobs:
    def __init__(
        self, *, engine: Engine, attempts: Attempts, queries: Queries, hooks: Hooks
    ) -> None:
        self._engine, self._attempts, self._queries, self._hooks = engine, attempts, queries, hooks

    def on_event(self, event: Event) -> None:
        """A bus subscriber: acts on a job's terminal state, ignores every other event."""
        if isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
            self._attempts.forget_job(event.job_id)
            self._queries.job_ended(event.job_id, self._engine.forget(event.job_id))
            if self._hooks.on_job_end and not self._attempts.closing:
                self._attempts.start_job_hooks(event.job_id, self._run_hooks)
            log.info("job_ended", job_id=event.job_id, state=event.state, reason=event.reason)

    async def _run_hooks(self, job_id: str) -> None:
        """``on_job_end`` hooks, with the final snapshot; a failure is logged, the job stays."""
        snapshot = await self._queries.snapshot(job_id, instances=True)
        for hook in self._hooks.on_job_end:
            try:
                await hook(snapshot)
            except Exception:
                log.exception("job_hook_failed", job_id=job_id, hook=repr(hook))
