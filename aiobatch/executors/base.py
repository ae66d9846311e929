"""What an executor is given, what it returns, and how an attempt is stopped."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Protocol, runtime_checkable

from anyio.abc import TaskGroup

from aiobatch.attempt import AttemptKey, FoundAttempt, InstanceContext, Outcome
from aiobatch.spec import TaskDef


def any_attempt(key: AttemptKey) -> bool:
    """Every attempt may be claimed (what ``find_attempts`` assumes unless told)."""
    return True


class Executor(Protocol):
    """Runs attempts in one kind of compute env."""

    kind: str

    async def open(self, background: TaskGroup) -> None:
        """Acquire what runs need (clients, connections, helper processes); called once,
        before the first run. Long-lived helpers (watchers, batchers) run in ``background``."""
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
class HoldingExecutor(Executor, Protocol):
    """An executor that keeps what an ended attempt ran in (a container) until the runtime has
    stored how it ended, so that a crash in between finds it and adopts it."""

    async def release(self, ctx: InstanceContext) -> None:
        """The attempt's end is stored: free what it still holds."""
        ...


@runtime_checkable
class AdoptingExecutor(Executor, Protocol):
    """An executor whose attempts outlive the runtime and can be taken over after a restart."""

    async def find_attempts(
        self, job_ids: Collection[str], claimable: Callable[[AttemptKey], bool] = any_attempt
    ) -> list[FoundAttempt]:
        """Attempts this runtime started that are still there, running or ended (at least
        those of ``job_ids``, the jobs being recovered). ``claimable`` says which of them an
        instance may still claim: time spent on a record still to come goes to those alone."""
        ...

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Take over an attempt: continue its logs, wait for its end, clean up as ``run`` does."""
        ...

    async def discard(self, found: FoundAttempt) -> bool:
        """Remove an attempt no instance claims (an orphan); whether there was one to remove."""
        ...


@runtime_checkable
class LogCountingExecutor(Executor, Protocol):
    """An executor that counts the bytes it writes into its attempts' log files."""

    @property
    def log_bytes(self) -> int:
        """Bytes written into log files since the executor opened."""
        ...


@runtime_checkable
class QueueingExecutor(Executor, Protocol):
    """An executor whose attempts may wait in a queue of its own (a cluster scheduler's)
    between being handed over and starting."""

    def queued_of(self, job_id: str, task: str) -> dict[int, str]:
        """Why each of the task's attempts that waits in that queue has not started yet, as
        the queue says, by index."""
        ...
