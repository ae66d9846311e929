"""Soak: a service with retention set keeps a flat disk footprint under a steady stream of
jobs. A real ``aiobatch serve``, jobs submitted over its socket at a steady pace for a minute,
the state dir weighed every two seconds."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from aiobatch import JobHandle
from aiobatch.client import Client
from tests.integration.service import Service

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

AGES_S = {"SUCCEEDED": 2.0, "FAILED": 3.0, "CANCELLED": 2.0}
CONFIG = """\
[compute_envs.local]
slots = 4

[retention]
succeeded = "2s"
failed = "3s"
cancelled = "2s"
"""
SOAK_S = 60.0  # submitting, from the first job to the last
WARM_UP_S = 12.0  # the first samples are left out: the database and its WAL find their size
SAMPLE_EVERY_S = 2.0
SUBMIT_EVERY_S = 0.25
INSTANCES = 3
STDOUT_BYTES = 64 * 1024  # each instance's
# A job may stay this long past its age: ages are looked at every second (a tenth of the
# shortest, at least 1 s), and this machine may be busy.
MARGIN_S = 5.0
FLAT = 1.5  # the last third's largest footprint over the first third's, at most
OUTGROWN = 4  # bytes the jobs wrote over the largest footprint, at least


def spec(number: int) -> tuple[dict[str, object], str]:
    """The stream's jobs, with the state each must end in: most succeed, some fail, some are
    stopped. Each instance of the first two writes STDOUT_BYTES to its stdout."""
    write = f"yes 0123456789abcde | head -c {STDOUT_BYTES}"
    kind = number % 10
    if kind == 9:
        command, expected = "sleep 60", "CANCELLED"
    elif kind in (7, 8):
        command, expected = f"{write}; exit 3", "FAILED"
    else:
        command, expected = write, "SUCCEEDED"
    task = {"name": "t", "instances": INSTANCES, "command": command}
    return {"name": f"soak-{number}", "tasks": [task]}, expected


@dataclass
class Sample:
    at_s: float  # since the first submit
    footprint: int  # bytes of every file under the state dir
    database: int  # aiobatch.db, -wal, -shm
    wal: int
    job_dirs: int  # under work/ and logs/
    jobs: int  # listed by the service
    written: int  # stdout bytes written by the jobs that had ended when the sample was taken


def weigh(state_dir: Path) -> tuple[int, int, int, int]:
    """(every file's size summed, the database's files, the WAL, job dirs) under the state dir.
    Files vanish while it is walked (jobs are being deleted): those count as gone."""
    total = database = wal = 0
    for folder, _, files in os.walk(state_dir):
        for name in files:
            try:
                size = os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
            total += size
            if folder == str(state_dir) and name.startswith("aiobatch.db"):
                database += size
                wal += size if name.endswith("-wal") else 0
    dirs = 0
    for top in ("work", "logs"):
        try:
            dirs += len(os.listdir(state_dir / top))
        except FileNotFoundError:
            pass
    return total, database, wal, dirs


async def overdue(client: Client) -> list[str]:
    """Jobs still listed longer after their end than their state's age and the margin."""
    now = time.time()
    return [
        f"{job.id} {job.status} ended {now - job.ended_at:.1f} s ago"
        for job in await client.list_jobs()
        if job.ended_at is not None and now - job.ended_at > AGES_S[job.status] + MARGIN_S
    ]


@pytest.mark.timeout(240)
async def test_disk_footprint_stays_flat_under_a_steady_stream_of_jobs(service: Service) -> None:
    service.config.write_text(CONFIG)
    await service.start()
    state_dir = service.state_dir
    samples: list[Sample] = []
    late: list[str] = []
    ended: dict[str, tuple[str, str]] = {}  # job id -> (expected state, final state)
    written = 0
    began = time.monotonic()

    async with service.client() as client:

        async def follow(job: JobHandle, expected: str) -> None:
            nonlocal written
            if expected == "CANCELLED":
                await job.stop()
            snapshot = await job.wait_for_completion()
            ended[job.id] = (expected, snapshot.status)
            if snapshot.status != "CANCELLED":
                written += INSTANCES * STDOUT_BYTES

        async def sample() -> None:
            while True:
                weights = await anyio.to_thread.run_sync(weigh, state_dir)
                late.extend(await overdue(client))
                jobs = len(await client.list_jobs())
                at = time.monotonic() - began
                samples.append(Sample(at, *weights, jobs=jobs, written=written))
                await anyio.sleep(SAMPLE_EVERY_S)

        async with anyio.create_task_group() as sampling:
            sampling.start_soon(sample)
            async with anyio.create_task_group() as followers:
                number = 0
                while (due := began + number * SUBMIT_EVERY_S) < began + SOAK_S:
                    await anyio.sleep(max(0.0, due - time.monotonic()))  # a steady pace
                    job_spec, expected = spec(number)
                    followers.start_soon(follow, await client.submit(job_spec), expected)
                    number += 1
            # Every job has ended: all of them go within their age and the margin.
            last_end = time.time()
            sampling.cancel_scope.cancel()
        with anyio.fail_after(max(AGES_S.values()) + MARGIN_S):
            while await client.list_jobs():  # noqa: ASYNC110 - a deletion publishes no event
                await anyio.sleep(0.2)
        late.extend(await overdue(client))
        gone_after_s = time.time() - last_end
    remains = await anyio.to_thread.run_sync(weigh, state_dir)

    wrong = {job: states for job, states in ended.items() if states[0] != states[1]}
    assert len(ended) == number and not wrong, wrong
    assert late == [], late
    assert remains[3] == 0, f"job dirs left after every job was deleted: {remains}"

    # Flat: after the warm-up, the last third's footprint is no larger than the first's by
    # more than FLAT, while what the jobs wrote grows far past it.
    steady = [s for s in samples if s.at_s >= WARM_UP_S]
    third = len(steady) // 3
    assert third >= 4, samples
    first, last = steady[:third], steady[-third:]
    first_max = max(s.footprint for s in first)
    last_max = max(s.footprint for s in last)
    most = max(s.footprint for s in steady)
    table = "\n".join(str(s) for s in samples)
    assert last_max <= FLAT * first_max, f"footprint grew:\n{table}"
    assert written >= OUTGROWN * most, f"wrote {written} bytes, footprint up to {most}\n{table}"
    assert last[-1].written - first[0].written > most, table
    print(  # what the soak saw, for the log of a run with -s
        f"\n{number} jobs, {written / 2**20:.1f} MiB written; footprint after the warm-up "
        f"{min(s.footprint for s in steady) / 2**20:.2f}-{most / 2**20:.2f} MiB "
        f"(first third max {first_max / 2**20:.2f}, last third max {last_max / 2**20:.2f}); "
        f"WAL up to {max(s.wal for s in samples) / 2**20:.2f} MiB; all deleted "
        f"{gone_after_s:.1f} s after the last end; left {remains[0]} bytes\n{table}"
    )
