"""The ``aiobatch`` command as a user runs it: real processes, exit codes, real signals."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import process_alive

ROOT = Path(__file__).resolve().parents[2]


def aiobatch(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobatch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_validate_lists_every_problem_with_exit_2(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "bad.yaml",
        "name: bad\ntasks:\n"
        "  - {name: a, command: 'true', depends_on: [rendr]}\n"
        "  - {name: b, command: 'true', instances: 0}\n"
        "  - {name: c, command: 'true', depends_on: [d]}\n"
        "  - {name: d, command: 'true', depends_on: [c]}\n",
    )
    done = aiobatch("validate", spec)
    assert done.returncode == 2 and done.stdout == ""
    assert "$.tasks[0].depends_on[0]: unknown task 'rendr'" in done.stderr
    assert "$.tasks[1].instances: must be at least 1, got 0" in done.stderr
    assert "$.tasks[3].depends_on[0]: dependency cycle c -> d -> c" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_accepts_the_examples() -> None:
    for example in sorted((ROOT / "examples").iterdir()):
        done = aiobatch("validate", example)
        assert done.returncode == 0, done.stderr
        assert "valid" in done.stdout


def test_schema_is_json_schema() -> None:
    done = aiobatch("schema")
    schema = json.loads(done.stdout)
    assert done.returncode == 0
    assert schema["$defs"]["JobSpec"]["required"] == ["name", "tasks"]


def test_run_success_prints_json_result(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "ok.json",
        json.dumps({"name": "ok", "tasks": [{"name": "t", "instances": 3, "command": "true"}]}),
    )
    done = aiobatch("run", spec, "--state-dir", tmp_path / "s", "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "SUCCEEDED" and result["name"] == "ok"
    instances = result["tasks"]["t"]["instances"]
    assert [(i["index"], i["status"], i["attempts"], i["exit_code"]) for i in instances] == [
        (0, "SUCCEEDED", 1, 0),
        (1, "SUCCEEDED", 1, 0),
        (2, "SUCCEEDED", 1, 0),
    ]
    assert all({"reason", "duration_s"} <= set(i) for i in instances)


def test_run_failure_exits_1_and_shows_progress_lines(tmp_path: Path) -> None:
    spec = write(tmp_path / "f.yaml", "name: f\ntasks:\n  - {name: t, command: 'exit 3'}\n")
    done = aiobatch("run", spec, "--state-dir", tmp_path / "s")
    assert done.returncode == 1
    assert "t:0/1/1[100%] FAILED (exit_code: 3)" in done.stderr  # plain lines: not a terminal
    assert "FAILED" in done.stdout


def test_run_invalid_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.toml", 'name = "x"\n[[tasks]]\nname = "a"\n')
    done = aiobatch("run", spec, "--state-dir", tmp_path / "s")
    assert done.returncode == 2
    assert "$.tasks[0].command: required" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists()


def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "[compute_envs.local]\nslots = 'many'\n")
    spec = write(tmp_path / "j.yaml", "name: j\ntasks:\n  - {name: t, command: 'true'}\n")
    done = aiobatch("run", spec, "--config", config, "--state-dir", tmp_path / "s")
    assert done.returncode == 2
    assert "$.compute_envs.local.slots" in done.stderr and "Traceback" not in done.stderr


def test_config_slots_and_templates_apply(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.toml",
        "[compute_envs.local]\nslots = 1\n"
        "[compute_envs.big]\nkind = 'local'\nslots = 3\n"
        "[templates.greet]\ncommand = 'echo hi from $AIOBATCH_TASK_NAME'\n",
    )
    spec = write(
        tmp_path / "j.yaml",
        "name: j\ntasks:\n  - {name: t, template: greet, compute_env: big, instances: 2}\n",
    )
    done = aiobatch(
        "run", spec, "--config", config, "--state-dir", tmp_path / "s", "--json", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    job_id = json.loads(done.stdout)["id"]
    assert (tmp_path / "s" / "logs" / job_id / "t" / "1.stdout").read_text() == "hi from t\n"


def test_default_state_dir_follows_environment(tmp_path: Path) -> None:
    spec = write(tmp_path / "j.yaml", "name: j\ntasks:\n  - {name: t, command: 'true'}\n")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("AIOBATCH_STATE_DIR", None)
    assert aiobatch("run", spec, "--quiet", env=env).returncode == 0
    assert (tmp_path / "xdg" / "aiobatch" / "aiobatch.db").exists()
    env["AIOBATCH_STATE_DIR"] = str(tmp_path / "explicit")
    assert aiobatch("run", spec, "--quiet", env=env).returncode == 0
    assert (tmp_path / "explicit" / "aiobatch.db").exists()


def test_ctrl_c_stops_the_job_kills_processes_and_exits_130(tmp_path: Path) -> None:
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = write(
        tmp_path / "j.yaml",
        "name: j\ntasks:\n"
        f"  - {{name: t, instances: 1, command: 'echo $$ > {pids}/pid; read _ < {fifo}'}}\n",
    )
    command = [sys.executable, "-m", "aiobatch", "run", str(spec), "--json", "--quiet"]
    run = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path / "s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Opening the FIFO returns once the instance has opened it: its pid is written by then.
    with open(fifo, "w"):
        pid = int((pids / "pid").read_text())
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert not process_alive(pid)
    result = json.loads(out)
    assert result["status"] == "CANCELLED"
    assert result["tasks"]["t"]["instances"][0]["reason"] == "stopped_by_user"


def test_progress_bars_on_a_terminal(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "j.yaml", "name: j\ntasks:\n  - {name: render, instances: 4, command: 'true'}\n"
    )
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "aiobatch",
                "run",
                str(spec),
                "--state-dir",
                str(tmp_path / "s"),
            ],
            stderr=secondary,
            stdout=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the writer side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    screen = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0
    assert "render" in screen and "100%" in screen and "4/4" in screen


def test_refused_spec_writes_nothing(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "j.yaml",
        "name: j\ntasks:\n  - {name: t, image: busybox, compute_env: local}\n",
    )
    done = aiobatch("run", spec, "--state-dir", tmp_path / "s")
    assert done.returncode == 2
    assert "$.tasks[0].image: not supported by compute env 'local'" in done.stderr
    assert not (tmp_path / "s").exists()


def test_numeric_arguments_are_checked_with_their_range(tmp_path: Path) -> None:
    """Refused by the command line itself (no service is asked): exit 2, one error line."""
    socket = tmp_path / "none.sock"
    cases = {
        ("jobs", "--limit", "-5"): "argument --limit: expected an integer from 1 to",
        ("jobs", "--limit", "0"): "argument --limit: expected an integer from 1 to",
        ("jobs", "--limit", str(2**63)): "argument --limit: expected an integer from 1 to",
        ("logs", "j", "t", "\u0663"): "argument index: expected an integer from 0 to",
        ("logs", "j", "t", "9" * 5000): "argument index: expected an integer from 0 to",
        ("stop", "j", "t", "1.5"): "argument index: expected an integer from 0 to",
    }
    for args, message in cases.items():
        done = aiobatch(*args, "--socket", socket)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and len(errors[0]) < 200
