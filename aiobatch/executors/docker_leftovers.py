"""Removing containers, and again later when the engine does not let us.

A container whose removal fails (the engine does not answer within ``REMOVE_LIMIT_S``,
refuses, or answers garbage) is tried again in the background, each on its own, after 1 s,
1 s, 2 s, 4 s and so on up to ``RETRY_MAX_S``, until it is gone: a service that runs for
months must not collect them (a start removes only the orphans of its unfinished jobs'
envs, and hands them to these tries). One still there after ``RETRY_FOR_S`` is given up
on, with a warning. A container
the engine no longer knows counts as removed. The tries stop before the engines' clients
close.
"""

from __future__ import annotations

from http import HTTPStatus

import aiodocker
import aiohttp
import anyio
from aiodocker.containers import DockerContainer
from anyio.abc import TaskGroup, TaskStatus
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from aiobatch.executors.docker_hosts import message
from aiobatch.logging import get_logger

REMOVE_LIMIT_S = 30.0  # a removal the engine has not answered by then has failed
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 300.0  # the background tries' backoff
RETRY_FOR_S = 24 * 3600.0  # then a container is left (logged: docker_leftover_given_up)

log = get_logger("aiobatch.docker")


async def remove(container: DockerContainer) -> str | None:
    """Remove it (a running one is killed first); None once it is gone, else why not."""
    try:
        with anyio.fail_after(REMOVE_LIMIT_S):
            await container.delete(force=True)
    except aiodocker.DockerError as exc:
        if exc.status == HTTPStatus.NOT_FOUND:
            return None
        return message(exc)
    # OSError: no connection, or no answer in time (TimeoutError); the rest: an answer that
    # is not HTTP, cut short, or not the JSON it says it is.
    except (OSError, aiohttp.ClientError, ValueError, KeyError) as exc:
        return str(exc) or type(exc).__name__
    return None


class _StillThere(Exception):
    pass


class Leftovers:
    def __init__(self, env_name: str) -> None:
        self.env_name = env_name
        self.waiting: dict[str, DockerContainer] = {}  # by container id
        self._group: TaskGroup | None = None  # the background tries', while open
        # Made once open: the executor itself is made before any event loop runs.
        self._scope: anyio.CancelScope | None = None
        self._closed: anyio.Event | None = None
        self._none_left: anyio.Event | None = None  # None: nothing waits

    async def open(self, background: TaskGroup) -> None:
        self._scope, self._closed = anyio.CancelScope(), anyio.Event()
        await background.start(self._run, self._scope, self._closed)

    async def close(self) -> None:
        """Stop the background tries. What still waits is left: a next start removes those
        of its unfinished jobs' envs that no instance claims (see above)."""
        if self._scope is not None and self._closed is not None:
            self._scope.cancel()
            await self._closed.wait()

    async def remove(self, container: DockerContainer) -> bool:
        """Remove it now, shielded (what asks may be cancelled: a stop, a shutdown) and
        bounded by ``REMOVE_LIMIT_S``; whether it is gone. If not, it is tried again in the
        background."""
        with anyio.CancelScope(shield=True):
            why = await remove(container)
        if why is None:
            return True
        log.warning("docker_remove_failed", env=self.env_name, container=container.id, error=why)
        self._try_in_background(container, first_wait=RETRY_FIRST_S)  # it failed just now
        return False

    def remove_soon(self, container: DockerContainer) -> None:
        """Remove it in the background, from now on: what asks does not wait for it (a
        start, for an engine that answers lists but not removals)."""
        self._try_in_background(container, first_wait=0.0)

    def _try_in_background(self, container: DockerContainer, *, first_wait: float) -> None:
        if self._group is not None and container.id not in self.waiting:
            if not self.waiting:
                self._none_left = anyio.Event()
            self.waiting[container.id] = container
            self._group.start_soon(self._keep_trying, container, first_wait)

    async def none_left(self) -> None:
        """Return once no container waits to be tried again."""
        if self._none_left is not None:
            await self._none_left.wait()

    async def _run(
        self,
        scope: anyio.CancelScope,
        closed: anyio.Event,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as group:
                    self._group = group
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            self._group = None
            closed.set()

    async def _keep_trying(self, container: DockerContainer, first_wait: float) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_StillThere),
            wait=wait_exponential(multiplier=RETRY_FIRST_S, max=RETRY_MAX_S),
            stop=stop_after_delay(RETRY_FOR_S),
            sleep=anyio.sleep,
            reraise=True,
        )
        try:
            await anyio.sleep(first_wait)
            async for attempt in retrying:
                with attempt:
                    why = await remove(container)
                    if why is not None:
                        raise _StillThere(why)
            log.info("docker_leftover_removed", env=self.env_name, container=container.id)
        except _StillThere as exc:
            log.warning(
                "docker_leftover_given_up", env=self.env_name, container=container.id, error=exc
            )
        except Exception:  # a bug of ours must not end the env's other tries, or the runtime
            log.exception("docker_leftover_failed", env=self.env_name, container=container.id)
        finally:
            del self.waiting[container.id]
            if not self.waiting and self._none_left is not None:
                self._none_left.set()
