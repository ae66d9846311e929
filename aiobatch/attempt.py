"""What the core and the executors share about one attempt: how it ended (``Outcome``), what
an executor is given to run it (``InstanceContext``), how it is stopped (``AttemptControl``),
how one is found again after a restart (``FoundAttempt``), and the reasons both sides name.

A leaf: it imports nothing of aiobatch but the job spec's task definition.
"""

from __future__ import annotations

import signal as signals
from pathlib import Path
from typing import Any

import anyio
import msgspec

from aiobatch.spec import TaskDef

# The attempt ended with its runtime (a crash) or its spawner: how is not known. It runs
# again, not charged to the task's retries.
RUNTIME_LOST = "runtime_lost"
# The cluster took the attempt's node away: it failed or was preempted (Slurm's NODE_FAIL,
# BOOT_FAIL, PREEMPTED). Like RUNTIME_LOST a disruption, not the program's failure.
NODE_FAIL = "node_fail"
PREEMPTED = "preempted"
# Reasons (by kind: ``disrupted: ...`` counts too) of attempts that run again, not charged
# to the task's retries, up to the lost limit (as Kubernetes' pod failure policy ignores
# disruptions).
DISRUPTIONS = frozenset({RUNTIME_LOST, NODE_FAIL, PREEMPTED, "disrupted"})
# It could not start for lack of space in the state dir: nothing ran; it waits (uncharged,
# same attempt) for dispatch to resume once there is room.
NO_SPACE = "state_dir_full"
# It could not start for a limit of the system or of its runtime: open files (EMFILE, ENFILE),
# processes (EAGAIN) or memory (ENOMEM) ran out while it was being started. Nothing ran;
# like NO_SPACE it waits (uncharged, same attempt) while dispatch pauses, then tries again.
SYSTEM_LIMIT = "system_limit"
# The reasons, by kind, of starts that wait instead of failing.
NOT_STARTED_FOR_ROOM = frozenset({NO_SPACE, SYSTEM_LIMIT})

# A secret of the task could not be read when the attempt started: nothing ran. Charged to
# the task's retries like a failed staging (``stage_in_failed``); the reason names the secret
# and its source, never a value.
SECRET_UNAVAILABLE = "secret_unavailable"

AttemptKey = tuple[str, str, int, int]  # job, task, index, attempt


class Usage(msgspec.Struct, frozen=True):
    """What an attempt's program cost: CPU seconds (user, system) and its peak memory, as
    its executor measured them (a local process tree's rusage, a container's engine)."""

    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    max_rss_bytes: int | None = None


class Outcome(msgspec.Struct, frozen=True):
    """How one attempt ended, as an executor saw it."""

    exit_code: int | None = None
    signal: int | None = None
    # Set when the attempt failed for a reason other than its exit status (timeout, hooks).
    reason: str | None = None
    duration_s: float | None = None
    usage: Usage | None = None

    @property
    def code(self) -> int | None:
        """Exit code in the shell's convention: a signal N reads as 128 + N."""
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code

    @property
    def disrupted(self) -> bool:
        """It ended by something outside the program: its runtime, spawner or node went."""
        return self.reason is not None and self.reason.split(":", 1)[0] in DISRUPTIONS

    @property
    def succeeded(self) -> bool:
        return self.reason is None and self.signal is None and self.exit_code == 0

    def failure_reason(self) -> str:
        if self.reason is not None:
            return self.reason
        if self.signal is not None:
            try:
                return f"signal: {signals.Signals(self.signal).name}"
            except ValueError:
                return f"signal: {self.signal}"
        return f"exit_code: {self.exit_code}"


class AttemptControl:
    """Stops one attempt: cancels the scope its executor waits in (before or during the wait)."""

    __slots__ = ("_before", "detach", "scope", "stop_reason")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stop_reason: str | None = None
        # Set before a shutdown cancels the attempt: leave the program running (a container
        # the next start re-adopts) instead of stopping it.
        self.detach = False
        self._before: anyio.CancelScope | None = None

    def before_start(self) -> anyio.CancelScope:
        """A scope for what comes before the program starts (a pull, a create): a stop
        cancels it too, so nothing starts for an attempt already stopped."""
        self._before = anyio.CancelScope()
        if self.stop_reason is not None:
            self._before.cancel()
        return self._before

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.scope.cancel()
        if self._before is not None:
            self._before.cancel()


class InstanceContext(msgspec.Struct, frozen=True):
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
    env: dict[str, str]  # not in its repr: the executor's copy holds the attempt's secrets
    kill_grace_s: float
    control: AttemptControl

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # rich's pretty printer
        return [(name, getattr(self, name)) for name in self.__struct_fields__ if name != "env"]

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"InstanceContext({shown})"


class FoundAttempt(msgspec.Struct, frozen=True):
    """An attempt an executor finds after a restart: a container by its labels, a local
    process by its record file."""

    job_id: str
    task: str
    index: int
    attempt: int
    handle: str  # what ``adopt`` or ``discard`` needs to find it again (container id, record)
