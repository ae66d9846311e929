"""What an executor is given, what it returns, and how an attempt is stopped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from aiobatch.engine import Outcome
from aiobatch.spec import TaskDef


class AttemptControl:
    """Stops one attempt: cancels the scope its executor waits in (before or during the wait)."""

    __slots__ = ("scope", "stop_reason")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stop_reason: str | None = None

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
    work_dir: Path  # exists already; the log files' directory too
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str]
    kill_grace_s: float
    control: AttemptControl


class Executor(Protocol):
    """Runs attempts in one kind of compute env."""

    kind: str

    async def open(self) -> None:
        """Acquire what runs need (clients, connections); called once, before the first run."""
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
