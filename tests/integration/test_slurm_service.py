"""Slurm tasks through a real ``aiobatch serve`` on the test cluster (scripts/slurm-cluster):
a service killed with SIGKILL mid-array whose restart adopts the array, submitting nothing
twice; a stop of one element (``aiobatch stop JOB TASK INDEX``); logs read while an element
runs; file:// inputs staged before an element runs and outputs uploaded after; a job mixing
local, Docker and Slurm tasks.

Without ``$SLURM_CONF`` these tests skip, except under ``CI=true`` where that fails (as in
test_slurm.py). Slurm tells of an element's end only when asked, so the few waits on Slurm
itself poll ``squeue`` or jobcomp's file within a time limit; everything else waits on the
service's events or on files the elements write.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import pytest

from aiobatch.events import InstanceStateChanged
from tests.helpers import instance_is, runtime_id, until
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.service import AIOBATCH, Service, submit_and_see_running

pytestmark = pytest.mark.anyio
SLURM_ENV = (
    '[compute_envs.slurm]\nkind = "slurm"\npartition = "aiobatch"\nslots = 8\npoll = "0.3s"\n'
)
CONFIG = f'kill_grace = "1s"\n{SLURM_ENV}'
WAIT_S = 60.0  # for Slurm to show what an element did
# Each element notes where it runs: its array job and task ids.
WHERE = 'echo "slurm $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID"'


@pytest.fixture
def slurm_service(service: Service, jobcomp: Path) -> Iterator[Service]:
    """The service, its config a Slurm env; elements it left are scancelled after the test."""
    service.config.write_text(CONFIG)
    try:
        yield service
    finally:
        try:
            prefix = f"aiobatch.{runtime_id(service.state_dir)}."
        except OSError:
            prefix = ""
        if prefix:
            left = [array for array, name in slurm_jobs() if name.startswith(prefix)]
            if left:
                subprocess.run(["scancel", *left], capture_output=True, timeout=30)


def slurm_jobs() -> list[tuple[str, str]]:
    """(array job id, name) of every job squeue knows, ended ones too."""
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%F %j"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [(line.split()[0], line.split()[1]) for line in done.stdout.splitlines()]


def squeue_state(target: str) -> str | None:
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", target, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (done.stdout.strip() or None) if done.returncode == 0 else None


async def until_squeue(target: str, state: str) -> None:
    """Slurm has no events: ask squeue until ``target`` is in ``state``, within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while (now := squeue_state(target)) != state:
        assert time.monotonic() < deadline, f"{target} still {now}, not {state}"
        await anyio.sleep(0.2)


def named_records(jobcomp: Path, prefix: str) -> list[dict[str, str]]:
    """jobcomp's records of the jobs named ``prefix...``."""
    records = []
    for line in jobcomp.read_text(errors="replace").splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("Name", "").startswith(prefix):
            records.append(fields)
    return records


async def jobcomp_records(jobcomp: Path, prefix: str, count: int) -> list[dict[str, str]]:
    """Those records once there are ``count`` (the controller writes one as each element
    ends), or what there is after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        records = await anyio.to_thread.run_sync(named_records, jobcomp, prefix)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await anyio.sleep(0.2)


def slurm_task(name: str, command: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "compute_env": "slurm", "command": command, **fields}


def log_of(service: Service, job_id: str, task: str, index: int) -> str:
    return (service.state_dir / "logs" / job_id / task / f"{index}.stdout").read_text()


def where(service: Service, job_id: str, task: str, index: int) -> str:
    """The element (``ARRAY_TASKID``) that ran the instance, as it noted in its log."""
    [line] = [ln for ln in log_of(service, job_id, task, index).splitlines() if ln[:6] == "slurm "]
    _, array, task_id = line.split()
    return f"{array}_{task_id}"


def array_of(service: Service, job_id: str) -> str:
    """The one array the job's elements are in, found by the name aiobatch gave it."""
    prefix = f"aiobatch.{runtime_id(service.state_dir)}.{job_id}."
    [array] = {array for array, name in slurm_jobs() if name.startswith(prefix)}
    return array


async def test_killed_service_adopts_its_array_and_submits_nothing_twice(
    slurm_service: Service, jobcomp: Path, tmp_path: Path
) -> None:
    service = slurm_service
    gate, late_gate, runs = tmp_path / "gate", tmp_path / "late", tmp_path / "runs"
    runs.mkdir()
    # Every element marks its run; 3 ends once late_gate exists (while no service runs), the
    # others once gate does (after the restart).
    command = (
        f'{WHERE}; echo run >> "{runs}/$AIOBATCH_INSTANCE_INDEX"; '
        f'g="{gate}"; [ "$AIOBATCH_INSTANCE_INDEX" = 3 ] && g="{late_gate}"; '
        'while [ ! -e "$g" ]; do sleep 0.1; done'
    )
    spec = {"name": "adopt", "tasks": [slurm_task("t", command, instances=4)]}
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 4)
    await service.kill()
    late_gate.touch()
    await until_squeue(f"{array_of(service, job.id)}_3", "COMPLETED")

    await service.start()
    gate.touch()
    async with service.client() as client:
        done = await client.wait_job(job.id)
        results = [await client.instance_result(job.id, "t", i) for i in range(4)]
    assert done.status == "SUCCEEDED"
    assert [(r.status, r.attempts, r.exit_code) for r in results] == [("SUCCEEDED", 1, 0)] * 4
    # Each element's program ran once, and one array holds them all: one sbatch.
    assert sorted(p.name for p in runs.iterdir()) == ["0", "1", "2", "3"]
    assert all(p.read_text() == "run\n" for p in runs.iterdir())
    prefix = f"aiobatch.{runtime_id(service.state_dir)}.{job.id}."
    records = await jobcomp_records(jobcomp, prefix, 4)
    assert sorted(int(r["ArrayTaskId"]) for r in records) == [0, 1, 2, 3]
    arrays = {r["ArrayJobId"] for r in records} | {
        array for array, name in slurm_jobs() if name.startswith(prefix)
    }
    assert len(arrays) == 1, arrays


async def test_stop_of_one_element_cancels_it_alone(slurm_service: Service, tmp_path: Path) -> None:
    service, gate = slurm_service, tmp_path / "gate"
    command = f'{WHERE}; while [ ! -e "{gate}" ]; do sleep 0.1; done'
    spec = {
        "name": "stop-one",
        "tasks": [slurm_task("t", command, instances=3, on_failure="continue")],
    }
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 3)
        async with client.subscribe(job.id) as events:
            stop = await anyio.run_process(
                [AIOBATCH, "stop", "--socket", str(service.socket), job.id, "t", "1"],
                check=False,
            )
            assert stop.returncode == 0, stop.stderr
            cancelled = await until(events, instance_is("t", "CANCELLED", 1), WAIT_S)
        # Slurm ended that element itself (it keeps the end for MinJobAge, 10 s).
        array = array_of(service, job.id)
        assert squeue_state(f"{array}_1") == "CANCELLED"
        # The others run on, and end as they would have.
        others = [await client.instance_result(job.id, "t", i) for i in (0, 2)]
        assert [r.status for r in others] == ["RUNNING", "RUNNING"]
        gate.touch()
        done = await client.wait_job(job.id)
        results = [await client.instance_result(job.id, "t", i) for i in range(3)]
    assert isinstance(cancelled, InstanceStateChanged)
    assert cancelled.reason == "stopped_by_user"
    assert [r.status for r in results] == ["SUCCEEDED", "CANCELLED", "SUCCEEDED"]
    assert (done.status, done.reason) == ("CANCELLED", "task_cancelled: t")
    assert [squeue_state(f"{array}_{i}") for i in (0, 2)] == ["COMPLETED", "COMPLETED"]
    assert [where(service, job.id, "t", i) for i in range(3)] == [f"{array}_{i}" for i in range(3)]


async def test_logs_are_readable_while_the_element_runs(
    slurm_service: Service, tmp_path: Path
) -> None:
    service, gate = slurm_service, tmp_path / "gate"
    command = (
        f'echo err-line >&2; echo first-line; while [ ! -e "{gate}" ]; do sleep 0.1; done; '
        "echo second-line"
    )
    spec = {"name": "logs", "tasks": [slurm_task("t", command)]}
    await service.start()
    async with service.client() as client:
        job, _ = await submit_and_see_running(client, spec, 1)
        followed = client.follow_log(job.id, "t", 0)
        # Its first line, as the element writes it on the node: awaited, not slept for.
        seen = await read_until(followed, b"first-line\n")
        assert seen == b"first-line\n"
        assert (await client.instance_result(job.id, "t", 0)).status == "RUNNING"
        assert await client.read_log(job.id, "t", 0) == b"first-line\n"
        assert await client.read_log(job.id, "t", 0, stream="stderr") == b"err-line\n"
        gate.touch()
        # The follow goes on with what comes next, and ends with the instance.
        with anyio.fail_after(WAIT_S):
            rest = b"".join([chunk async for chunk in followed])
        assert rest == b"second-line\n"
        assert (await client.wait_job(job.id)).status == "SUCCEEDED"
        assert await client.read_log(job.id, "t", 0) == b"first-line\nsecond-line\n"


async def read_until(chunks: AsyncIterator[bytes], wanted: bytes) -> bytes:
    got = b""
    with anyio.fail_after(WAIT_S):
        async for chunk in chunks:
            got += chunk
            if wanted in got:
                return got
    raise AssertionError(f"the log ended at {got!r}")


async def test_file_inputs_staged_before_and_outputs_uploaded_after(
    slurm_service: Service, tmp_path: Path
) -> None:
    service = slurm_service
    source, sink = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "words.txt").write_text("hello slurm\n")
    command = (
        f"{WHERE}; pwd > where.txt; tr a-z A-Z < data/words.txt > loud.txt; "
        'echo "$AIOBATCH_INSTANCE_INDEX" >> loud.txt'
    )
    spec = {
        "name": "staged",
        "tasks": [
            slurm_task(
                "t",
                command,
                instances=2,
                inputs=[{"from": f"file://{source}/words.txt", "path": "data/words.txt"}],
                outputs=[
                    {"path": "loud.txt", "to": f"file://{sink}/{{index}}/loud.txt"},
                    {"path": "where.txt", "to": f"file://{sink}/{{index}}/where.txt"},
                ],
            ),
            slurm_task(
                "missing",
                "true",
                outputs=[{"path": "never.txt", "to": f"file://{sink}/never.txt"}],
                on_failure="continue",
            ),
        ],
    }
    await service.start()
    async with service.client() as client:
        job = await client.submit(spec)
        await client.wait_job(job.id)
        results = [await client.instance_result(job.id, "t", i) for i in range(2)]
        missing = await client.instance_result(job.id, "missing", 0)
    assert [r.status for r in results] == ["SUCCEEDED", "SUCCEEDED"]
    for i in range(2):
        assert (sink / str(i) / "loud.txt").read_text() == f"HELLO SLURM\n{i}\n"
        # The element ran in the instance's work dir, where the input was staged.
        work = service.state_dir / "work" / job.id / "t" / str(i)
        assert (sink / str(i) / "where.txt").read_text() == f"{work}\n"
        assert re.fullmatch(r"\d+_" + str(i), where(service, job.id, "t", i))
    # An output the element did not make fails the instance, after it ran on Slurm.
    assert missing.status == "FAILED"
    assert missing.reason is not None and missing.reason.startswith("stage_out_failed"), missing
    assert not (sink / "never.txt").exists()


async def test_job_mixing_local_docker_and_slurm_tasks(
    engine: aiodocker.Docker, slurm_service: Service, tmp_path: Path
) -> None:
    service, shared = slurm_service, tmp_path / "shared"
    shared.mkdir()
    hosts = f"[{docker_hosts()[0]!r}]".replace("'", '"')
    service.config.write_text(
        f"{CONFIG}[compute_envs.local]\nslots = 2\n"
        f'[compute_envs.docker]\nkind = "docker"\nhosts = {hosts}\nslots = 2\n'
    )
    # Each step adds a line saying where it ran: a Slurm job id and its work dir's path.
    note = 'echo "$STEP ${SLURM_JOB_ID:-none} $(pwd)" >> chain.txt'

    def step(name: str, env: str, after: str | None, **fields: Any) -> dict[str, Any]:
        io: dict[str, Any] = {
            "outputs": [{"path": "chain.txt", "to": f"file://{shared}/{name}.txt"}]
        }
        if after is not None:
            io["inputs"] = [{"from": f"file://{shared}/{after}.txt", "path": "chain.txt"}]
            io["depends_on"] = [after]
        return {
            "name": name,
            "compute_env": env,
            "command": note,
            "env": {"STEP": name},
            **io,
            **fields,
        }

    spec = {
        "name": "mixed",
        "tasks": [
            step("first", "local", None),
            step("boxed", "docker", "first", image=IMAGE),
            step("cluster", "slurm", "boxed"),
            step("last", "local", "cluster"),
        ],
    }
    await service.start()
    async with service.client() as client:
        job = await client.submit(spec)
        done = await client.wait_job(job.id)
    assert done.status == "SUCCEEDED"
    work = service.state_dir / "work" / job.id
    lines = [line.split() for line in (shared / "last.txt").read_text().splitlines()]
    assert [line[0] for line in lines] == ["first", "boxed", "cluster", "last"]
    assert lines[0][1:] == ["none", str(work / "first" / "0")]
    assert lines[1][1:] == ["none", "/aiobatch"]  # inside the container
    assert lines[2][1].isdigit() and lines[2][2] == str(work / "cluster" / "0")
    assert lines[3][1:] == ["none", str(work / "last" / "0")]
