"""``Runtime``: wires store, bus, engine and executors under one task group.

The async shell around the pure engine: every engine call is followed by ``_pump``, which
publishes the engine's events on the bus, stops what the engine says to stop, and starts
the instances it dispatched.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from aiobatch import views
from aiobatch.api import (
    HistoryEntry,
    InstanceDetail,
    JobHandle,
    JobSnapshot,
    JobSummary,
    LogStream,
    TaskResult,
)
from aiobatch.config import Config, ServerConfig, default_state_dir, load_config
from aiobatch.engine import NO_SPACE, RUNTIME_LOST, Engine, Outcome
from aiobatch.errors import (
    InstanceNotFound,
    JobNotFound,
    JobNotRetryable,
    RuntimeClosed,
    StateDirUnwritable,
    TaskNotFound,
)
from aiobatch.events import Bus, Event, JobStateChanged, JobSubmitted
from aiobatch.executors import records
from aiobatch.executors.base import (
    AttemptControl,
    Executor,
    InstanceContext,
)
from aiobatch.hooks import HookContext, HookFailed, Hooks
from aiobatch.layout import StateLayout, lock_state_dir
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.recovery import is_orphan, restore_job, take_over
from aiobatch.resources import Found, Resources
from aiobatch.spec import JobDef, JobSpec, load_spec
from aiobatch.states import (
    INSTANCE_TERMINAL,
    JOB_TERMINAL,
    TASK_TERMINAL,
    InstanceState,
    JobState,
)
from aiobatch.storage.base import StorageBackend
from aiobatch.store import Store

log = structlog.get_logger("aiobatch.runtime")

SpecSource = str | Path | JobSpec | JobDef | Mapping[str, Any]
LOG_POLL_S = 0.2  # how often a followed log file is checked for new bytes
ARCHIVE_SIZE = 256  # ended jobs kept in memory for queries; older ones are read from SQLite
SPACE_RETRY_FIRST_S = 0.1  # a full state dir is tried again after this, doubling up to the max
SPACE_RETRY_MAX_S = 5.0


def new_job_id() -> str:
    """Sortable and readable: UTC time to the second, then 48 random bits (thousands of
    submissions in one second still do not collide)."""
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + os.urandom(6).hex()


def _make_dirs(ctx: InstanceContext) -> None:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.stdout_path.parent.mkdir(parents=True, exist_ok=True)


class Runtime:
    """Runs jobs in this process. Use as ``async with Runtime(state_dir=...) as rt:``."""

    def __init__(
        self,
        state_dir: str | Path | None = None,
        *,
        config: Config | str | Path | None = None,
        executors: Mapping[str, Executor] | None = None,
        logview: str | None = None,
    ) -> None:
        """``logview="HOST:PORT"`` (port 0: any) serves the jobs' pages and the HTTP API on
        that address while the runtime is open; the token is the config's ``[server] token``
        or a random one."""
        self.config = config if isinstance(config, Config) else load_config(config)
        root = state_dir or self.config.state_dir or default_state_dir()
        self.layout = StateLayout(Path(root).expanduser())
        self.bus = Bus()
        self.store = Store(self.layout.database)
        self.engine = Engine(self.config.env_slots(), lost_limit=self.config.lost_limit)
        self._env_kinds = self.config.env_kinds()
        self.resources = Resources(self.config, self.layout, executors)
        self._stack: AsyncExitStack | None = None
        self._instances: TaskGroup | None = None
        self._closing = False
        # A start found no room in the state dir: nothing is dispatched until there is some.
        self._space_short: str | None = None
        self._attempts = 0  # attempts in flight (their tasks in ``_instances``)
        self._no_attempts = anyio.Event()
        self._job_done: dict[str, anyio.Event] = {}
        self._retrying = anyio.Lock()
        # Ended jobs (of this run, or loaded for a query), most recent last; bounded.
        self._archive: OrderedDict[str, JobRec] = OrderedDict()
        self._next_seq = 1
        # Per running job and task: the environment its instances share.
        self._task_env: dict[str, dict[str, dict[str, str]]] = {}
        self._kill_grace = self.config.kill_grace_s
        # Phase hooks (staging in and out are built in; add yours).
        self.hooks = Hooks.default()
        self._logview = logview
        # Where the log view is served (set once it listens), and the token it wants.
        self.logview_url: str | None = None
        self.logview_token = self.config.server.token or secrets.token_urlsafe(24)

    @property
    def executors(self) -> dict[str, Executor]:
        """Executors by compute env name (made on first use)."""
        return self.resources.executors

    @property
    def storage(self) -> dict[str, StorageBackend]:
        """Storage backends by URI scheme; add yours for other schemes."""
        return self.resources.storage

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await anyio.to_thread.run_sync(self.layout.prepare)
            stack.enter_context(lock_state_dir(self.layout.lock))
            await self.store.open()
            stack.push_async_callback(self.store.close)
            writer = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(writer.cancel_scope.cancel)
            self.bus.subscribe(self.store.on_event)
            self.bus.subscribe(self._on_event)
            self.store.on_writable = self._pump  # what waited for the disk may start now
            await writer.start(self.store.run)
            stack.push_async_callback(self.store.flush)
            # Executors close after every instance has ended: enter them first.
            await stack.enter_async_context(self.resources)
            self._instances = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shut_down)
            self._next_seq = await self.store.next_job_seq()
            self._stack = stack
            await self._recover()
            if self._logview is not None:
                await self._serve_logview(stack, self._logview)
        except BaseException:
            self._stack = None
            await stack.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _serve_logview(self, stack: AsyncExitStack, address: str) -> None:
        from aiobatch.server import ControlServer  # aiohttp's server only when asked for

        config = ServerConfig(http=address, token=self.logview_token)
        server = await stack.enter_async_context(ControlServer(self, config, unix=False))
        self.logview_url = server.http_url
        log.info("logview", url=self.logview_url)

    async def _shut_down(self) -> None:
        """Stop dispatching; interrupt running attempts (they go back to PENDING).

        With ``detach_on_shutdown``, running containers are left to run instead: their
        instances stay RUNNING in the store and the next start re-adopts them.
        """
        self._closing = True
        if self.config.detach_on_shutdown:
            for job in self.engine.jobs.values():
                for task in job.tasks.values():
                    if self._env_kinds[task.defn.compute_env] != "docker":
                        continue
                    for inst in task.instances:
                        if inst is not None and inst.control is not None:
                            inst.control.detach = True
        if self._instances is not None:
            self._instances.cancel_scope.cancel()

    async def drain(self, grace: float | None = None) -> None:
        """Take no new work and start nothing more; wait up to ``grace`` (default: the
        config's ``shutdown_grace``) for running attempts to end. Leaving the ``async with``
        afterwards interrupts what is still running."""
        self._closing = True
        limit = self.config.shutdown_grace_s if grace is None else grace
        log.info("draining", attempts=self._attempts, grace_s=limit)
        with anyio.move_on_after(limit):
            while self._attempts:
                await self._no_attempts.wait()
        log.info("drained", attempts_left=self._attempts)

    async def _recover(self) -> None:
        """Load unfinished jobs; adopt the attempts that outlived the last runtime (containers,
        local processes), re-run the lost ones; kill whatever of ours no attempt claims."""
        jobs = [await self._load(job_id) for job_id in await self.store.unfinished_job_ids()]
        for job, _ in jobs:
            self.resolve(job.defn)  # fails loudly if the config lost an env this job needs
            await self.resources.open_for(job.defn)
        found = await self.resources.find_attempts([job.id for job, _ in jobs])
        to_stop: list[InstanceRec] = []
        adopted: list[tuple[InstanceRec, Found]] = []
        for job, lost in jobs:
            adopted_here, lost = take_over(job, lost, found)
            if lost:
                log.warning("instances_lost", job_id=job.id, count=len(lost))
            if adopted_here:
                log.info("attempts_adopted", job_id=job.id, count=len(adopted_here))
            to_stop += self.engine.recover_job(job, lost, [inst for inst, _ in adopted_here])
            adopted += adopted_here
            log.info("job_recovered", job_id=job.id, state=job.state.value)
        # Before anything starts again: no process of ours runs that no attempt claims.
        keep = {(i.task.job.id, i.task.name, i.index, i.attempt) for i, _ in adopted}
        runtime_id = await anyio.to_thread.run_sync(self.layout.runtime_id)
        for key in await anyio.to_thread.run_sync(records.sweep, runtime_id, keep):
            log.warning("stray_killed", job_id=key[0], task=key[1], index=key[2], attempt=key[3])
        # One dispatch, once every adopted attempt holds its slot: none is given twice.
        for inst, _ in adopted:
            inst.control = AttemptControl()
        self._pump(to_stop)
        assert self._instances is not None
        for inst, hit in adopted:
            self._instances.start_soon(self._run_instance, inst, hit)
        recovered = {job.id: job for job, _ in jobs}
        for executor, orphan in found.values():
            if is_orphan(orphan, recovered) and await executor.discard(orphan):
                log.warning(
                    "orphan_removed", job_id=orphan.job_id, task=orphan.task, index=orphan.index
                )

    async def _load(self, job_id: str) -> tuple[JobRec, list[InstanceRec]]:
        row = await self.store.job_row(job_id)
        if row is None:
            raise JobNotFound(job_id)
        tasks = await self.store.task_rows(job_id)
        instances = await self.store.instance_rows(job_id)
        return restore_job(row, tasks, instances)

    # -- the shell around the engine --------------------------------------------------------

    def _pump(self, to_stop: list[InstanceRec] | None = None) -> None:
        engine = self.engine
        started = engine.dispatch() if self._may_dispatch() else []
        for inst in started:
            inst.control = AttemptControl()
        for event in engine.drain():
            self.bus.publish(event)
        for inst in to_stop or ():
            if inst.control is not None and inst.stop_reason is not None:
                inst.control.stop(inst.stop_reason)
        if started:
            instances = self._instances
            assert instances is not None, "dispatch happens only while the runtime is open"
            for inst in started:
                instances.start_soon(self._run_instance, inst)

    def _may_dispatch(self) -> bool:
        """Starts need room in the state dir (records, logs, their state changes)."""
        return not self._closing and self.store.unwritable is None and self._space_short is None

    def _wait_for_space(self, reason: str) -> None:
        if self._space_short is None and self._instances is not None:
            self._space_short = reason
            log.error("dispatch_paused", reason=reason)
            self._instances.start_soon(self._probe_space)

    async def _probe_space(self) -> None:
        """Try the state dir, backing off, until a write fits again; then dispatch."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StateDirUnwritable),
            wait=wait_exponential(multiplier=SPACE_RETRY_FIRST_S, max=SPACE_RETRY_MAX_S),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await anyio.to_thread.run_sync(self.layout.check_writable)
        self._space_short = None
        log.warning("dispatch_resumed")
        self._pump()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
            self._task_env.pop(event.job_id, None)
            job = self.engine.forget(event.job_id)
            if job is not None:
                self._remember(job)
            done = self._job_done.pop(event.job_id, None)
            if done is not None:
                done.set()
            if self.hooks.on_job_end and self._instances is not None and not self._closing:
                self._instances.start_soon(self._run_job_hooks, event.job_id)
            log.info("job_ended", job_id=event.job_id, state=event.state, reason=event.reason)

    async def _run_job_hooks(self, job_id: str) -> None:
        """``on_job_end`` hooks, with the final snapshot; a failure is logged, the job stays."""
        snapshot = await self.job_snapshot(job_id, instances=True)
        for hook in self.hooks.on_job_end:
            try:
                await hook(snapshot)
            except Exception:
                log.exception("job_hook_failed", job_id=job_id, hook=repr(hook))

    def _context(self, inst: InstanceRec) -> InstanceContext:
        task, job = inst.task, inst.task.job
        # The dirs are made off the event loop by who writes there first: the spawner or
        # the Docker executor (work and log dirs), the storage backends (inputs).
        work_dir = self.layout.work_dir(job.id, task.name, inst.index)
        base_env = self._task_env.setdefault(job.id, {}).get(task.name)
        if base_env is None:  # first dispatch of the task: once per task, not per instance
            # A local process inherits this process's environment; a container keeps its image's.
            inherited = os.environ if self._env_kinds[task.defn.compute_env] == "local" else {}
            base_env = {
                **inherited,
                **job.defn.env,
                **task.defn.env,
                "AIOBATCH_JOB_ID": job.id,
                "AIOBATCH_JOB_NAME": job.defn.name,
                "AIOBATCH_TASK_NAME": task.name,
                "AIOBATCH_INSTANCE_COUNT": str(task.total),
            }
            self._task_env[job.id][task.name] = base_env
        env = {
            **base_env,
            "AIOBATCH_INSTANCE_INDEX": str(inst.index),
            "AIOBATCH_ATTEMPT": str(inst.attempt),
        }
        assert inst.control is not None
        return InstanceContext(
            job_id=job.id,
            job_name=job.defn.name,
            task=task.defn,
            index=inst.index,
            attempt=inst.attempt,
            work_dir=work_dir,
            stdout_path=self.layout.log_path(job.id, task.name, inst.index, "stdout"),
            stderr_path=self.layout.log_path(job.id, task.name, inst.index, "stderr"),
            env=env,
            kill_grace_s=self._kill_grace,
            control=inst.control,
        )

    async def _run_instance(self, inst: InstanceRec, adopt: Found | None = None) -> None:
        """One attempt, from staging to settled; or, after a restart, the rest of one."""
        engine = self.engine
        self._attempt_began()
        try:
            try:
                outcome = await self._attempt(inst, adopt)
            except anyio.get_cancelled_exc_class():
                detached = inst.control is not None and inst.control.detach
                if not (detached and inst.state is InstanceState.RUNNING):
                    engine.instance_interrupted(inst)  # else it stays RUNNING, to be re-adopted
                    self._pump()
                raise
            except Exception as exc:  # an executor or hook bug must not take the runtime down
                log.exception("executor_failed", job_id=inst.task.job.id, task=inst.task.name)
                outcome = Outcome(reason=f"executor_error: {exc}")
                if inst.state is InstanceState.RUNNING:
                    engine.instance_exited(inst, outcome)
            to_stop = self._settle(inst, outcome)
        finally:
            self._attempt_ended()
        inst.control = None
        self._pump(to_stop)

    async def _attempt(self, inst: InstanceRec, adopt: Found | None) -> Outcome:
        """Stage, run (or adopt), upload: how the attempt ended, before it is settled."""
        engine = self.engine

        def on_started(pid: int | None) -> None:
            engine.instance_running(inst, pid)
            self._pump()
            log.debug(
                "instance_started",
                job_id=inst.task.job.id,
                task=inst.task.name,
                index=inst.index,
                attempt=inst.attempt,
                pid=pid,
            )

        ctx = self._context(inst)
        hooks = HookContext(instance=ctx, job_name=ctx.job_name, storage=self.storage)
        if adopt is not None:
            outcome = await adopt[0].adopt(ctx, adopt[1])
        else:
            if self.hooks.need_dirs(ctx.task):  # else the executor makes them, off the loop too
                await anyio.to_thread.run_sync(_make_dirs, ctx)
            try:
                await self.hooks.run_before(hooks)
            except HookFailed as exc:
                return Outcome(reason=exc.reason)
            outcome = await self.executors[inst.task.defn.compute_env].run(ctx, on_started)
        if outcome.reason == RUNTIME_LOST or inst.state is not InstanceState.RUNNING:
            return outcome  # how it ended is lost, or it never started: nothing to upload
        engine.instance_exited(inst, outcome)
        self._pump()
        return await self.hooks.run_after(replace(hooks, outcome=outcome))

    def _settle(self, inst: InstanceRec, outcome: Outcome) -> list[InstanceRec]:
        """The attempt's one settlement: a failure in it is logged, never tried twice."""
        try:
            to_stop = self.engine.instance_finished(inst, outcome)
        except Exception:
            log.exception("settle_failed", job_id=inst.task.job.id, task=inst.task.name)
            return []
        if outcome.reason is not None and outcome.reason.startswith(NO_SPACE):
            self._wait_for_space(outcome.reason)
        return to_stop

    def _attempt_began(self) -> None:
        if self._attempts == 0:
            self._no_attempts = anyio.Event()
        self._attempts += 1

    def _attempt_ended(self) -> None:
        self._attempts -= 1
        if self._attempts == 0:
            self._no_attempts.set()

    # -- public API -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._stack is None or self._closing:
            raise RuntimeClosed("the runtime is not open")

    def _check_writable(self) -> None:
        """New work is refused while state changes cannot be stored (they wait in memory)."""
        reason = self.store.unwritable or self._space_short
        if reason is not None:
            raise StateDirUnwritable(self.layout.root, reason)

    def resolve(self, spec: SpecSource) -> JobDef:
        """Validate a spec against this runtime's config and executors. Raises SpecError."""
        if isinstance(spec, JobDef):
            defn = spec
        else:
            defn = load_spec(spec, compute_envs=self._env_kinds, templates=self.config.templates)
        self.resources.check(defn)
        return defn

    async def submit(self, spec: SpecSource) -> JobHandle:
        """Validate, store durably, then start a job. Raises SpecError on bad input."""
        self._check_open()
        defn = self.resolve(spec)
        self._check_writable()
        await self.resources.open_for(defn)
        job_id, seq, now = new_job_id(), self._next_seq, time.time()
        self._next_seq += 1
        self.store.add_job(job_id, seq, defn, now)
        self.bus.publish(JobSubmitted(job_id=job_id, name=defn.name, ts=now))
        try:
            await self.store.flush(required=True)
        except StateDirUnwritable:
            self.store.withdraw_job(job_id)  # refused: nothing of it is stored later
            raise
        job = JobRec(job_id, defn, seq, now)
        self.engine.add_job(job)
        self._pump()
        log.info("job_submitted", job_id=job_id, name=defn.name, tasks=len(defn.tasks))
        return self._handle(job)

    def _handle(self, job: JobRec) -> JobHandle:
        return JobHandle(self, job.id, job.defn.name, list(job.tasks), job.state)

    async def _job(self, job_id: str) -> JobRec:
        job = self.engine.jobs.get(job_id) or self._archive.get(job_id)
        if job is None:
            job, _ = await self._load(job_id)
            self._remember(job)
        return job

    def _remember(self, job: JobRec) -> None:
        self._archive[job.id] = job
        self._archive.move_to_end(job.id)
        while len(self._archive) > ARCHIVE_SIZE:
            self._archive.popitem(last=False)

    async def get_job(self, job_id: str) -> JobHandle:
        return self._handle(await self._job(job_id))

    async def exist_job(self, job_id: str) -> bool:
        return job_id in self.engine.jobs or await self.store.job_row(job_id) is not None

    async def list_jobs(
        self, *, status: JobState | str | None = None, limit: int | None = None, offset: int = 0
    ) -> list[JobSummary]:
        """Jobs newest first, optionally of one status; ``offset`` skips that many."""
        await self.store.flush()
        states = [JobState(status).value] if status is not None else None
        rows = await self.store.list_job_rows(states=states, limit=limit, offset=offset)
        summaries = []
        for row in rows:
            live = self.engine.jobs.get(row.id)
            total = sum(task.instances for task in row.defn.tasks)
            done = sum(task.done for task in live.tasks.values()) if live else total
            summaries.append(
                JobSummary(
                    id=row.id,
                    name=row.defn.name,
                    status=(live.state if live else row.state).value,
                    reason=live.reason if live else row.reason,
                    submitted_at=row.submitted_at,
                    started_at=row.started_at,
                    ended_at=row.ended_at,
                    done=done,
                    total=total,
                )
            )
        return summaries

    async def job_definition(self, job_id: str) -> JobDef:
        """The job as resolved at submission: its tasks, edges, mappings."""
        return (await self._job(job_id)).defn

    async def job_history(
        self, job_id: str, *, after: int = 0, limit: int = 10_000
    ) -> list[HistoryEntry]:
        """The job's stored events after ``after`` (a ``seq``), oldest first."""
        await self._job(job_id)  # JobNotFound for an unknown id
        events = await self.store.events(job_id, after=after, limit=limit)
        return [HistoryEntry(seq=seq, event=event) for seq, event in events]

    async def logview_address(self, job_id: str) -> str | None:
        """The job's page in a browser (token included), if this runtime serves one."""
        await self._job(job_id)
        if self.logview_url is None:
            return None
        token = f"?token={quote(self.logview_token)}" if self.logview_token else ""
        return f"{self.logview_url}/ui/jobs/{quote(job_id, safe='')}{token}"

    def cached_status(self, job_id: str) -> JobState:
        job = self.engine.jobs.get(job_id) or self._archive.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job.state

    async def job_snapshot(self, job_id: str, *, instances: bool = False) -> JobSnapshot:
        return views.job_snapshot(await self._job(job_id), self.engine.waiting_reason, instances)

    async def _task(self, job_id: str, task_name: str) -> TaskRec:
        task = (await self._job(job_id)).tasks.get(task_name)
        if task is None:
            raise TaskNotFound(job_id, task_name)
        return task

    async def _instance_index(self, job_id: str, task_name: str, index: int) -> TaskRec:
        """The task, once ``index`` is known to be one of its instances."""
        task = await self._task(job_id, task_name)
        if not 0 <= index < task.total:
            raise InstanceNotFound(job_id, task_name, index)
        return task

    async def instance_result(self, job_id: str, task_name: str, index: int) -> InstanceDetail:
        """One instance's result; its stderr tail (read for it alone) if it failed."""
        task = await self._instance_index(job_id, task_name, index)
        result = views.instance_result(task, index, self.engine.waiting_reason)
        tail = None
        if result.status == InstanceState.FAILED:
            path = self.layout.log_path(job_id, task_name, index, "stderr")
            tail = await anyio.to_thread.run_sync(views.tail, path)
        return InstanceDetail(**msgspec.structs.asdict(result), stderr_tail=tail)

    async def task_result(self, job_id: str, task_name: str) -> TaskResult:
        task = await self._task(job_id, task_name)
        result = views.task_result(task, self.engine.waiting_reason, instances=True)
        failed = [i.index for i in task.instances if i and i.state is InstanceState.FAILED]

        def read_tails() -> dict[int, list[str]]:  # file reads: off the event loop
            log_path = self.layout.log_path
            return {i: views.tail(log_path(job_id, task_name, i, "stderr")) for i in failed}

        tails = await anyio.to_thread.run_sync(read_tails)
        return msgspec.structs.replace(result, stderr_tails=tails)

    async def wait_job(self, job_id: str) -> JobSnapshot:
        job = await self._job(job_id)
        if job.state not in JOB_TERMINAL:
            done = self._job_done.setdefault(job_id, anyio.Event())
            await done.wait()
        return await self.job_snapshot(job_id)

    async def suspend_job(self, job_id: str) -> bool:
        job = await self._live_job(job_id)
        changed = job is not None and self.engine.suspend_job(job)
        self._pump()
        return changed

    async def resume_job(self, job_id: str) -> bool:
        job = await self._live_job(job_id)
        changed = job is not None and self.engine.resume_job(job)
        self._pump()
        return changed

    async def stop_job(self, job_id: str) -> None:
        job = await self._job(job_id)
        if job.state in JOB_TERMINAL:
            return
        self._pump(self.engine.stop_job(job))

    async def stop_instance(self, job_id: str, task: str, index: int) -> None:
        job = await self._live_job(job_id) or await self._job(job_id)
        task_rec = job.tasks.get(task)
        if task_rec is None:
            raise TaskNotFound(job_id, task)
        if not 0 <= index < task_rec.total:
            raise InstanceNotFound(job_id, task, index)
        inst = self.engine.stop_instance(task_rec, index)
        self._pump([inst] if inst is not None else None)

    async def retry_job(self, job_id: str) -> bool:
        """Take a FAILED or CANCELLED job back to RUNNING; re-run only what did not succeed."""
        self._check_open()
        async with self._retrying:  # two retries at once must not both pass the check
            job = await self._job(job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                raise JobNotRetryable(job_id, job.state.value)
            await self.resources.open_for(job.defn)
            self._archive.pop(job_id, None)
            self.engine.retry_job(job)
            self._pump()
        log.info("job_retried", job_id=job_id)
        return True

    async def _live_job(self, job_id: str) -> JobRec | None:
        """The job if it has not ended; None if it has; JobNotFound if there is none."""
        job = self.engine.jobs.get(job_id)
        if job is None:
            await self._job(job_id)
        return job

    async def job_events(self, job_id: str) -> AsyncIterator[Event]:
        job = await self._job(job_id)
        if job.state in JOB_TERMINAL:
            return
        with self.bus.stream(job_id) as stream:
            async for event in stream:
                yield event
                if isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
                    return

    async def events(self, job_id: str | None = None) -> AsyncIterator[Event]:
        """Every state change (of one job, ending with it; or of all jobs, without end)."""
        if job_id is not None:
            async for event in self.job_events(job_id):
                yield event
            return
        with self.bus.stream() as stream:
            async for event in stream:
                yield event

    async def _log_file(self, job_id: str, task: str, index: int, stream: LogStream) -> Path:
        await self._instance_index(job_id, task, index)
        return self.layout.log_path(job_id, task, index, stream)

    async def read_log(
        self,
        job_id: str,
        task: str,
        index: int,
        *,
        stream: LogStream = "stdout",
        offset: int = 0,
        limit: int | None = None,
    ) -> bytes:
        """Bytes of an instance's log from ``offset`` (empty if it has not started)."""
        path = await self._log_file(job_id, task, index, stream)
        return await anyio.to_thread.run_sync(views.read_bytes, path, offset, limit)

    async def follow_log(
        self, job_id: str, task: str, index: int, *, stream: LogStream = "stdout", offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Chunks of an instance's log as they are written, until the instance has ended."""
        path = await self._log_file(job_id, task, index, stream)
        while True:
            # Read after checking the state, so the last bytes of an ended instance are seen.
            ended = self._instance_ended(await self._job(job_id), task, index)
            chunk = await anyio.to_thread.run_sync(views.read_bytes, path, offset, None)
            if chunk:
                offset += len(chunk)
                yield chunk
            elif ended:
                return
            else:
                await anyio.sleep(LOG_POLL_S)

    @staticmethod
    def _instance_ended(job: JobRec, task: str, index: int) -> bool:
        if job.state in JOB_TERMINAL:
            return True
        task_rec = job.tasks[task]
        inst = task_rec.instances[index]
        if inst is None:
            return task_rec.state in TASK_TERMINAL
        return inst.state in INSTANCE_TERMINAL

    async def health(self) -> dict[str, Any]:
        status = "closing" if self._closing else "ok"
        if self.store.unwritable is not None or self._space_short is not None:
            status = "degraded"
        return {"status": status, **self.statistics()}

    def statistics(self) -> dict[str, Any]:
        """Counts of jobs by state and slots in use per compute env."""
        jobs: dict[str, int] = {}
        for job in self.engine.jobs.values():
            jobs[job.state.value] = jobs.get(job.state.value, 0) + 1
        return {
            "jobs": jobs,
            "compute_envs": self.engine.scheduler.statistics(),
            "commits": self.store.commits,
            "store": self.store.unwritable or self._space_short or "ok",
        }
