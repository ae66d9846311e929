"""What an attempt is given to run: its context (its paths, and an environment made once per
task and shared by the task's instances), the values of its secrets, read as it starts and
given to its executor alone, and its dirs when a hook may write there first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import anyio
import msgspec

from aiobatch.attempt import AttemptControl, InstanceContext
from aiobatch.layout import StateLayout
from aiobatch.model import InstanceRec
from aiobatch.secret_sources import read_secrets


class Contexts:
    """Builds each attempt's context; keeps, per running job and task, the environment its
    instances share, until ``forget_job``."""

    def __init__(
        self, layout: StateLayout, env_kinds: Mapping[str, str], kill_grace_s: float
    ) -> None:
        self._layout, self._env_kinds, self._kill_grace = layout, env_kinds, kill_grace_s
        # Per running job and task: the environment its instances share.
        self._task_env: dict[str, dict[str, dict[str, str]]] = {}
        self._inherited = InheritedEnvironment()

    def build(self, inst: InstanceRec, control: AttemptControl) -> InstanceContext:
        task, job, layout = inst.task, inst.task.job, self._layout
        base_env = self._task_env.setdefault(job.id, {}).get(task.name)
        if base_env is None:  # first dispatch of the task: once per task, not per instance
            # A local process inherits this process's environment; a container keeps its image's.
            local = self._env_kinds[task.defn.compute_env] == "local"
            inherited = self._inherited.now() if local else {}
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
        # The dirs are made off the event loop by who writes there first: the spawner or
        # the Docker executor (work and log dirs), the storage backends (inputs).
        return InstanceContext(
            job_id=job.id,
            job_name=job.defn.name,
            task=task.defn,
            index=inst.index,
            attempt=inst.attempt,
            work_dir=layout.work_dir(job.id, task.name, inst.index),
            stdout_path=layout.log_path(job.id, task.name, inst.index, "stdout"),
            stderr_path=layout.log_path(job.id, task.name, inst.index, "stderr"),
            env=env,
            kill_grace_s=self._kill_grace,
            control=control,
        )

    def forget_job(self, job_id: str) -> None:
        self._task_env.pop(job_id, None)


class InheritedEnvironment:
    """This process's environment as text, decoded again only when it changed: os.environ
    decodes every name and value each time it is read, once per task of a chain."""

    def __init__(self) -> None:
        self._raw: dict[bytes, bytes] | None = None
        self._decoded: dict[str, str] = {}

    def now(self) -> dict[str, str]:
        raw = getattr(os.environ, "_data", None)  # CPython's encoded store behind os.environ
        if not isinstance(raw, dict):
            return dict(os.environ)
        if raw != self._raw:  # compared in C: a change of any name or value is seen
            self._raw, self._decoded = dict(raw), dict(os.environ)
        return self._decoded


async def read_attempt_secrets(inst: InstanceRec) -> dict[str, str]:
    """The values of the attempt's secrets, read now (off the event loop: files)."""
    job_secrets, task_secrets = inst.task.job.defn.secrets, inst.task.defn.secrets
    if not job_secrets and not task_secrets:
        return {}
    return await anyio.to_thread.run_sync(read_secrets, job_secrets, task_secrets)


def with_secrets(ctx: InstanceContext, secrets: dict[str, str]) -> InstanceContext:
    """The context the executor alone gets: the hooks, the engine and the logs keep the one
    without the values. The secrets win over the inherited environment (they are never in
    the spec's env, and never the runtime's AIOBATCH_ names: both refused at submission)."""
    return msgspec.structs.replace(ctx, env={**ctx.env, **secrets}) if secrets else ctx


def make_dirs(ctx: InstanceContext) -> None:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.stdout_path.parent.mkdir(parents=True, exist_ok=True)
