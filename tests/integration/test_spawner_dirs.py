"""The spawner's own file-system and process bookkeeping: it keeps a job's journal open and
remembers its dir once made, and makes both anew when they went (an attempt must be recorded
where the next runtime looks before every start, whatever happened in between); it reads the
whole list of its children. A real spawner
process, real starts, real children."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiobatch.executors import records
from aiobatch.executors.spawner import Spawner, SpawnFailed
from tests.helpers import run_beside_the_spawner, spawn_attempt


@pytest.mark.anyio
async def test_a_journal_removed_between_two_starts_is_made_again(tmp_path: Path) -> None:
    logs, work = tmp_path / "logs" / "t", tmp_path / "work" / "t"

    async def start(spawner: Spawner, index: int) -> int:
        started = await spawn_attempt(spawner, ["true"], index, work=work, logs=logs)
        exited = await spawner.wait(started)
        assert exited.exit_code == 0
        return started.pid

    spawner = Spawner()
    await spawner.open()
    try:
        await start(spawner, 0)
        assert (logs / ".attempts").exists()
        shutil.rmtree(logs)  # the journal too, while the spawner holds it open
        pid = await start(spawner, 1)
        journal = records.Journal(logs / ".attempts")
        journal.refresh()
        (record,) = journal.records.values()
        assert record.key == ("job", "t", 1, 1) and record.pid == pid
        assert record.exited is not None and record.exited.exit_code == 0
    finally:
        await spawner.aclose()


# The spawner's own view of its children, with more of them than one read of the kernel's
# list returns (about a page: some 800 pids): every one must be seen to be killed.
CHILDREN = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
import _processes
started = [subprocess.Popen(["sleep", "60"]) for _ in range(1200)]
try:
    seen = set(_processes.children())
    assert seen == {p.pid for p in started}, (len(seen), len(started))
finally:
    for p in started:
        p.kill()
    for p in started:
        p.wait()
"""


def test_the_spawner_sees_every_child_however_many() -> None:
    run_beside_the_spawner(CHILDREN, timeout_s=120)


@pytest.mark.anyio
async def test_a_start_that_fails_leaves_no_attempt_in_the_journal(tmp_path: Path) -> None:
    logs, work = tmp_path / "logs" / "t", tmp_path / "work" / "t"
    spawner = Spawner()
    await spawner.open()
    try:
        with pytest.raises(SpawnFailed) as failed:
            await spawn_attempt(spawner, [str(tmp_path / "missing")], 0, work=work, logs=logs)
    finally:
        await spawner.aclose()
    assert failed.value.exec_failed
    lines = (logs / ".attempts").read_text().split()
    assert len(lines) == 2 and '"abandoned":true' in lines[1]  # written first, then taken back
    journal = records.Journal(logs / ".attempts")
    journal.refresh()
    assert journal.records == {}


@pytest.mark.anyio
async def test_a_start_whose_work_dir_cannot_be_made_leaves_no_line(tmp_path: Path) -> None:
    """What needs room comes before the key line: a start that fails there (a full disk)
    has nothing to take back, as taking it back could find no room either."""
    logs, work = tmp_path / "logs" / "t", tmp_path / "work"
    work.write_text("a file where the work dirs would be")
    spawner = Spawner()
    await spawner.open()
    try:
        with pytest.raises(SpawnFailed):
            await spawn_attempt(spawner, ["true"], 0, work=work, logs=logs)
    finally:
        await spawner.aclose()
    assert not (logs / ".attempts").exists()


# What the scripts below begin with: the spawner's modules, a spawner on one end of a socket
# (``ours`` is the runtime's), and ``ask``, which sends it the start of attempt 1 of instance
# ``index`` of task t of job "job", as the runtime would.
BESIDE_THE_SPAWNER = """
import errno, marshal, os, socket, sys, threading
sys.path.insert(0, sys.argv[1])
import _launch, _spawner
work, logs = sys.argv[2], sys.argv[3]
write = _launch.Journals.write  # the unpatched one
ours, theirs = socket.socketpair()
spawner = _spawner.Spawner(theirs.detach())
def ask(request_id, index, argv):
    env = {"PATH": os.environ["PATH"], "AIOBATCH_JOB_ID": "job", "AIOBATCH_TASK_NAME": "t",
           "AIOBATCH_INSTANCE_INDEX": str(index), "AIOBATCH_ATTEMPT": "1"}
    tag = b'["job","t","%d","1"]' % index
    head = b'\\n{"key":%b,"runtime":"r","spawner":%b}\\n' % (tag, _launch.identity(os.getpid()))
    request = {"op": "spawn", "id": request_id, "argv": argv, "cwd": work, "env": env,
               "stdout": logs + f"/{index}.stdout", "stderr": logs + f"/{index}.stderr",
               "make_logs": False, "journal": logs + "/.attempts", "head": head, "tag": tag,
               "user": None}
    body = marshal.dumps(request)
    ours.sendall(len(body).to_bytes(4, "big") + body)
"""


# A spawner whose disk fills while it writes an attempt's key line: all of it is written but
# the last newline, which the next attempt's first line supplies. Then its runtime is gone.
TORN_KEY_LINE = (
    BESIDE_THE_SPAWNER
    + """
def short(self, path, line, *, first=False):
    if first and b'"0","1"' in line:
        write(self, path, line[:-1], first=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(self, path, line, first=first)
_launch.Journals.write = short
for index in (0, 1):
    ask(index, index, ["sh", "-c", f"echo > ran-{index}"])
ours.close()
spawner.run()
"""
)


def test_a_key_line_cut_short_by_a_full_disk_is_taken_back(tmp_path: Path) -> None:
    work, logs = tmp_path / "work", tmp_path / "logs"
    run_beside_the_spawner(TORN_KEY_LINE, work, logs)
    assert not (work / "ran-0").exists() and (work / "ran-1").exists()
    assert '["job","t","0","1"],"runtime"' in (logs / ".attempts").read_text()
    journal = records.Journal(logs / ".attempts")
    journal.refresh()
    # The first taken back: the next runtime finds no attempt of it to adopt.
    assert set(journal.records) == {("job", "t", 1, 1)}


# Lines a full disk refuses wait in order: here the disk refuses a start's key line and then
# the line that takes it back; the start is asked for again (the runtime's retry, same
# attempt) once there is room. The line taking back the first try must land before the
# second try's key line, or it would take that one back.
TRIED_AGAIN_AFTER_A_FULL_DISK = (
    BESIDE_THE_SPAWNER
    + """
refusals = [2]
def full_at_first(self, path, line, *, first=False):
    if refusals[0]:
        refusals[0] -= 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(self, path, line, first=first)
_launch.Journals.write = full_at_first
for request_id in (1, 2):
    ask(request_id, 0, ["sh", "-c", "echo >> ran"])
ours.close()
spawner.run()
"""
)


def test_a_start_tried_again_after_a_full_disk_is_not_taken_back(tmp_path: Path) -> None:
    work, logs = tmp_path / "work", tmp_path / "logs"
    run_beside_the_spawner(TRIED_AGAIN_AFTER_A_FULL_DISK, work, logs)
    assert (work / "ran").read_text() == "\n"  # the second try ran, once
    journal = records.Journal(logs / ".attempts")
    journal.refresh()
    record = journal.records[("job", "t", 0, 1)]
    assert record.pid is not None and record.exited is not None and record.exited.exit_code == 0


# A spawner whose runtime went long ago still waits for room for the end of an instance that
# ran all that time: the wait counts from its last instance's end, not from the runtime's.
ORPHANED_LONG_AGO = (
    BESIDE_THE_SPAWNER
    + """
_spawner.ORPHANED_WRITES_S, _spawner.PAUSE_RETRY_S = 2.0, 0.1
refusals = [2]
def full_for_the_end(self, path, line, *, first=False):
    if b'"status"' in line and refusals[0]:
        refusals[0] -= 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(self, path, line, first=first)
_launch.Journals.write = full_for_the_end
ask(1, 0, ["sleep", "4"])
ours.close()  # the runtime goes at once; the instance runs twice the wait
spawner.run()
"""
)


# An instance ends and its end finds no room; its runtime stays up past the wait, then goes:
# the spawner, left alone, still waits for room (the wait counts from its runtime's end).
RUNTIME_GONE_AFTER_THE_END = (
    BESIDE_THE_SPAWNER
    + """
_spawner.ORPHANED_WRITES_S, _spawner.PAUSE_RETRY_S = 1.0, 0.1
full = threading.Event()
full.set()
def full_for_the_end(self, path, line, *, first=False):
    if b'"status"' in line and full.is_set():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(self, path, line, first=first)
_launch.Journals.write = full_for_the_end
ask(1, 0, ["true"])
def runtime_goes():  # twice the wait after the end; room comes back soon after
    ours.close()
    threading.Timer(0.3, full.clear).start()
threading.Timer(2.0, runtime_goes).start()
spawner.run()
"""
)


@pytest.mark.parametrize(
    "script",
    [ORPHANED_LONG_AGO, RUNTIME_GONE_AFTER_THE_END],
    ids=["runtime gone long before the end", "runtime gone long after the end"],
)
def test_an_orphaned_spawner_writes_an_end_refused_room_once_there_is_some(
    tmp_path: Path, script: str
) -> None:
    work, logs = tmp_path / "work", tmp_path / "logs"
    run_beside_the_spawner(script, work, logs)
    journal = records.Journal(logs / ".attempts")
    journal.refresh()
    record = journal.records[("job", "t", 0, 1)]
    assert record.exited is not None and record.exited.exit_code == 0


@pytest.mark.anyio
async def test_a_request_larger_than_one_read_reaches_the_spawner_whole(tmp_path: Path) -> None:
    # The spawner reads its socket 64 KiB at a time: a request of 300 KiB (its environment:
    # three variables of 100 KB, each under the system's limit for one) arrives over several
    # reads and is put back together.
    big = {f"BIG{i}": str(i) * 100_000 for i in range(3)}
    spawner = Spawner()
    await spawner.open()
    try:
        started = await spawner.spawn(
            argv=["sh", "-c", 'printf %s "${#BIG0} ${#BIG1} ${#BIG2}" > "$OUT"'],
            cwd=tmp_path / "work",
            env={"PATH": "/usr/bin:/bin", **big, "OUT": str(tmp_path / "length")},
            stdout=tmp_path / "out",
            stderr=tmp_path / "err",
            journal=tmp_path / ".attempts",
            runtime_id="r",
        )
        assert (await spawner.wait(started)).exit_code == 0
    finally:
        await spawner.aclose()
    assert (tmp_path / "length").read_text() == "100000 100000 100000"


# Runs `aiobatch run ARGS...` with a soft open files limit of 64.
LOW_FILES_LIMIT = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
os.execv(sys.executable, [sys.executable, "-m", "aiobatch", "run", *sys.argv[1:]])
"""


def test_a_low_open_files_limit_does_not_fail_wide_jobs(tmp_path: Path) -> None:
    # 100 instances at once hold 200 pipes in the spawners: more than a soft limit of 64,
    # which each spawner raises to the hard one for itself and its programs.
    spec = tmp_path / "wide.json"
    spec.write_text(
        '{"name": "wide", "tasks": [{"name": "t", "instances": 100,'
        ' "command": "ulimit -n > \\"$AIOBATCH_INSTANCE_INDEX\\"; sleep 1"}]}'
    )
    config = tmp_path / "config.toml"
    config.write_text("[compute_envs.local]\nslots = 100\n")
    state = tmp_path / "state"
    run = subprocess.run(
        [sys.executable, "-c", LOW_FILES_LIMIT, str(spec), "--state-dir", str(state),
         "--config", str(config), "--quiet", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, (run.stderr + run.stdout)[-2000:]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = {
        path.read_text().strip() for path in (state / "work").glob("*/t/*/[0-9]*") if path.is_file()
    }
    assert limits == {"unlimited" if hard == resource.RLIM_INFINITY else str(hard)}
