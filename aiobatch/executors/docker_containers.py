"""What an attempt asks an engine for, and what its container says back after a restart:
the container's config, and the labels that name its attempt and where its output began in
the instance's log files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiobatch.attempt import FoundAttempt, InstanceContext

CONTAINER_WORKDIR = "/aiobatch"
LABEL_PREFIX = "aiobatch."


def labels(
    runtime_id: str, ctx: InstanceContext, offsets: tuple[int, int] = (0, 0)
) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}runtime": runtime_id,
        f"{LABEL_PREFIX}job": ctx.job_id,
        f"{LABEL_PREFIX}task": ctx.task.name,
        f"{LABEL_PREFIX}index": str(ctx.index),
        f"{LABEL_PREFIX}attempt": str(ctx.attempt),
        # Where this attempt's output begins in the instance's log files (earlier attempts
        # come before it): a re-adoption rewrites the logs from there.
        f"{LABEL_PREFIX}stdout_offset": str(offsets[0]),
        f"{LABEL_PREFIX}stderr_offset": str(offsets[1]),
    }


def runtime_filter(runtime_id: str) -> dict[str, list[str]]:
    """An engine's filter for the containers of one runtime (one state dir)."""
    return {"label": [f"{LABEL_PREFIX}runtime={runtime_id}"]}


def container_config(
    runtime_id: str, ctx: InstanceContext, offsets: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    """``offsets``: the log files' sizes, where this attempt's output will begin."""
    task = ctx.task
    workdir = task.workdir or CONTAINER_WORKDIR
    command = task.command
    # Init: the engine's small init is the container's first process, and passes a stop's
    # TERM on; a shell as the first process ignores it, and only the KILL after the grace
    # would end the program.
    host_config: dict[str, Any] = {"Binds": [f"{ctx.work_dir}:{workdir}"], "Init": True}
    if task.cpus is not None:
        host_config["NanoCpus"] = int(task.cpus * 1e9)
    if task.memory_bytes is not None:
        host_config["Memory"] = task.memory_bytes
    if task.network is not None:
        host_config["NetworkMode"] = task.network
    config: dict[str, Any] = {
        "Image": task.image,
        "Env": [f"{key}={value}" for key, value in ctx.env.items()],
        "WorkingDir": workdir,
        "Labels": labels(runtime_id, ctx, offsets),
        "HostConfig": host_config,
        "AttachStdin": False,
        "Tty": False,
    }
    if command is not None:
        config["Cmd"] = ["/bin/sh", "-c", command] if isinstance(command, str) else command
    if task.user is not None:
        config["User"] = task.user
    return config


def found_attempt(container_labels: Mapping[str, str], handle: str) -> FoundAttempt:
    """The attempt a container's labels name (none, if they do not: an orphan)."""
    try:
        return FoundAttempt(
            job_id=container_labels[f"{LABEL_PREFIX}job"],
            task=container_labels[f"{LABEL_PREFIX}task"],
            index=int(container_labels[f"{LABEL_PREFIX}index"]),
            attempt=int(container_labels[f"{LABEL_PREFIX}attempt"]),
            handle=handle,
        )
    except (KeyError, ValueError):
        return FoundAttempt("", "", -1, 0, handle)


def log_offsets(container_labels: Mapping[str, str]) -> tuple[int | None, int | None]:
    """Where the attempt's output began in its stdout and stderr logs, as its labels say."""

    def offset(stream: str) -> int | None:
        value = container_labels.get(f"{LABEL_PREFIX}{stream}_offset")
        return None if value is None else int(value)

    return offset("stdout"), offset("stderr")
