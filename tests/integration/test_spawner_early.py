"""``aiobatch run`` starts its spawner before it imports the rest of aiobatch: the first
spawner a runtime opens is that one, if it still runs; unused, it ends with the command."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiobatch.executors import spawner_process
from aiobatch.executors.spawner import Spawner
from tests.helpers import spawn_attempt

pytestmark = pytest.mark.anyio


@pytest.fixture
def early() -> Iterator[subprocess.Popen[bytes]]:
    spawner_process.start_early()
    assert spawner_process._early is not None
    process, sock = spawner_process._early
    try:
        yield process
    finally:
        if spawner_process._early is not None:  # not taken: closed, it ends
            spawner_process._early = None
            sock.close()
        process.wait(timeout=10)


async def test_the_first_spawner_opened_is_the_early_one(
    tmp_path: Path, early: subprocess.Popen[bytes]
) -> None:
    first, second = Spawner(), Spawner()
    await first.open()
    await second.open()
    try:
        assert first.pid == early.pid and second.pid != early.pid
        for index, spawner in enumerate((first, second)):
            started = await spawn_attempt(
                spawner, ["true"], index, work=tmp_path / "work", logs=tmp_path / "logs"
            )
            with anyio.fail_after(10):
                assert (await spawner.wait(started)).exit_code == 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_early_spawner_that_died_is_replaced(
    tmp_path: Path, early: subprocess.Popen[bytes]
) -> None:
    early.send_signal(signal.SIGKILL)
    early.wait(timeout=10)
    spawner = Spawner()
    await spawner.open()
    try:
        assert spawner.pid != early.pid
        started = await spawn_attempt(
            spawner, ["true"], 0, work=tmp_path / "work", logs=tmp_path / "logs"
        )
        with anyio.fail_after(10):
            assert (await spawner.wait(started)).exit_code == 0
    finally:
        await spawner.aclose()


# Runs `aiobatch run ARGS...` as a child subreaper: what the command leaves behind becomes
# ours. Prints the command's exit code and how many such processes ended (each waited for;
# one that never ends hangs this until the alarm kills it).
AS_SUBREAPER = """
import ctypes, os, signal, subprocess, sys
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    raise OSError(ctypes.get_errno(), "prctl")
signal.alarm(20)
command = [sys.executable, "-m", "aiobatch", "run", *sys.argv[1:]]
code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
left = 0
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    left += 1
print(code, left)
"""


def test_an_unused_early_spawner_ends_with_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "bad", "tasks": [{"name": "t", "command": "true", "instances": 0}]}')
    run = subprocess.run(
        [sys.executable, "-c", AS_SUBREAPER, str(bad), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    # The command refused the spec (exit 2) and left one process, its spawner, which ended.
    assert run.stdout.split() == ["2", "1"]
