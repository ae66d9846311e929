"""What a runtime reports about itself: its jobs by state, the slots in use per compute env,
the store's commits and state, the instances whose logs wait for room; and from these its
health, ``ok``, ``closing`` or ``degraded`` (the state dir cannot take writes or logs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiobatch.attempts import Attempts
from aiobatch.engine import Engine
from aiobatch.executors.base import Executor
from aiobatch.executors.local import LocalExecutor
from aiobatch.store import Store


def collect_statistics(
    engine: Engine, store: Store, attempts: Attempts, executors: Mapping[str, Executor]
) -> dict[str, Any]:
    """Counts of jobs by state and slots in use per compute env."""
    jobs: dict[str, int] = {}
    for job in engine.jobs.values():
        jobs[job.state.value] = jobs.get(job.state.value, 0) + 1
    return {
        "jobs": jobs,
        "compute_envs": engine.scheduler.statistics(),
        "commits": store.commits,
        "store": attempts.no_room or "ok",
        # Why starts wait for a system limit (open files, processes), by env, or "ok".
        "dispatch": "; ".join(
            f"{env}: {reason}" for env, reason in sorted(attempts.pauses.limits_short.items())
        )
        or "ok",
        # Instances' outputs whose copy into their logs waits for room in the state dir.
        "logs_paused": sum(
            executor.logs_paused
            for executor in executors.values()
            if isinstance(executor, LocalExecutor)
        ),
    }


def health_report(statistics: Mapping[str, Any], *, closing: bool) -> dict[str, Any]:
    """The statistics with a status: degraded (whether closing or not) while the state dir
    cannot take the store's writes or the instances' logs, or starts wait for a system limit."""
    status = "closing" if closing else "ok"
    if statistics["store"] != "ok" or statistics["dispatch"] != "ok" or statistics["logs_paused"]:
        status = "degraded"
    return {"status": status, **statistics}
