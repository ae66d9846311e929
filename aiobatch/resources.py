"""What jobs run on: the executors of the compute envs and the storage backends.

Both are made on first use and opened before anything of a job that needs them is
dispatched, so a run that never uses Docker or S3 never imports aiodocker or aiobotocore.
They close, in reverse order, when the runtime does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import cast

import anyio
from anyio.abc import TaskGroup

from aiobatch.attempt import AttemptKey, FoundAttempt
from aiobatch.config import Config
from aiobatch.errors import SpecError
from aiobatch.executors.base import AdoptingExecutor, Executor, QueueingExecutor
from aiobatch.executors.local import LocalExecutor
from aiobatch.host_set import HostSet
from aiobatch.layout import StateLayout
from aiobatch.model import TaskRec
from aiobatch.spec import JobDef, TaskDef
from aiobatch.storage.base import StorageBackend, StorageURI
from aiobatch.storage.files import FileBackend

Found = tuple[AdoptingExecutor, FoundAttempt]  # an attempt found after a restart, and its owner


class Resources:
    def __init__(
        self, config: Config, layout: StateLayout, executors: Mapping[str, Executor] | None
    ) -> None:
        self.config = config
        self.layout = layout
        self.env_kinds = config.env_kinds()
        # Executors by compute env name; made on first use, opened before their first run.
        self.executors: dict[str, Executor] = dict(executors or {})
        self._queueing: dict[str, tuple[Executor, bool]] = {}  # whether each env's queues
        # Each env as it stands (``envs.py`` changes slots and Docker hosts at runtime).
        self.envs = config.effective_envs()
        self.host_sets: dict[str, HostSet] = {}
        # Storage backends by URI scheme (s3 is made when a job first needs it).
        self.storage: dict[str, StorageBackend] = {"file": FileBackend()}
        self._opened: set[str] = set()
        self._opening = anyio.Lock()
        self._stack = AsyncExitStack()
        self._background: TaskGroup | None = None

    async def __aenter__(self) -> Resources:
        # Executors' helpers (Slurm's watcher and batcher) live here; cancelled once the
        # executors are closed.
        background = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(background.cancel_scope.cancel)
        self._background = background
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def check(self, defn: JobDef) -> None:
        """Refuse a job whose tasks ask for what their executor or storage cannot do."""
        problems = []
        for i, task in enumerate(defn.tasks):
            kind = self.env_kinds[task.compute_env]
            for name in self.executor(task.compute_env).unsupported(task):
                problems.append(
                    f"$.tasks[{i}].{name}: not supported by compute env {task.compute_env!r}"
                    f" (kind {kind!r})"
                )
            problems += self._storage_problems(i, task)
        if problems:
            raise SpecError(problems)

    def _storage_problems(self, i: int, task: TaskDef) -> list[str]:
        """Mappings whose URI scheme has no storage backend, or names an unknown profile."""
        schemes = {*self.storage, "s3"}
        profiles = self.config.storage.profiles
        problems = []
        for where, uri in task.storage_uris():
            parsed = StorageURI.parse(uri)
            if parsed.scheme not in schemes:
                problems.append(
                    f"$.tasks[{i}].{where}: no storage backend for {parsed.scheme}:// "
                    f"(available: {', '.join(sorted(schemes))})"
                )
            elif parsed.profile is not None and parsed.profile not in profiles:
                known = ", ".join(sorted(profiles)) or "none configured"
                problems.append(
                    f"$.tasks[{i}].{where}: unknown storage profile {parsed.profile!r} "
                    f"(known: {known})"
                )
        return problems

    def executor(self, env_name: str) -> Executor:
        executor = self.executors.get(env_name)
        if executor is None:
            env = self.envs[env_name]
            if env.kind == "docker":
                from aiobatch.executors.docker import DockerExecutor  # only when used

                hosts = self.host_sets.get(env_name)
                executor = DockerExecutor(env_name, env, self.layout.runtime_id, hosts)
            elif env.kind == "slurm":
                from aiobatch.executors.slurm import SlurmExecutor, SlurmSettings

                settings = SlurmSettings(
                    partition=env.partition,
                    account=env.account,
                    qos=env.qos,
                    sbatch_options=env.sbatch_options,
                    poll=env.poll,
                    chunk=env.chunk,
                )
                executor = SlurmExecutor(env_name, settings, self.layout.runtime_id)
            else:
                executor = LocalExecutor(self.layout)
            self.executors[env_name] = executor
        return executor

    def queued_of(self, task: TaskRec) -> dict[int, str]:
        """Why each of the task's instances that waits in its executor's own queue waits."""
        env = task.defn.compute_env
        executor = self.executors.get(env)
        if executor is None or not task.active:
            return {}
        # Asked for every task of a snapshot; isinstance of a protocol is slow: once per
        # executor (an env's may be made anew).
        known = self._queueing.get(env)
        if known is None or known[0] is not executor:
            known = self._queueing[env] = (executor, isinstance(executor, QueueingExecutor))
        if not known[1]:
            return {}
        return cast(QueueingExecutor, executor).queued_of(task.job.id, task.defn.name)

    async def open_for(self, defn: JobDef) -> None:
        """Open (once) the executors and storage a job needs, before anything is dispatched."""
        async with self._opening:  # concurrent submissions must not open an env twice
            await self._open_for(defn)

    async def _open_for(self, defn: JobDef) -> None:
        for env_name in {task.compute_env for task in defn.tasks} - self._opened:
            executor = self.executor(env_name)
            assert self._background is not None, "resources are opened in an async with"
            await executor.open(self._background)
            self._stack.push_async_callback(executor.aclose)
            self._opened.add(env_name)
        if "s3" not in self.storage and any(
            uri.startswith("s3://") for task in defn.tasks for _, uri in task.storage_uris()
        ):
            from aiobatch.storage.s3 import S3Profiles  # only jobs that use S3 pay for it

            storage = self.config.storage
            backend = S3Profiles(storage.s3, storage.profiles)
            await backend.open()
            self._stack.push_async_callback(backend.aclose)
            self.storage["s3"] = backend

    async def find_attempts(
        self, job_ids: list[str], claimable: Callable[[AttemptKey], bool]
    ) -> dict[AttemptKey, Found]:
        """Attempts still there in the opened executors that can outlive the runtime
        (``claimable``: see ``AdoptingExecutor.find_attempts``)."""
        found: dict[AttemptKey, Found] = {}
        for env_name in self._opened:
            executor = self.executors[env_name]
            if isinstance(executor, AdoptingExecutor):
                for attempt in await executor.find_attempts(job_ids, claimable):
                    key = (attempt.job_id, attempt.task, attempt.index, attempt.attempt)
                    found[key] = (executor, attempt)
        return found
