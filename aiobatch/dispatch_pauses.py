"""Pauses of dispatch: once a start fails for want of room, nothing more is started where
it lacked room until there may be some again. The instance that could not start waits,
uncharged, for its turn.

Two kinds of room, each named by the reason of the start that found none:

- ``state_dir_full``: the state dir took no record or log. A small write is tried, backing
  off (0.1 s doubling up to 5 s), until one fits.
  Every compute env's starts wait: the state dir is theirs too.
- ``system_limit``: the system or the runtime ran out of open files, processes or memory
  while starting a program (EMFILE, ENFILE, EAGAIN, ENOMEM). Only that compute env's starts
  wait. Nothing tells when that is over, and the instances running may be what holds it,
  so its dispatch resumes after a wait: 1 s, doubling at each pause in a row up to 30 s,
  and back to 1 s once a start there works after it resumed. While other instances of the
  env run, an instance waits as for a slot; with none running, 10 times in a row at most
  (the engine's bound), and then a limit that nothing of ours frees fails it, charged.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from aiobatch.errors import StateDirUnwritable
from aiobatch.layout import StateLayout
from aiobatch.logging import get_logger

log = get_logger("aiobatch.attempts")

SPACE_RETRY_FIRST_S = 0.1  # a full state dir is tried again after this, doubling up to the max
SPACE_RETRY_MAX_S = 5.0
LIMITS_WAIT_FIRST_S = 1.0  # after a start hit a system limit, dispatch resumes after this,
LIMITS_WAIT_MAX_S = 30.0  # doubling at each pause in a row up to this


class DispatchPauses:
    """Why dispatch is paused (``space_short``, ``limits_short``), and the waits that end
    each pause."""

    def __init__(self, layout: StateLayout, resume: Callable[[], None]) -> None:
        self._layout, self._resume = layout, resume
        self._group: TaskGroup | None = None
        self.space_short: str | None = None  # the reason of the start that found no room
        # By compute env: the reason of the start that hit a limit there, and the next wait.
        self.limits_short: dict[str, str] = {}
        self._limits_wait: dict[str, float] = {}

    def open(self, group: TaskGroup) -> None:
        self._group = group

    def for_space(self, reason: str) -> None:
        if self.space_short is None and self._group is not None:
            self.space_short = reason
            self._group.start_soon(self._probe_space)
            log.error("dispatch_paused", reason=reason)

    def for_limits(self, env: str, reason: str) -> None:
        if env not in self.limits_short and self._group is not None:
            self.limits_short[env] = reason
            wait = self._limits_wait.get(env, LIMITS_WAIT_FIRST_S)
            self._limits_wait[env] = min(wait * 2, LIMITS_WAIT_MAX_S)
            self._group.start_soon(self._resume_after, env, wait)
            log.error("dispatch_paused", compute_env=env, reason=reason, resumes_in_s=wait)

    def started(self, env: str) -> None:
        """A program started in ``env`` while its dispatch runs: its next pause waits the
        shortest again."""
        if env not in self.limits_short:
            self._limits_wait.pop(env, None)

    async def _probe_space(self) -> None:
        """Try the state dir, backing off, until a write fits again; then dispatch."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StateDirUnwritable),
            wait=wait_exponential(multiplier=SPACE_RETRY_FIRST_S, max=SPACE_RETRY_MAX_S),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await anyio.to_thread.run_sync(self._layout.check_writable)
        self.space_short = None
        log.warning("dispatch_resumed")
        self._resume()

    async def _resume_after(self, env: str, wait: float) -> None:
        await anyio.sleep(wait)
        del self.limits_short[env]
        log.warning("dispatch_resumed", compute_env=env)
        self._resume()
