"""A runtime killed with SIGKILL mid-job loses nothing: reopening the state dir finishes it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiobatch import Runtime
from aiobatch.events import InstanceStateChanged
from tests.helpers import process_alive

pytestmark = pytest.mark.anyio


async def test_sigkill_mid_job_then_reopen_finishes_every_instance(
    state_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    child = subprocess.Popen(  # noqa: ASYNC220 - nothing else runs on the loop yet
        [
            sys.executable,
            str(Path(__file__).with_name("crash_child.py")),
            str(state_dir),
            str(gate),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    job_id = child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL
    child.stdout.close()
    gate.touch()  # from now on every attempt succeeds at once; the orphans sleep on

    async with Runtime(state_dir) as rt:
        # The two attempts that were running are found lost; their processes are gone.
        orphans = [
            event.pid
            for _, event in await rt.store.events(job_id)
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING"
        ]
        assert len(orphans) == 2
        assert not any(process_alive(pid or 0) for pid in orphans)
        job = await rt.get_job(job_id)
        snapshot = await job.wait_for_success()
        result = await job.get_task_result("first")
        history = await rt.store.events(job_id)

    assert snapshot.tasks["then"].status == "SUCCEEDED"
    instances = result.instances or []
    assert [i.status for i in instances] == ["SUCCEEDED"] * 6
    assert sorted(i.attempts for i in instances) == [1, 1, 1, 1, 2, 2]
    lost = [
        (e.index, e.attempt, e.lost)
        for _, e in history
        if isinstance(e, InstanceStateChanged) and e.reason == "runtime_lost"
    ]
    # The two lost attempts were re-run as attempt 2 without a retry to spend: not charged.
    rerun = sorted(i.index for i in instances if i.attempts == 2)
    assert sorted(lost) == [(index, 2, 1) for index in rerun]
