"""What an executor is given, what it returns, and how an attempt is stopped."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
from anyio.abc import TaskGroup

from aiobatch.engine import Outcome
from aiobatch.spec import TaskDef


class AttemptControl:
    """Stops one attempt: cancels the scope its executor waits in (before or during the wait)."""

    __slots__ = ("detach", "scope", "stop_reason")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stop_reason: str | None = None
        # Set before a shutdown cancels the attempt: leave the program running (a container
        # the next start re-adopts) instead of stopping it.
        self.detach = False

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.scope.cancel()


@dataclass(frozen=True, slots=True)
class InstanceContext:
    """Everything an executor needs to run one attempt; no live runtime objects."""

    job_id: str
    job_name: str
    task: TaskDef
    index: int
    attempt: int
    # Exists once the before-start hooks run (made for them off the event loop); an executor
    # makes it (and the log files' directory) if no hook needed it.
    work_dir: Path
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str]
    kill_grace_s: float
    control: AttemptControl


@dataclass(frozen=True, slots=True)
class FoundAttempt:
    """An attempt an executor finds after a restart: a container by its labels, a local
    process by its record file."""

    job_id: str
    task: str
    index: int
    attempt: int
    handle: str  # what ``adopt`` or ``discard`` needs to find it again (container id, record)


class Executor(Protocol):
    """Runs attempts in one kind of compute env."""

    kind: str

    async def open(self, background: TaskGroup) -> None:
        """Acquire what runs need (clients, connections, helper processes); called once,
        before the first run. Long-lived helpers (readers) run in ``background``."""
        ...

    async def aclose(self) -> None:
        """Release what ``open`` acquired; called after the last run has ended."""
        ...

    def unsupported(self, task: TaskDef) -> list[str]:
        """Fields of ``task`` this executor cannot honour (the task is rejected at submit)."""
        ...

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        """Run the attempt to its end; call ``on_started`` once the program runs.

        A stop (``ctx.control``) or the task's timeout ends the program: TERM, then KILL
        after ``ctx.kill_grace_s``. Cancellation from outside kills it the same way, then
        propagates.
        """
        ...


@runtime_checkable
class AdoptingExecutor(Executor, Protocol):
    """An executor whose attempts outlive the runtime and can be taken over after a restart."""

    async def find_attempts(self, job_ids: Collection[str]) -> list[FoundAttempt]:
        """Attempts this runtime started that are still there, running or ended (at least
        those of ``job_ids``, the jobs being recovered)."""
        ...

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Take over an attempt: continue its logs, wait for its end, clean up as ``run`` does."""
        ...

    async def discard(self, found: FoundAttempt) -> bool:
        """Remove an attempt no instance claims (an orphan); whether there was one to remove."""
        ...
