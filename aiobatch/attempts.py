"""Running attempts: the shell that performs what the pure engine decides.

``pump`` publishes the engine's events, stops what it says to stop and starts what it
dispatched; each attempt then runs under one task group, from staging through the executor
to its uploads, and is settled exactly once. The live handles of running attempts (their
stop controls) are kept here, never in the engine's records. What an attempt is given (its
context, its secrets, its dirs) is made in ``contexts.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

import anyio
import msgspec
from anyio.abc import TaskGroup

from aiobatch.attempt import (
    NO_SPACE,
    RUNTIME_LOST,
    SECRET_UNAVAILABLE,
    SYSTEM_LIMIT,
    AttemptControl,
    InstanceContext,
    Outcome,
)
from aiobatch.contexts import Contexts, make_dirs, read_attempt_secrets, with_secrets
from aiobatch.dirs_ahead import DirsAhead
from aiobatch.dispatch_pauses import DispatchPauses
from aiobatch.engine import Engine
from aiobatch.errors import StateDirUnwritable
from aiobatch.events import Bus
from aiobatch.executors.base import Executor, HoldingExecutor
from aiobatch.hooks import HookContext, HookFailed, Hooks
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger
from aiobatch.model import InstanceRec, JobRec
from aiobatch.resources import Found
from aiobatch.secret_sources import SecretUnavailable
from aiobatch.states import JOB_TERMINAL, InstanceState
from aiobatch.storage.base import StorageBackend
from aiobatch.store import Store

log = get_logger("aiobatch.attempts")

# A job's deadline is on the wall clock, read again at least this often while waiting for
# it: a stalled process or a clock step never adds to the job's time.
DEADLINE_CHECK_S = 30.0


class Attempts:
    def __init__(
        self,
        *,
        engine: Engine,
        bus: Bus,
        store: Store,
        layout: StateLayout,
        hooks: Hooks,
        executors: Mapping[str, Executor],
        storage: Mapping[str, StorageBackend],
        env_kinds: Mapping[str, str],
        kill_grace_s: float,
    ) -> None:
        self._engine, self._bus, self._store, self._layout = engine, bus, store, layout
        self._hooks, self._executors, self._storage = hooks, executors, storage
        self._env_kinds = env_kinds
        self._contexts = Contexts(layout, env_kinds, kill_grace_s)
        self.dirs_ahead = DirsAhead(layout)
        self._group: TaskGroup | None = None
        self.closing = False  # no more dispatching: a drain or a shutdown has begun
        # A start found no room (in the state dir, the system): none until there may be.
        self.pauses = DispatchPauses(layout, self.pump)
        self._controls: dict[InstanceRec, AttemptControl] = {}
        self.in_flight = 0  # attempts whose tasks run in the group
        self._none_in_flight = anyio.Event()
        self._holding: dict[int, bool] = {}  # executor id -> keeps an ended attempt's container
        self._deadlines: dict[str, anyio.CancelScope] = {}  # job id -> its deadline's wait
        # The wait for the earliest end of a retry's backoff: (when, its scope).
        self._backoff_wait: tuple[float, anyio.CancelScope] | None = None

    def open(self, group: TaskGroup) -> None:
        self._group = group
        self.dirs_ahead.open(group)
        self.pauses.open(group)

    # -- the engine's effects ----------------------------------------------------------------

    def pump(self, to_stop: list[InstanceRec] | None = None) -> None:
        """Publish what the engine did, stop what it says to stop, start what it dispatched."""
        engine = self._engine
        engine.release_due()
        started = engine.dispatch(paused=self.pauses.limits_short) if self.may_dispatch() else []
        for inst in started:
            self._controls[inst] = AttemptControl()
        for event in engine.drain():
            self._bus.publish(event)
        for inst in to_stop or ():
            control = self._controls.get(inst)
            if control is not None and inst.stop_reason is not None:
                control.stop(inst.stop_reason)
        for inst in started:
            self.start(inst)
        self._watch_backoffs()

    @property
    def no_room(self) -> str | None:
        """Why the state dir takes nothing new (its store cannot write, or a start found no
        room), or None."""
        return self._store.unwritable or self.pauses.space_short

    def may_dispatch(self) -> bool:
        """Starts need room in the state dir (records, logs, their state changes); those of
        a compute env paused for a system limit wait too (``dispatch``'s ``paused``)."""
        return not self.closing and self.no_room is None

    def adopt(
        self, adopted: list[tuple[InstanceRec, Found | None]], to_stop: list[InstanceRec]
    ) -> None:
        """Take over attempts found after a restart (their slots are held already), stopping
        those of jobs that were winding down."""
        for inst, _ in adopted:
            self._controls[inst] = AttemptControl()
        self.pump(to_stop)  # one dispatch, once every adopted attempt holds its slot
        for inst, found in adopted:
            self.start(inst, found)

    def start(self, inst: InstanceRec, found: Found | None = None) -> None:
        assert self._group is not None, "attempts start only while the runtime is open"
        self._group.start_soon(self._run, inst, found)

    def detach(self, kinds: set[str]) -> None:
        """Leave the running attempts of executors of these kinds running at shutdown."""
        for inst, control in self._controls.items():
            if self._env_kinds[inst.task.defn.compute_env] in kinds:
                control.detach = True

    def start_job_hooks(self, job_id: str, run: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        if self._group is not None:
            self._group.start_soon(run, job_id)

    def forget_job(self, job_id: str) -> None:
        self._contexts.forget_job(job_id)
        self.dirs_ahead.stop(job_id)
        scope = self._deadlines.pop(job_id, None)
        if scope is not None:
            scope.cancel()

    # -- a job's deadline ----------------------------------------------------------------------

    def watch_deadline(self, job: JobRec) -> None:
        """Time the job out when its deadline passes (a job without a timeout: nothing)."""
        if self._group is None or job.deadline is None or job.state in JOB_TERMINAL:
            return
        old = self._deadlines.pop(job.id, None)
        if old is not None:
            old.cancel()
        scope = self._deadlines[job.id] = anyio.CancelScope()
        self._group.start_soon(self._wait_for_deadline, job, scope)

    async def _wait_for_deadline(self, job: JobRec, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                deadline = job.deadline
                if deadline is None:
                    return
                left = deadline - time.time()
                if left <= 0:
                    break
                await anyio.sleep(min(left, DEADLINE_CHECK_S))
            if self._deadlines.get(job.id) is scope:
                del self._deadlines[job.id]
            self.time_out(job)

    def time_out(self, job: JobRec) -> None:
        """Stop what the job runs, cancel what waits; the job ends FAILED: job_timeout."""
        if self._engine.jobs.get(job.id) is not job:
            return  # ended (and forgotten) meanwhile
        if job.stopping is None:  # one already winding down keeps its own end
            log.warning("job_timed_out", job_id=job.id, timeout_s=job.defn.timeout_s)
        self.pump(self._engine.time_out_job(job))

    # -- retry backoffs ------------------------------------------------------------------------

    def _watch_backoffs(self) -> None:
        """Wake when the earliest backoff ends (one wait, moved earlier when need be)."""
        when = self._engine.next_release()
        if when is None or self._group is None:
            return
        if self._backoff_wait is not None:
            if self._backoff_wait[0] <= when:
                return
            self._backoff_wait[1].cancel()
        scope = anyio.CancelScope()
        self._backoff_wait = (when, scope)
        self._group.start_soon(self._wait_for_backoff, when, scope)

    async def _wait_for_backoff(self, when: float, scope: anyio.CancelScope) -> None:
        with scope:
            # On the wall clock, read again at least every DEADLINE_CHECK_S: a stall never
            # lengthens a backoff.
            while (left := when - time.time()) > 0:  # noqa: ASYNC110 - a timer, no event
                await anyio.sleep(min(left, DEADLINE_CHECK_S))
            if self._backoff_wait is not None and self._backoff_wait[1] is scope:
                self._backoff_wait = None
            self.pump()

    async def drain(self, limit: float) -> None:
        """Start nothing more; wait up to ``limit`` seconds for what runs to end."""
        self.closing = True
        with anyio.move_on_after(limit):
            while self.in_flight:
                await self._none_in_flight.wait()

    # -- one attempt -------------------------------------------------------------------------

    async def _run(self, inst: InstanceRec, found: Found | None = None) -> None:
        """One attempt, from staging to settled; or, after a restart, the rest of one."""
        engine = self._engine
        self._began()
        try:
            ctx = self._contexts.build(inst, self._controls[inst])
            try:
                outcome = await self._attempt(inst, ctx, found)
            except anyio.get_cancelled_exc_class():
                control = self._controls.get(inst)
                if not (control and control.detach and inst.state is InstanceState.RUNNING):
                    engine.instance_interrupted(inst)  # else it stays RUNNING, to be re-adopted
                    self.pump()
                raise
            except Exception as exc:  # an executor or hook bug must not take the runtime down
                log.exception("executor_failed", job_id=inst.task.job.id, task=inst.task.name)
                outcome = Outcome(reason=f"executor_error: {exc}")
                if inst.state is InstanceState.RUNNING:
                    engine.instance_exited(inst, outcome)
            to_stop = self._settle(inst, outcome)
        finally:
            self._controls.pop(inst, None)  # before the pump: a retry may start it anew
            self._ended()
        self.pump(to_stop)

    def _holds(self, executor: Executor) -> bool:
        # isinstance against a runtime-checkable protocol is slow: once per executor.
        holds = self._holding.get(id(executor))
        if holds is None:
            holds = self._holding[id(executor)] = isinstance(executor, HoldingExecutor)
        return holds

    async def _release(self, inst: InstanceRec, ctx: InstanceContext) -> None:
        """Once the attempt's end is stored (its UPLOADING row), let its executor free what it
        kept for a crash in between (a container); if it cannot be stored, the next start
        finds the container and removes it."""
        executor = self._executors[inst.task.defn.compute_env]
        if self._holds(executor):
            try:
                await self._store.flush(required=True)
            except StateDirUnwritable:
                return
            await cast(HoldingExecutor, executor).release(ctx)

    async def _attempt(
        self, inst: InstanceRec, ctx: InstanceContext, found: Found | None
    ) -> Outcome:
        """Stage, run (or adopt), upload: how the attempt ended, before it is settled."""
        engine = self._engine

        def on_started(pid: int | None) -> None:
            self.pauses.started(inst.task.defn.compute_env)
            engine.instance_running(inst, pid)
            self.pump()
            log.debug(
                "instance_started",
                job_id=inst.task.job.id,
                task=inst.task.name,
                index=inst.index,
                attempt=inst.attempt,
                pid=pid,
            )

        hooks = HookContext(instance=ctx, job_name=ctx.job_name, storage=self._storage)
        if found is not None:
            executor, attempt = found
            outcome = await executor.adopt(ctx, attempt)
        elif inst.state is InstanceState.UPLOADING:  # it ended before a crash, as stored
            outcome = Outcome(
                exit_code=inst.exit_code,
                signal=inst.signal,
                reason=inst.reason,
                duration_s=inst.duration_s,
            )
        else:
            try:  # first: a secret that cannot be read fails the attempt before any staging
                secrets = await read_attempt_secrets(inst)
            except SecretUnavailable as exc:
                return Outcome(reason=f"{SECRET_UNAVAILABLE}: {exc}")
            if self._hooks.need_dirs(ctx.task):  # else the executor makes them, off the loop too
                await anyio.to_thread.run_sync(make_dirs, ctx)
            try:
                await self._hooks.run_before(hooks)
            except HookFailed as exc:
                return Outcome(reason=exc.reason)
            if inst.lost:
                # A run after a loss starts once the loss is stored: an instance that brings
                # its runtime down within the commit window would else be found with the count
                # before it, and run again past its lost_limit (each time it struck so fast).
                try:
                    await self._store.flush(required=True)
                except StateDirUnwritable as exc:
                    return Outcome(reason=f"{NO_SPACE}: {exc}")
            runs = self._executors[inst.task.defn.compute_env]
            outcome = await runs.run(with_secrets(ctx, secrets), on_started)
            del secrets  # the values were the instance's environment, nothing else
        if outcome.reason == RUNTIME_LOST:
            return outcome  # how it ended is lost (with a runtime or the spawner)
        if inst.state is InstanceState.RUNNING:
            engine.instance_exited(inst, outcome)
            self.pump()
        elif inst.state is not InstanceState.UPLOADING:  # adopted mid-upload: upload again
            return outcome  # it never started: nothing to upload
        await self._release(inst, ctx)
        return await self._hooks.run_after(msgspec.structs.replace(hooks, outcome=outcome))

    def _settle(self, inst: InstanceRec, outcome: Outcome) -> list[InstanceRec]:
        """The attempt's one settlement: a failure in it is logged, never tried twice."""
        reason = outcome.reason or ""
        short_of_limits = reason.startswith(SYSTEM_LIMIT)
        if short_of_limits and self._others_run_in(inst):
            # What they hold is what the start lacked: a wait like one for a slot, not
            # counted toward the instance's bound (which is for limits nothing frees).
            inst.limit_waits = 0
        try:
            to_stop = self._engine.instance_finished(inst, outcome)
        except Exception:
            log.exception("settle_failed", job_id=inst.task.job.id, task=inst.task.name)
            return []
        if reason.startswith(NO_SPACE):
            self.pauses.for_space(reason)
        elif short_of_limits:
            self.pauses.for_limits(inst.task.defn.compute_env, reason)
        return to_stop

    def _others_run_in(self, inst: InstanceRec) -> bool:
        """Whether another instance of ``inst``'s compute env runs its program now."""
        env = inst.task.defn.compute_env
        return any(
            other is not inst
            and other.state is InstanceState.RUNNING
            and other.task.defn.compute_env == env
            for other in self._controls
        )

    def _began(self) -> None:
        if self.in_flight == 0:
            self._none_in_flight = anyio.Event()
        self.in_flight += 1

    def _ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._none_in_flight.set()
