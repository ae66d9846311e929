"""The examples in examples/ are valid specs, and the per-index example runs as it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiobatch import Runtime
from aiobatch.events import InstanceStateChanged
from aiobatch.reasons import BACKOFF

pytestmark = pytest.mark.anyio

EXAMPLES = sorted(Path("examples").glob("*.*"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_valid(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiobatch", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path}: valid" in result.stdout


async def test_the_lanes_example_flows_by_index_and_backs_off(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit("examples/lanes.yaml")
        done = await job.wait_for_completion()
        history = [entry.event for entry in await rt.job_history(job.id)]
    assert done.status == "SUCCEEDED"
    changes = [e for e in history if isinstance(e, InstanceStateChanged)]
    upload0 = [e for e in changes if (e.task, e.index) == ("upload", 0)]
    waiting = [e for e in upload0 if e.reason == BACKOFF]
    assert len(waiting) == 1 and waiting[0].state == "PENDING" and waiting[0].attempt == 2
    assert waiting[0].not_before is not None
    # The first retry waits the policy's delay (200 ms) from when the failure was settled.
    assert waiting[0].not_before - waiting[0].ts == pytest.approx(0.2, abs=0.01)
    second_start = next(e for e in upload0 if e.state == "STAGING" and e.attempt == 2)
    assert second_start.ts >= waiting[0].not_before
    # By index: each encode[i] starts after render[i] succeeded.
    for i in range(6):
        rendered = next(
            e for e in changes if (e.task, e.index, e.state) == ("render", i, "SUCCEEDED")
        )
        encoding = next(
            e for e in changes if (e.task, e.index, e.state) == ("encode", i, "STAGING")
        )
        assert encoding.ts >= rendered.ts
