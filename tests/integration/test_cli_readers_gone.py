"""The command when nobody reads what it writes (a pipe into ``head`` that closed, a journal
that went away): the job's outcome does not change, and no traceback is printed. Real
command processes whose stdout or stderr is a pipe with its reading end closed from the
start, so every write to it fails with EPIPE."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import structlog

from aiobatch.logging import configure_logging
from aiobatch.lossy_stream import lossy

SPEC = {
    "name": "piped",
    "tasks": [
        {"name": "a", "command": ["sleep", "0.2"], "instances": 3},
        {"name": "b", "command": ["true"], "depends_on": ["a"]},
    ],
}


@contextmanager
def unread_pipe() -> Iterator[int]:
    """The writing end of a pipe nobody reads: its reading end is closed before any write."""
    read, write = os.pipe()
    os.close(read)
    try:
        yield write
    finally:
        os.close(write)


def run_command(
    args: list[str], *, stdout: int = subprocess.PIPE, stderr: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aiobatch", *args]
    return subprocess.run(command, stdout=stdout, stderr=stderr, text=True, timeout=60)


def job_states(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        return [state for (state,) in db.execute("SELECT state FROM jobs")]


@pytest.mark.parametrize("ui", [False, True], ids=["progress", "job page line"])
def test_a_run_whose_stderr_nobody_reads_still_runs_its_job_to_the_end(
    tmp_path: Path, ui: bool
) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(SPEC))
    args = ["run", str(spec), "--state-dir", str(tmp_path / "s"), *(["--ui"] if ui else [])]
    with unread_pipe() as stderr:
        done = run_command(args, stderr=stderr)
    assert done.returncode == 0
    assert "SUCCEEDED" in done.stdout.splitlines()[0]
    assert job_states(tmp_path / "s") == ["SUCCEEDED"]


def test_a_result_nobody_reads_ends_with_exit_120_and_no_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(SPEC))
    args = ["run", str(spec), "--state-dir", str(tmp_path / "s"), "--json", "--quiet"]
    with unread_pipe() as stdout:
        done = run_command(args, stdout=stdout)
    assert done.returncode == 120  # as Python itself says stdout could not be written
    assert done.stderr == ""
    assert job_states(tmp_path / "s") == ["SUCCEEDED"]

    with unread_pipe() as stdout:
        schema = run_command(["schema"], stdout=stdout)
    assert (schema.returncode, schema.stderr) == (120, "")


def test_an_unread_result_of_a_failed_job_is_120_too(tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"name": "f", "tasks": [{"name": "t", "command": "exit 3"}]}))
    args = ["run", str(spec), "--state-dir", str(tmp_path / "s"), "--json", "--quiet"]
    with unread_pipe() as stdout:
        done = run_command(args, stdout=stdout)
    assert (done.returncode, done.stderr) == (120, "")
    assert job_states(tmp_path / "s") == ["FAILED"]


def test_a_lossy_stream_is_its_stream_for_everything_but_failures() -> None:
    raw = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stream = lossy(raw)
    assert stream.encoding == "utf-8"  # tqdm draws Unicode bars by it
    assert lossy(stream) is stream
    stream.write("kept\n")
    stream.flush()
    assert raw.buffer.getvalue() == b"kept\n"
    raw.close()
    assert stream.write("dropped\n") == len("dropped\n")
    stream.flush()


def test_a_log_line_that_cannot_be_written_is_dropped_not_raised() -> None:
    class Gone:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

    try:
        configure_logging("json", "info", Gone())  # type: ignore[arg-type]
        structlog.get_logger("test").error("nobody_reads_this", job_id="j")
    finally:
        configure_logging("json", "warning")
