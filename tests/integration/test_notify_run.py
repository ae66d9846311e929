"""``aiobatch run`` waits, bounded, for its job's webhooks before it exits: a real command
process, a loopback receiver in the test, a real signal."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.integration.service import AIOBATCH
from tests.integration.test_notifications import Receiver

pytestmark = pytest.mark.anyio


def spec_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "job.json"
    spec = {
        "name": "hooked-run",
        "notify": [{"url": url, "events": ["job_succeeded"]}],
        "tasks": [{"name": "t", "command": "true"}],
    }
    path.write_text(json.dumps(spec))
    return path


async def test_run_exits_once_its_job_end_is_delivered(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        spec = spec_file(tmp_path, f"{receiver.base}/run")
        done = await anyio.run_process(
            [str(AIOBATCH), "run", "--quiet", "--state-dir", str(tmp_path / "state"), str(spec)],
            check=False,
        )
        # Delivered before the command returned: nothing waits for a next start.
        arrivals = receiver.taken("/run")
    assert done.returncode == 0, done.stderr
    assert [a.headers["X-Aiobatch-Event"] for a in arrivals] == ["job_succeeded"]
    assert arrivals[0].json["type"] == "job_succeeded"
    assert b"not made yet" not in done.stderr


async def test_ctrl_c_stops_the_wait_and_the_delivery_is_kept(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        release = receiver.held["/slow"] = anyio.Event()  # the receiver does not answer
        spec = spec_file(tmp_path, f"{receiver.base}/slow")
        command = [str(AIOBATCH), "run", "--quiet", "--state-dir", str(tmp_path / "state")]
        async with await anyio.open_process(
            [*command, str(spec)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        ) as process:
            await receiver.wait_for(lambda: bool(receiver.tries("/slow")))
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):  # the wait would last 30 s
                code = await process.wait()
            assert process.stderr is not None
            stderr = (await process.stderr.receive()).decode()
        release.set()
    assert code == 0  # the job itself SUCCEEDED
    assert "webhook deliveries of 1 job(s) not made yet" in stderr
