"""``Runtime``: the façade that wires store, bus, engine and executors under one task group.

The parts each live in a module of their own: running attempts (``attempts.py``), what a
start does after a crash (``restart.py``), the commands that change jobs (``commands.py``),
the read side (``queries.py``, its methods in ``runtime_reads.py``), what follows a job's end
(``ended_jobs.py``), the log view of its own (``runtime_logview.py``), health and statistics
(``health.py``), executors and storage (``resources.py``). Here: the parts' wiring, the
lifecycle, and the methods that hand each change to its part.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import anyio
from anyio.abc import TaskGroup

from aiobatch.api import JobHandle
from aiobatch.attempts import Attempts
from aiobatch.commands import Commands, SpecSource
from aiobatch.config import Config, default_state_dir, load_config
from aiobatch.ended_jobs import EndedJobs
from aiobatch.engine import Engine
from aiobatch.envs import EnvControl
from aiobatch.errors import RuntimeClosed
from aiobatch.events import Bus, NotificationFailed
from aiobatch.executors.base import Executor
from aiobatch.health import collect_statistics, health_report
from aiobatch.hooks import Hooks
from aiobatch.layout import StateLayout, lock_state_dir
from aiobatch.links import DEFAULT_LINK_HOURS, LinkKeys, check_hours
from aiobatch.logging import get_logger
from aiobatch.metrics import Metrics
from aiobatch.model import JobRec
from aiobatch.notify_delivery import Notifier
from aiobatch.notify_sender import GivenUp
from aiobatch.queries import Queries
from aiobatch.resources import Resources
from aiobatch.restart import recover
from aiobatch.retention import Deletions
from aiobatch.runtime_logview import OwnLogView
from aiobatch.runtime_reads import RuntimeReads
from aiobatch.spec import JobDef
from aiobatch.storage.base import StorageBackend
from aiobatch.store import Store
from aiobatch.wire import EnvChange, EnvInfo

log = get_logger("aiobatch.runtime")

__all__ = ["Runtime", "SpecSource"]


class Runtime(RuntimeReads):
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
        self._layout = StateLayout(Path(root).expanduser())
        self._bus = Bus()
        self._store = Store(self._layout.database)
        self._env_kinds = self.config.env_kinds()
        self._engine = Engine(
            self.config.env_slots(),
            lost_limit=self.config.lost_limit,
            self_throttled=frozenset(n for n, k in self._env_kinds.items() if k == "slurm"),
        )
        self._resources = Resources(self.config, self._layout, executors)
        self._hooks = Hooks.default()
        self._attempts = Attempts(
            engine=self._engine,
            bus=self._bus,
            store=self._store,
            layout=self._layout,
            hooks=self._hooks,
            executors=self._resources.executors,
            storage=self._resources.storage,
            env_kinds=self._env_kinds,
            kill_grace_s=self.config.kill_grace_s,
        )
        self._queries = Queries(
            self._engine, self._store, self._bus, self._layout, self._resources.queued_of
        )
        self._commands = Commands(
            config=self.config,
            env_kinds=self._env_kinds,
            resources=self._resources,
            store=self._store,
            bus=self._bus,
            engine=self._engine,
            attempts=self._attempts,
            queries=self._queries,
            state_dir=self._layout.root,
        )
        self._ended_jobs = EndedJobs(
            engine=self._engine, attempts=self._attempts, queries=self._queries, hooks=self._hooks
        )
        self._deletions = Deletions(
            store=self._store,
            queries=self._queries,
            layout=self._layout,
            stop_and_wait=self._stop_and_wait,
            dirs_settled=self._attempts.dirs_ahead.stopped,
            busy=lambda: any(self._engine.scheduler.used.values()),
        )
        self._envs = EnvControl(
            resources=self._resources,
            engine=self._engine,
            layout=self._layout,
            on_change=self._attempts.pump,
        )
        self._notifier = Notifier(
            store=self._store,
            targets=self.config.notify_targets(),
            on_given_up=self._notification_failed,
        )
        self._metrics = Metrics(
            engine=self._engine,
            layout=self._layout,
            executors=lambda: self._resources.executors,
            store_queue=lambda: self._store.queued_events,
            subscribers=lambda: self._bus.streams_open,
            deleted=lambda: self._deletions.deleted,
            notifier=self._notifier,
        )
        self._store.on_commit = self._metrics.observe_commit
        self._stack: AsyncExitStack | None = None
        self._logview = logview
        # Where the log view is served (set once it listens); the key its links are signed
        # with; the token of a log view of its own (`run --ui`), which no address shows.
        self.logview_url: str | None = None
        self.link_keys = LinkKeys(self._layout.root)
        self.logview_token = secrets.token_urlsafe(24)

    @property
    def state_dir(self) -> Path:
        return self._layout.root

    @property
    def hooks(self) -> Hooks:
        """Phase and job-end hooks (staging in and out are built in); add yours to its lists.
        The object itself is shared with the parts that run them: it cannot be replaced."""
        return self._hooks

    @property
    def executors(self) -> dict[str, Executor]:
        """Executors by compute env name (made on first use)."""
        return self._resources.executors

    @property
    def storage(self) -> dict[str, StorageBackend]:
        """Storage backends by URI scheme; add yours for other schemes (``StorageBackend``:
        it is given a ``Local`` place in the work dir, to reach through
        ``aiobatch.storage.beneath`` only, never by its path)."""
        return self._resources.storage

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            # Every reason not to start (StartupError) shows before any job is recovered:
            # the log view's address, the state dir, its lock, its database.
            logview: OwnLogView | None = None
            if self._logview is not None:
                logview = OwnLogView(self._logview, self.logview_token)
                await logview.bind(stack)
            await anyio.to_thread.run_sync(self._layout.prepare)
            stack.enter_context(lock_state_dir(self._layout.lock))
            await anyio.to_thread.run_sync(self.link_keys.open)
            await anyio.to_thread.run_sync(self._envs.open)  # stored changes over the config
            await self._store.open()
            stack.push_async_callback(self._store.close)
            writer = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(writer.cancel_scope.cancel)
            self._bus.subscribe(self._store.on_event)  # first: no other part can keep it out
            self._bus.subscribe(self._ended_jobs.on_event)
            self._bus.subscribe(self._metrics.on_event)
            self._bus.subscribe(self._notifier.on_event)
            self._store.on_writable = self._attempts.pump  # what waited for the disk may start
            await writer.start(self._store.run)
            stack.push_async_callback(self._store.flush)
            # Deliveries stop before the last flush; what is pending goes after the next start.
            notifications = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(notifications.cancel_scope.cancel)
            await notifications.start(self._notifier.run)
            # Executors close after every instance has ended: enter them first.
            await stack.enter_async_context(self._resources)
            instances = await stack.enter_async_context(anyio.create_task_group())
            self._attempts.open(instances)
            stack.push_async_callback(self._shut_down, instances)
            await self._commands.open()
            self._stack = stack
            await recover(
                store=self._store,
                engine=self._engine,
                queries=self._queries,
                resources=self._resources,
                attempts=self._attempts,
                layout=self._layout,
                check=self.resolve,
            )
            await self._deletions.remove_orphans()
            if ages := self.config.retention.ages_s():
                housekeeping = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(housekeeping.cancel_scope.cancel)
                housekeeping.start_soon(self._deletions.keep_expiring, ages)
            if logview is not None:
                self.logview_url = await logview.serve(self, stack, self.link_keys)
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

    async def _shut_down(self, instances: TaskGroup) -> None:
        """Stop dispatching; interrupt running attempts (they go back to PENDING).

        With ``detach_on_shutdown``, running containers are left to run instead: their
        instances stay RUNNING in the store and the next start re-adopts them.
        """
        self._attempts.closing = True
        if self.config.detach_on_shutdown:
            self._attempts.detach({"docker", "slurm"})
        instances.cancel_scope.cancel()

    async def notifications_settled(self) -> None:
        """Return once every webhook delivery of what happened so far is made or given up.
        Bound it with a cancel scope: then ``pending_notifications`` tells how many jobs
        still have deliveries to make (they are stored: the next start makes them)."""
        await self._notifier.settled()

    @property
    def pending_notifications(self) -> int:
        """Jobs whose webhook deliveries are being made or wait to be."""
        return self._notifier.jobs_pending

    async def drain(self, grace: float | None = None) -> None:
        """Take no new work and start nothing more; wait up to ``grace`` (default: the
        config's ``shutdown_grace``) for running attempts to end. Leaving the ``async with``
        afterwards interrupts what is still running."""
        limit = self.config.shutdown_grace_s if grace is None else grace
        log.info("draining", attempts=self._attempts.in_flight, grace_s=limit)
        await self._attempts.drain(limit)
        log.info("drained", attempts_left=self._attempts.in_flight)

    def _notification_failed(self, failure: GivenUp) -> None:
        """A webhook given up goes into the job's history (its outcome stays as it is)."""
        self._bus.publish(
            NotificationFailed(
                job_id=failure.job_id,
                url=failure.url,
                notification=failure.type,
                seq=failure.seq,
                delivery=failure.delivery,
                tries=failure.tries,
                error=failure.error,
                ts=time.time(),
            )
        )

    # -- changing jobs (commands.py) --------------------------------------------------------

    def _check_open(self) -> None:
        if self._stack is None or self._attempts.closing:
            raise RuntimeClosed("the runtime is not open")

    def resolve(self, spec: SpecSource) -> JobDef:
        """Validate a spec against this runtime's config and executors. Raises SpecError."""
        return self._commands.resolve(spec)

    async def submit(self, spec: SpecSource) -> JobHandle:
        """Validate, store durably, then start a job. Raises SpecError on bad input."""
        self._check_open()
        return self._handle(await self._commands.submit(spec))

    def _handle(self, job: JobRec) -> JobHandle:
        return JobHandle(self, job.id, job.defn.name, list(job.tasks), job.state)

    async def suspend_job(self, job_id: str) -> bool:
        return await self._commands.suspend_job(job_id)

    async def resume_job(self, job_id: str) -> bool:
        return await self._commands.resume_job(job_id)

    async def stop_job(self, job_id: str) -> None:
        await self._commands.stop_job(job_id)

    async def delete_job(self, job_id: str, *, stop: bool = False) -> None:
        """Delete an ended job: its rows, events, work dirs and logs (never what it uploaded).
        One that has not ended raises JobNotFinal, unless ``stop``: it is stopped first."""
        self._check_open()
        await self._deletions.delete_job(job_id, stop=stop)

    async def _stop_and_wait(self, job_id: str) -> None:
        await self.stop_job(job_id)
        await self.wait_job(job_id)

    async def stop_instance(self, job_id: str, task: str, index: int) -> None:
        await self._commands.stop_instance(job_id, task, index)

    async def retry_job(self, job_id: str) -> bool:
        """Take a FAILED or CANCELLED job back to RUNNING; re-run only what did not succeed."""
        self._check_open()
        return await self._commands.retry_job(job_id)

    # -- reading (queries.py; the rest in runtime_reads.py) ----------------------------------

    async def get_job(self, job_id: str) -> JobHandle:
        return self._handle(await self._queries.job(job_id))

    async def logview_address(
        self, job_id: str, *, hours: float = DEFAULT_LINK_HOURS
    ) -> str | None:
        """The job's page in a browser, if this runtime serves one: a link that shows that
        job alone, read-only, for ``hours`` (0 < hours <= 8760; ValueError otherwise)."""
        hours = check_hours(hours)
        await self._queries.job(job_id)
        if self.logview_url is None:
            return None
        link = self.link_keys.issue(job_id, hours)
        return f"{self.logview_url}/ui/jobs/{quote(job_id, safe='')}?link={link}"

    async def health(self) -> dict[str, Any]:
        return health_report(self.statistics(), closing=self._attempts.closing)

    # -- compute envs (envs.py) -------------------------------------------------------------

    async def list_envs(self) -> list[EnvInfo]:
        """Every compute env: slots, slots in use, instances waiting, Docker hosts."""
        return self._envs.describe()

    async def update_env(self, name: str, change: EnvChange) -> EnvInfo:
        """Change an env's slots or Docker hosts now; stored, kept across restarts."""
        self._check_open()
        return self._envs.update(name, change)

    def reload_envs(self, config: Config) -> None:
        """Take a re-read config file's envs (SIGHUP)."""
        self._envs.reload(config)

    async def reload_notifications(self, config: Config) -> None:
        """Take a re-read config file's notification targets (SIGHUP): one removed is sent
        nothing more, one added the events that come next, of every job. ConfigError if
        they are not valid: nothing changes then."""
        self._check_open()
        await self._notifier.reload_targets(
            config.notify_targets(), list(self._engine.jobs), self._commands.next_job_number
        )

    async def metrics_text(self) -> bytes:
        """The runtime's metrics in Prometheus' text format (``metrics.CONTENT_TYPE``)."""
        await self._store.flush()  # count what the engine has done, as listings do
        return self._metrics.render(await self._store.job_counts())

    def statistics(self) -> dict[str, Any]:
        """Counts of jobs by state and slots in use per compute env."""
        executors = self._resources.executors
        return collect_statistics(self._engine, self._store, self._attempts, executors)
