"""A local instance's log files are made when its program first writes to that stream (or at
its start, if the task uploads its logs): a silent program costs no file, and reads as an
empty log. Real processes, real files, the embedded Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiobatch import Runtime

pytestmark = pytest.mark.anyio


async def test_a_log_file_is_made_by_the_first_output_of_its_stream(state_dir: Path) -> None:
    spec = {
        "name": "logs",
        "tasks": [
            {
                "name": "t",
                "instances": 2,
                # Index 0 writes nothing; index 1 writes to stderr only, after a pause.
                "command": '[ "$AIOBATCH_INSTANCE_INDEX" = 0 ] || { sleep 0.1; echo late >&2; }',
            }
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
        logs = state_dir / "logs" / job.id / "t"
        assert not (logs / "0.stdout").exists() and not (logs / "0.stderr").exists()
        assert not (logs / "1.stdout").exists()
        assert (logs / "1.stderr").read_text() == "late\n"
        assert await rt.read_log(job.id, "t", 0, stream="stdout") == b""
        assert await rt.read_log(job.id, "t", 1, stream="stderr") == b"late\n"


async def test_logs_a_task_uploads_exist_even_if_empty(state_dir: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    spec = {
        "name": "uploaded",
        "tasks": [
            {
                "name": "t",
                "command": ["true"],
                "stdout": f"file://{remote}/",
                "stderr": f"file://{remote}/",
            }
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    assert (remote / "t.0.stdout").read_bytes() == b""
    assert (remote / "t.0.stderr").read_bytes() == b""
