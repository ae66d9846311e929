"""Chaos: ``aiobatch serve`` killed with SIGKILL at random moments of a job, again and again.

Every job still SUCCEEDS, with default retries (none); every instance's side effect happens
exactly once (its process or container outlives each crash and is adopted; an attempt whose
service died before it was started is lost and runs again); nothing of the job is left
running or stored as a container afterwards. The seed is printed on failure.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest

from aiobatch.events import InstanceStateChanged
from tests.helpers import processes_of, runtime_id
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.service import Service, stored_events

pytestmark = pytest.mark.anyio

KILLS = 3


def counted(body: str) -> str:
    """Appends a line to run.txt in the instance's work dir (its side effect), then ``body``."""
    return f"echo run >> run.txt; {body}"


async def kill_at_random(
    service: Service, job_id: str | None, spec: Any, rng: random.Random
) -> str:
    """Start the service (submitting ``spec`` the first time), let some state changes go
    by (a random number of them), then SIGKILL it. Returns the job's id."""
    await service.start()
    changes = rng.randint(1, 12)
    async with service.client() as client:
        async with client.subscribe() as events:
            if job_id is None:
                job_id = (await client.submit(spec)).id
            seen = 0
            with anyio.fail_after(60):
                async for event in events:
                    if isinstance(event, InstanceStateChanged) and event.job_id == job_id:
                        seen += 1
                        if seen >= changes:
                            break
    await service.kill()
    return job_id


async def chaos(service: Service, spec: dict[str, Any], seed: int) -> str:
    rng = random.Random(seed)
    job_id: str | None = None
    for _ in range(KILLS):
        job_id = await kill_at_random(service, job_id, spec, rng)
    assert job_id is not None
    await service.start()
    async with service.client() as client:
        done = await client.wait_job(job_id)
    assert done.status == "SUCCEEDED", f"seed {seed}: {done.status} ({done.reason})"
    return job_id


def chaos_seed() -> int:
    """Random, unless AIOBATCH_CHAOS_SEED repeats a run that failed."""
    return int(os.environ.get("AIOBATCH_CHAOS_SEED") or int.from_bytes(os.urandom(4)))


def lost_after_running(history: list[Any]) -> list[InstanceStateChanged]:
    """Attempts found lost although their program had run (stored RUNNING): every process
    outlives its service and is adopted, so there must be none. An attempt stored as
    STAGING whose service died before it asked the spawner to start it never ran: it is
    lost, and runs again (the side-effect counts show it ran once)."""
    changes = [e for e in history if isinstance(e, InstanceStateChanged)]
    ran = {(e.task, e.index, e.attempt) for e in changes if e.state == "RUNNING"}
    return [
        e for e in changes if e.reason == "runtime_lost" and (e.task, e.index, e.attempt - 1) in ran
    ]


def runs_per_instance(work: Path, task: str, count: int) -> list[int]:
    return [len((work / task / str(i) / "run.txt").read_text().splitlines()) for i in range(count)]


async def test_random_kills_of_the_service_change_no_outcome_of_a_local_job(
    service: Service,
) -> None:
    seed = chaos_seed()
    service.config.write_text("[compute_envs.local]\nslots = 4\n")
    spec = {
        "name": "chaos-local",
        "tasks": [
            {"name": "a", "instances": 16, "command": counted("sleep 0.2")},
            {"name": "b", "depends_on": ["a"], "instances": 4, "command": counted("sleep 0.1")},
        ],
    }
    job_id = await chaos(service, spec, seed)
    work = service.state_dir / "work" / job_id
    assert runs_per_instance(work, "a", 16) == [1] * 16, f"seed {seed}"
    assert runs_per_instance(work, "b", 4) == [1] * 4, f"seed {seed}"
    history = stored_events(service.state_dir, job_id)
    assert lost_after_running(history) == [], f"seed {seed}: a process that ran was not adopted"
    assert processes_of(runtime_id(service.state_dir)) == []


async def test_random_kills_of_the_service_change_no_outcome_of_a_mixed_job(
    engine: aiodocker.Docker, service: Service
) -> None:
    seed = chaos_seed()
    host = docker_hosts()[0]
    service.config.write_text(
        'kill_grace = "1s"\n[compute_envs.local]\nslots = 3\n'
        f'[compute_envs.docker]\nkind = "docker"\nhosts = ["{host}"]\nslots = 3\n'
    )
    spec = {
        "name": "chaos-mixed",
        "tasks": [
            {"name": "local", "instances": 6, "command": counted("sleep 0.2")},
            {"name": "boxed", "image": IMAGE, "instances": 6, "command": counted("sleep 0.5")},
            {"name": "after", "depends_on": ["local", "boxed"], "command": counted("true")},
        ],
    }
    job_id = await chaos(service, spec, seed)
    work = service.state_dir / "work" / job_id
    assert runs_per_instance(work, "local", 6) == [1] * 6, f"seed {seed}"
    assert runs_per_instance(work, "boxed", 6) == [1] * 6, f"seed {seed}"
    assert runs_per_instance(work, "after", 1) == [1], f"seed {seed}"
    assert processes_of(runtime_id(service.state_dir)) == []
    label = f"aiobatch.runtime={runtime_id(service.state_dir)}"
    left = await engine.containers.list(all=True, filters=f'{{"label": ["{label}"]}}')
    assert left == [], f"seed {seed}: containers left behind"
