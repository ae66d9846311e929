"""How a container's attempt ended, read from the engine's own record of it: the exit code,
the time it ran by the engine's clock (so a runtime that stalled cannot mistake an exit
before the deadline for a timeout), and an OOM kill the engine may flag late.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import anyio
from aiodocker.containers import DockerContainer

from aiobatch.attempt import InstanceContext, Outcome

# How long a late OOM flag is waited for: up to 5 s (seen late by more than 1 s on a busy
# machine); only a memory-limited container killed by SIGKILL and not yet flagged waits.
OOM_FLAG_CHECKS, OOM_FLAG_WAIT_S = 50, 0.1


async def container_outcome(
    container: DockerContainer, ctx: InstanceContext, began: float, *, cut_short: bool
) -> Outcome:
    """The outcome of a container that has ended; ``began`` is when it started (monotonic),
    ``cut_short`` says it still ran when we stopped it, at its deadline or on request."""
    state = (await container.show())["State"]
    if _maybe_oom(state, ctx) and not cut_short:
        state = await _settled_oom_state(container, state)
    # The engine's own times decide, not when we heard: a runtime that was stalled past
    # the deadline must not call an exit before it a timeout (nor one after it a success).
    ran_s = _ran_seconds(state)
    duration = ran_s if ran_s is not None else time.monotonic() - began
    timeout = ctx.task.timeout_s
    if ctx.control.stop_reason is not None or timeout is None:
        timed_out = False
    else:
        timed_out = cut_short or (ran_s is not None and ran_s > timeout)
    reason = None
    if timed_out:
        reason = "timeout"
    elif state.get("OOMKilled"):
        reason = "oom"
    return Outcome(exit_code=int(state["ExitCode"]), reason=reason, duration_s=duration)


def seconds_since(timestamp: str | None) -> float:
    """Seconds since an engine timestamp (RFC 3339, nanoseconds), 0 if there is none."""
    if not timestamp or timestamp.startswith("0001-"):
        return 0.0
    return max(0.0, time.time() - datetime.fromisoformat(timestamp).timestamp())


def _maybe_oom(state: dict[str, Any], ctx: InstanceContext) -> bool:
    """SIGKILLed (137) under a memory limit, but not (yet) flagged OOMKilled."""
    limited = ctx.task.memory_bytes is not None
    return limited and int(state.get("ExitCode", 0)) == 137 and not state.get("OOMKilled")


async def _settled_oom_state(container: DockerContainer, state: dict[str, Any]) -> dict[str, Any]:
    """containerd's shim may send a container's exit event before its OOM event (fixed
    upstream late in 2025: containerd/containerd#12714), and the engine flags
    OOMKilled only when the OOM event comes: look again, briefly, before calling it a
    plain kill."""
    for _ in range(OOM_FLAG_CHECKS):
        await anyio.sleep(OOM_FLAG_WAIT_S)
        state = (await container.show())["State"]
        if state.get("OOMKilled"):
            break
    return state


def _ran_seconds(state: dict[str, Any]) -> float | None:
    """From the container's start to its end, as the engine recorded them."""
    started, finished = state.get("StartedAt"), state.get("FinishedAt")
    if not started or not finished or started.startswith("0001-") or finished.startswith("0001-"):
        return None
    # fromisoformat reads the engine's nanoseconds (cut to microseconds) since Python 3.11.
    ended_at = datetime.fromisoformat(finished).timestamp()
    return max(0.0, ended_at - datetime.fromisoformat(started).timestamp())
