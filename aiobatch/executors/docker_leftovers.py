"""Removing containers, and again later when the engine does not let us.

A container whose removal fails (the engine does not answer within ``REMOVE_LIMIT_S``, or
refuses) is kept in a list and tried again in the background, with exponential backoff,
until it is gone: a service that runs for months must not collect them until its next
start (which would find and remove them by their labels). A container the engine no
longer knows counts as removed.
"""

from __future__ import annotations

from http import HTTPStatus

import aiodocker
import anyio
import structlog
from aiodocker.containers import DockerContainer
from anyio.abc import TaskGroup
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from aiobatch.executors.docker_hosts import message

REMOVE_LIMIT_S = 30.0  # a removal the engine has not answered by then has failed
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 300.0  # the background tries' backoff

log = structlog.get_logger("aiobatch.docker")


async def remove(container: DockerContainer) -> str | None:
    """Remove it (a running one is killed first); None once it is gone, else why not."""
    try:
        with anyio.fail_after(REMOVE_LIMIT_S):
            await container.delete(force=True)
    except aiodocker.DockerError as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        return message(exc)
    except OSError as exc:  # TimeoutError among them: the engine did not answer
        return str(exc) or type(exc).__name__
    return None


class _Left(Exception):
    """Some of them are still there."""


class Leftovers:
    def __init__(self, env_name: str) -> None:
        self.env_name = env_name
        self.waiting: dict[str, DockerContainer] = {}  # by container id
        self._news = anyio.Event()
        self._tried = anyio.Event()  # set after each background round

    def open(self, background: TaskGroup) -> None:
        background.start_soon(self._sweep)

    async def remove(self, container: DockerContainer) -> None:
        """Remove it now, or leave it to the background tries. Shielded (what asks may be
        cancelled: a stop, a shutdown), bounded by ``REMOVE_LIMIT_S``."""
        with anyio.CancelScope(shield=True):
            why = await remove(container)
        if why is not None:
            log.warning(
                "docker_remove_failed", env=self.env_name, container=container.id, error=why
            )
            self.waiting[container.id] = container
            self._news.set()

    async def _sweep(self) -> None:
        while True:
            await self._news.wait()
            self._news = anyio.Event()
            await anyio.sleep(RETRY_FIRST_S)  # it failed a moment ago
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_Left),
                wait=wait_exponential(multiplier=RETRY_FIRST_S, max=RETRY_MAX_S),
                sleep=anyio.sleep,
            )
            async for attempt in retrying:
                with attempt:
                    await self._try_all()

    async def none_left(self) -> None:
        """Return once every container left over so far is removed."""
        while self.waiting:
            await self._tried.wait()

    async def _try_all(self) -> None:
        try:
            for container_id, container in list(self.waiting.items()):
                if await remove(container) is None:
                    del self.waiting[container_id]
                    log.info("docker_leftover_removed", env=self.env_name, container=container_id)
        finally:
            self._tried.set()
            self._tried = anyio.Event()
        if self.waiting:
            raise _Left
