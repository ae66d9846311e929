"""A start that runs out of a system limit is not the task's failure: it waits, uncharged, and
dispatch pauses for a while. The real command under a real RLIMIT_NOFILE, which its spawners
inherit: too few file descriptors for every instance's pipes at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

OPEN_FILES = 64  # the runtime needs ~25; each running instance holds two in its spawner
INSTANCES = 100  # more than two spawners can hold at once under that limit


def test_a_job_without_retries_succeeds_when_its_starts_run_out_of_open_files(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "wide.json"
    spec.write_text(
        json.dumps(
            {
                "name": "wide",
                # Long enough for the starts after the limit to find every slot still held.
                "tasks": [{"name": "t", "instances": INSTANCES, "command": ["sleep", "1"]}],
            }
        )
    )
    config = tmp_path / "config.toml"
    config.write_text(f"[compute_envs.local]\nslots = {INSTANCES}\n")
    limit = ["prlimit", f"--nofile={OPEN_FILES}:{OPEN_FILES}", "--"]
    options = ["--state-dir", str(tmp_path / "state"), "--config", str(config), "--json"]
    done = subprocess.run(
        [*limit, sys.executable, "-m", "aiobatch", "run", str(spec), *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # The limit was reached: some starts failed with EMFILE, and dispatch paused for it.
    logged = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    paused = [line["reason"] for line in logged if line["event"] == "dispatch_paused"]
    assert paused and all(r == "system_limit: log: Too many open files" for r in paused)
    waited = [line for line in done.stderr.splitlines() if ", waiting" in line]
    assert waited and all(line.endswith(" attempt 1 system_limit, waiting") for line in waited)
    # Every instance ran once, in its first attempt: none was charged, none failed.
    result = json.loads(done.stdout)
    instances = result["tasks"]["t"]["instances"]
    assert result["status"] == "SUCCEEDED"
    assert [(i["status"], i["attempts"]) for i in instances] == [("SUCCEEDED", 1)] * INSTANCES
