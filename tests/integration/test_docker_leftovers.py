"""A container the engine would not remove is removed once it answers: a real engine,
stopped with SIGSTOP while the runtime removes an ended attempt's container."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest

from aiobatch import Runtime
from aiobatch.executors import docker_leftovers
from aiobatch.executors.docker import DockerExecutor
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.test_docker import docker_config, leftovers

pytestmark = pytest.mark.anyio


def dockerd_serving(host: str) -> int:
    """The pid of the dockerd that listens on ``host`` (one that scripts/docker-engine
    started: ``-H HOST`` on its command line)."""
    with os.scandir("/proc") as entries:
        pids = [entry.name for entry in entries if entry.name.isdigit()]
    for pid in pids:
        try:
            argv = Path("/proc", pid, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dockerd") and host.encode() in argv:
            return int(pid)
    message = f"no dockerd started with -H {host} (scripts/docker-engine up starts them)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def test_a_container_the_engine_would_not_remove_is_removed_once_it_answers(
    engine: aiodocker.Docker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = docker_hosts()[-1]
    pid = dockerd_serving(host)
    monkeypatch.setattr(docker_leftovers, "REMOVE_LIMIT_S", 1.0)
    monkeypatch.setattr(docker_leftovers, "RETRY_FIRST_S", 0.2)
    left_when_released: list[int] = []
    release = DockerExecutor.release

    async def release_while_the_engine_is_stopped(self: DockerExecutor, ctx: Any) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await release(self, ctx)  # the removal gets no answer within its limit
            left_when_released.append(len(self.leftovers.waiting))
        finally:
            os.kill(pid, signal.SIGCONT)

    monkeypatch.setattr(DockerExecutor, "release", release_while_the_engine_is_stopped)
    spec = {"name": "left", "tasks": [{"name": "t", "image": IMAGE, "command": ["true"]}]}
    client = aiodocker.Docker(url=host)
    try:
        async with Runtime(state_dir, config=docker_config([host])) as rt:
            job = await rt.submit(spec)
            await job.wait_for_success()
            assert left_when_released == [1]
            executor = rt.executors["docker"]
            assert isinstance(executor, DockerExecutor)
            # Tried again in the background (or removed by the engine as it resumed: the
            # removal it was sent while stopped may still be in its socket; either way the
            # runtime follows it to its end). tests/unit/test_docker_removal_retries.py: the tries.
            with anyio.fail_after(30):
                await executor.leftovers.none_left()
            assert await leftovers(client, state_dir) == []
    finally:
        os.kill(pid, signal.SIGCONT)  # whatever happened, the engine runs on
        await client.close()
