"""What each instance cost: a local process tree's rusage, a container's engine figures;
stored with the attempt, summed per task, kept across a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiodocker
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from tests.integration.conftest import IMAGE

pytestmark = pytest.mark.anyio

MiB = 1 << 20
# Busy for a while on the CPU, in user space: a CPU-bound program's CPU time is its wall time.
SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass"


async def test_local_instances_report_cpu_and_peak_memory(state_dir: Path) -> None:
    spec = {
        "name": "costly",
        "tasks": [
            # 100 MiB allocated (and touched) by a child of the instance's shell.
            {
                "name": "mem",
                "command": "python3 -c 'b = bytearray(100 * 2**20)'; true",
            },
            {"name": "cpu", "instances": 2, "command": ["python3", "-c", SPIN.format(s=0.6)]},
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
        snapshot = await rt.job_snapshot(job.id, instances=True)
        mem, cpu = snapshot.tasks["mem"], snapshot.tasks["cpu"]
    assert mem.instances is not None
    (only,) = mem.instances
    assert only.max_rss_bytes is not None and only.max_rss_bytes >= 100 * MiB
    assert mem.max_rss_bytes == only.max_rss_bytes
    for inst in cpu.instances or ():
        assert inst.cpu_user_s is not None and inst.cpu_system_s is not None
        spent = inst.cpu_user_s + inst.cpu_system_s
        assert inst.duration_s is not None
        assert 0.55 <= spent <= inst.duration_s + 0.05, (spent, inst.duration_s)
    per_task = cpu.cpu_user_s + cpu.cpu_system_s
    assert per_task == pytest.approx(
        sum((i.cpu_user_s or 0) + (i.cpu_system_s or 0) for i in cpu.instances or ()), abs=1e-5
    )
    # Stored with the attempt: the row has it, and a restart reads it back.
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        (stored,) = db.execute(
            "SELECT max_rss_bytes FROM instances WHERE job_id = ? AND task = 'mem'", (job.id,)
        ).fetchone()
    db.close()
    assert stored == only.max_rss_bytes
    async with Runtime(state_dir) as rt:
        again = await rt.task_result(job.id, "cpu")
    assert again.cpu_user_s == pytest.approx(cpu.cpu_user_s, abs=1e-5)


async def test_a_container_reports_the_engines_figures(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    env = ComputeEnvConfig(kind="docker", slots=2)
    config = Config(kill_grace="1s", compute_envs={"docker": env})
    # About 3 s busy in the container's shell: the engine samples about once a second.
    busy = "end=$(($(date +%s) + 3)); while [ $(date +%s) -lt $end ]; do :; done"
    spec = {
        "name": "boxed",
        "tasks": [{"name": "t", "image": IMAGE, "network": "none", "command": busy}],
    }
    async with Runtime(state_dir, config=config) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
        result = await rt.task_result(job.id, "t")
        instances = (await rt.job_snapshot(job.id, instances=True)).tasks["t"].instances
    assert instances is not None
    (inst,) = instances
    assert inst.cpu_user_s is not None and inst.cpu_system_s is not None
    assert inst.duration_s is not None
    spent = inst.cpu_user_s + inst.cpu_system_s
    # The last sample is at most about a second before the end.
    assert inst.duration_s - 1.5 <= spent <= inst.duration_s + 0.1, (spent, inst.duration_s)
    assert inst.max_rss_bytes is not None and inst.max_rss_bytes > 0
    assert result.cpu_user_s == pytest.approx(inst.cpu_user_s, abs=1e-5)
