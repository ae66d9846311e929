"""A state dir given as a relative path works past the first start: the spawner changes its
own working dir to each instance's before starting it, so every path it is given must be
absolute. Real ``aiobatch run`` processes, real spawner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_chain_runs_with_a_relative_state_dir(tmp_path: Path) -> None:
    spec = tmp_path / "chain.json"
    tasks = [
        {"name": f"t{i}", "command": ["true"], "depends_on": [f"t{i - 1}"] if i else []}
        for i in range(3)
    ]
    spec.write_text(json.dumps({"name": "chain", "tasks": tasks}))
    run = subprocess.run(
        [sys.executable, "-m", "aiobatch", "run", str(spec), "--state-dir", "state", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (job_logs,) = (tmp_path / "state" / "logs").iterdir()
    # Each start is recorded where the runtime looks for it.
    lines = [json.loads(line) for line in (job_logs / ".attempts").read_text().split()]
    ended = {line["key"][1] for line in lines if line.get("status") == 0}
    assert ended == {"t0", "t1", "t2"}
