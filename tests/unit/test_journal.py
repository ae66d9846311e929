"""A job's attempts journal: the spawner's writer and the runtime's reader over real files.

Two spawners may append to one journal (a new one, and one a crashed runtime left running), a
full disk may tear a line, and the runtime reads while lines are still being written; an
earlier version's record files (one per instance) are still read after an upgrade.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch.attempt import RUNTIME_LOST, AttemptControl, InstanceContext, Outcome
from aiobatch.executors import _launch as launch
from aiobatch.executors import records
from aiobatch.executors.local import LocalExecutor
from aiobatch.executors.spawner import SpawnerGone
from aiobatch.layout import StateLayout
from aiobatch.spec import TaskDef
from tests.helpers import process_alive

USAGE = resource.getrusage(resource.RUSAGE_SELF)


def tag(index: int, attempt: int = 1) -> bytes:
    return b'["job","t","%d","%d"]' % (index, attempt)


def head(index: int, attempt: int = 1) -> bytes:
    return b'\n{"key":%b,"runtime":"r","spawner":[1,null]}\n' % tag(index, attempt)


def read(path: Path) -> dict[tuple[str, str, int, int], records.Record]:
    journal = records.Journal(path)
    journal.refresh()
    return journal.records


def test_two_writers_and_a_torn_line_lose_no_other_attempt(tmp_path: Path) -> None:
    path = str(tmp_path / "logs" / "job" / ".attempts")
    old, new = launch.Journals(), launch.Journals()
    old.write(path, head(0), first=True)
    new.write(path, head(1), first=True)
    old.write(path, launch.started_line(tag(0), 100, 1.0, 2.0))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'\n{"key":["job","t","2","1"],"runt')  # torn: the disk filled mid-line
    os.close(fd)
    new.write(path, launch.started_line(tag(1), 101, 1.5, 2.5))
    old.write(path, launch.exited_line(tag(0), 0, 3.0, 4.0, USAGE))
    new.write(path, head(3), first=True)
    new.write(path, launch.abandoned_line(tag(3), b"[1,null]"))  # it could not be started
    old.close_all()
    new.close_all()

    found = read(Path(path))
    assert set(found) == {("job", "t", 0, 1), ("job", "t", 1, 1)}
    first, second = found[("job", "t", 0, 1)], found[("job", "t", 1, 1)]
    assert (first.pid, first.started, first.spawner) == (100, 1.0, (1, None))
    assert first.exited is not None and (first.exited.exit_code, first.exited.mono) == (0, 3.0)
    assert (second.pid, second.started, second.exited) == (101, 1.5, None)


def test_a_line_taking_back_a_start_takes_back_only_its_own_spawners(tmp_path: Path) -> None:
    """A full disk held back an old spawner's line taking back its start of an attempt; the
    attempt was started since by a new spawner (its runtime's, after a crash), before the old
    one found room for that line. The new start stays on record."""
    path = str(tmp_path / ".attempts")
    old, new = launch.Journals(), launch.Journals()
    new_head = b'\n{"key":%b,"runtime":"r","spawner":[2,7]}\n' % tag(0)
    old.write(path, head(0), first=True)  # spawner [1,null]; its start then failed
    new.write(path, new_head, first=True)
    new.write(path, launch.started_line(tag(0), 100, 1.0, 2.0))
    old.write(path, launch.abandoned_line(tag(0), b"[1,null]"))  # room, at last
    new.write(path, head(1), first=True)
    new.write(path, launch.abandoned_line(tag(1), b"[1,null]"))  # its own: taken back
    new.write(path, head(2), first=True)
    new.write(path, b'\n{"key":%b,"abandoned":true}\n' % tag(2))  # an older spawner's: any
    old.close_all()
    new.close_all()
    found = read(Path(path))
    assert set(found) == {("job", "t", 0, 1)}
    assert (found[("job", "t", 0, 1)].spawner, found[("job", "t", 0, 1)].pid) == ((2, 7), 100)


def test_the_reader_takes_only_whole_lines_and_goes_on_from_there(tmp_path: Path) -> None:
    path = tmp_path / ".attempts"
    journal = records.Journal(path)
    journal.refresh()  # none yet
    assert journal.records == {}
    writer = launch.Journals()
    writer.write(str(path), head(0), first=True)
    line = launch.started_line(tag(0), 100, 1.0, 2.0)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, line[:-5])  # being written: not whole yet
    record = journal.get(("job", "t", 0, 1))
    assert record is not None and record.pid is None
    os.write(fd, line[-5:])
    os.close(fd)
    record = journal.get(("job", "t", 0, 1))
    assert record is not None and record.pid == 100
    writer.write(str(path), launch.exited_line(tag(0), 9 << 8, 3.0, 4.0, USAGE))
    record = journal.get(("job", "t", 0, 1))
    assert record is not None and record.exited is not None and record.exited.exit_code == 9
    assert journal.offset == path.stat().st_size


def test_an_earlier_versions_record_files_are_found_too(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "job" / "t").mkdir(parents=True)
    legacy = logs / "job" / "t" / "0.run"
    legacy.write_bytes(
        b'{"key":["job","t","0","1"],"runtime":"r","spawner":[1,null]}\n'
        b'{"pid":100,"mono":1.0,"wall":2.0}\n'
        b'{"status":256,"mono":3.0,"wall":4.0,"utime":0.0,"stime":0.0,"maxrss_kib":0}\n'
    )
    writer = launch.Journals()
    writer.write(str(logs / "job" / ".attempts"), head(1), first=True)
    found = dict(records.records_of(logs, ["job"]))
    assert set(found) == {str(legacy), str(logs / "job" / ".attempts")}
    record = found[str(legacy)]
    assert record.key == ("job", "t", 0, 1) and record.exited is not None
    assert record.exited.exit_code == 1


@pytest.mark.anyio
@pytest.mark.parametrize("legacy", [False, True])
async def test_an_attempt_that_ended_unwatched_is_adopted_with_its_exit(
    tmp_path: Path, legacy: bool
) -> None:
    """After a restart, an attempt whose end the journal (or an earlier version's record
    file) holds is settled with that end, its duration from the spawner's clock."""
    layout = StateLayout(tmp_path)
    executor = LocalExecutor(layout)
    executor.runtime_id = "r"
    journal = layout.journal_path("job")
    lines = [
        head(0, 2),
        launch.started_line(tag(0, 2), 100, 1.0, 2.0),
        launch.exited_line(tag(0, 2), 3 << 8, 4.5, 5.0, USAGE),
    ]
    if legacy:
        path = layout.root / "logs" / "job" / "t" / "0.run"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"".join(line.split(b"\n")[1] + b"\n" for line in lines))
    else:
        writer = launch.Journals()
        for number, line in enumerate(lines):
            writer.write(str(journal), line, first=number == 0)
        writer.close_all()
    (found,) = await executor.find_attempts(["job"])
    assert (found.job_id, found.task, found.index, found.attempt) == ("job", "t", 0, 2)
    ctx = InstanceContext(
        job_id="job",
        job_name="job",
        task=TaskDef(name="t", command="true", timeout_s=60.0),
        index=0,
        attempt=2,
        work_dir=tmp_path / "work",
        stdout_path=tmp_path / "0.stdout",
        stderr_path=tmp_path / "0.stderr",
        env={},
        kill_grace_s=1.0,
        control=AttemptControl(),
    )
    with anyio.fail_after(10):
        outcome = await executor.adopt(ctx, found)
    assert (outcome.exit_code, outcome.reason, outcome.duration_s) == (3, None, 3.5)
    assert executor._journals == {}  # read while adopting, let go after


async def run_one_attempt(tmp_path: Path, spawner: object) -> Outcome:
    """Attempt 1 of ``job``'s task ``t``, index 0, run by a local executor whose only
    spawner is ``spawner`` (a stand-in that dies on its way)."""
    executor = LocalExecutor(StateLayout(tmp_path))
    executor.runtime_id = "r"
    executor._spawners = [spawner]  # type: ignore[list-item]
    key_env = {
        "AIOBATCH_JOB_ID": "job",
        "AIOBATCH_TASK_NAME": "t",
        "AIOBATCH_INSTANCE_INDEX": "0",
        "AIOBATCH_ATTEMPT": "1",
    }
    ctx = InstanceContext(
        job_id="job",
        job_name="job",
        task=TaskDef(name="t", command="true"),
        index=0,
        attempt=1,
        work_dir=tmp_path / "work",
        stdout_path=tmp_path / "0.stdout",
        stderr_path=tmp_path / "0.stderr",
        env={"PATH": os.environ["PATH"], **key_env},
        kill_grace_s=1.0,
        control=AttemptControl(),
    )
    return await executor.run(ctx, lambda pid: None)


class DiesAfterItsKeyLine:
    """A spawner that records a start and makes it, then dies before its pid line and its
    answer: the runtime hears nothing but that it is gone."""

    gone = False
    starting = 0

    def __init__(self) -> None:
        self.started: subprocess.Popen[bytes] | None = None

    async def spawn(self, *, journal: Path, env: dict[str, str], **_: Any) -> None:
        writer = launch.Journals()
        writer.write(str(journal), head(0), first=True)
        writer.close_all()
        self.started = subprocess.Popen(  # noqa: ASYNC220 - a fork, as the spawner makes
            ["sleep", "600"], env=env, start_new_session=True
        )
        raise SpawnerGone


@pytest.mark.anyio
async def test_a_start_whose_spawner_died_before_its_pid_line_is_killed_by_its_key(
    tmp_path: Path,
) -> None:
    """The journal has the start's key line and no pid: the process may run, so it is
    found by the attempt its environment names and killed; the attempt is lost."""
    spawner = DiesAfterItsKeyLine()
    try:
        with anyio.fail_after(30):
            outcome = await run_one_attempt(tmp_path, spawner)
        assert outcome.reason == RUNTIME_LOST
        assert spawner.started is not None
        assert spawner.started.wait(timeout=10) == -signal.SIGKILL
    finally:
        if spawner.started is not None and spawner.started.poll() is None:
            spawner.started.kill()
            spawner.started.wait()


class DiesAfterItsPidLine:
    """A spawner that records a start, makes it and writes its pid line, then dies before
    its answer. What it started has left a daemon in a session of its own."""

    gone = False
    starting = 0

    def __init__(self, daemon: Path) -> None:
        self.daemon = daemon  # a FIFO: the daemon's pid, once it leads its own session
        self.daemon_pid: int | None = None
        self.started: subprocess.Popen[bytes] | None = None

    async def spawn(self, *, journal: Path, env: dict[str, str], **_: Any) -> None:
        command = f"setsid sh -c 'echo $$ > \"{self.daemon}\"; exec sleep 600' & sleep 600"
        self.started = subprocess.Popen(  # noqa: ASYNC220 - a fork, as the spawner makes
            ["sh", "-c", command], env=env, start_new_session=True
        )
        writer = launch.Journals()
        writer.write(str(journal), head(0), first=True)
        writer.write(str(journal), launch.started_line(tag(0), self.started.pid, 1.0, 2.0))
        writer.close_all()
        read = await anyio.to_thread.run_sync(self.daemon.read_text, abandon_on_cancel=True)
        self.daemon_pid = int(read)
        raise SpawnerGone


@pytest.mark.anyio
async def test_a_start_whose_spawner_died_after_its_pid_line_loses_what_it_left_too(
    tmp_path: Path,
) -> None:
    """The journal names the start's pid: its process group is killed, and so is what it
    left in a session of its own, found by its environment (no spawner reaps it now)."""
    daemon = tmp_path / "daemon"
    os.mkfifo(daemon)
    spawner = DiesAfterItsPidLine(daemon)
    try:
        with anyio.fail_after(30):
            outcome = await run_one_attempt(tmp_path, spawner)
        assert outcome.reason == RUNTIME_LOST
        assert spawner.started is not None
        assert spawner.started.wait(timeout=10) == -signal.SIGKILL
        assert spawner.daemon_pid is not None and not process_alive(spawner.daemon_pid)
    finally:
        if spawner.started is not None and spawner.started.poll() is None:
            spawner.started.kill()
            spawner.started.wait()
        if spawner.daemon_pid is not None and process_alive(spawner.daemon_pid):
            os.kill(spawner.daemon_pid, signal.SIGKILL)


@pytest.mark.anyio
async def test_after_a_restart_the_records_and_proc_are_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding a job's attempts reads its journal and /proc once per attempt: in a worker
    thread, not in the event loop's."""
    layout = StateLayout(tmp_path)
    executor = LocalExecutor(layout)
    executor.runtime_id = "r"
    writer = launch.Journals()
    for index in range(3):
        writer.write(str(layout.journal_path("job")), head(index), first=True)
        writer.write(str(layout.journal_path("job")), launch.started_line(tag(index), 1, 1.0, 2.0))
    writer.close_all()
    readers: set[int] = set()
    adoptable = records.adoptable

    def noting_the_thread(record: records.Record) -> bool:
        readers.add(threading.get_ident())
        return adoptable(record)

    monkeypatch.setattr(records, "adoptable", noting_the_thread)
    found = await executor.find_attempts(["job"])
    assert {(f.index, f.attempt) for f in found} == {(0, 1), (1, 1), (2, 1)}
    assert readers and threading.get_ident() not in readers


@pytest.mark.anyio
async def test_after_a_restart_a_pid_line_still_to_come_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal has a start's key line and no pid yet, and its spawner lives (it was
    making the start when its runtime died, or a full disk holds the line): the pid line
    is waited for, and the process adopted, not killed and run again."""
    layout = StateLayout(tmp_path)
    executor = LocalExecutor(layout)
    executor.runtime_id = "r"
    journal = layout.journal_path("job")
    key_env = {
        "AIOBATCH_JOB_ID": "job",
        "AIOBATCH_TASK_NAME": "t",
        "AIOBATCH_INSTANCE_INDEX": "0",
        "AIOBATCH_ATTEMPT": "1",
        records.RUNTIME_VAR: "r",
    }
    # The attempt's process, as the spawner started it; a fork, once.
    process = subprocess.Popen(["sleep", "600"], env={**os.environ, **key_env})  # noqa: ASYNC220
    living = b'\n{"key":%b,"runtime":"r","spawner":%b}\n' % (tag(0), launch.identity(os.getpid()))
    writer = launch.Journals()
    writer.write(str(journal), living, first=True)
    records_of = records.records_of

    def then_the_pid_line(*args: Any) -> Any:
        found = records_of(*args)
        writer.write(str(journal), launch.started_line(tag(0), process.pid, 1.0, 2.0))
        return found

    monkeypatch.setattr(records, "records_of", then_the_pid_line)
    try:
        with anyio.fail_after(10):
            found = await executor.find_attempts(["job"])
        assert [(f.index, f.attempt) for f in found] == [(0, 1)]
        assert process.poll() is None  # adopted: not swept
    finally:
        writer.close_all()
        process.kill()
        process.wait()


def test_a_journal_moved_away_is_made_anew_and_later_lines_make_nothing(tmp_path: Path) -> None:
    job_logs = tmp_path / "logs" / "job"
    path = str(job_logs / ".attempts")
    writer = launch.Journals()
    writer.write(path, head(0), first=True)
    job_logs.rename(tmp_path / "moved")  # still linked, elsewhere: not where the runtime looks
    writer.write(path, head(1), first=True)
    assert set(read(Path(path))) == {("job", "t", 1, 1)}
    shutil.rmtree(job_logs)
    writer.close_all()
    with pytest.raises(FileNotFoundError):  # a pid or exit line of a job whose logs went
        writer.write(path, launch.started_line(tag(1), 100, 1.0, 2.0))
    assert not job_logs.exists()


@pytest.mark.parametrize("new", [[7], list(range(10, 16))], ids=["shorter", "longer"])
def test_the_reader_starts_over_on_a_new_file(tmp_path: Path, new: list[int]) -> None:
    # Shorter or longer than what was read; ext4 often gives the new file the inode just
    # freed, and its first line tells them apart.
    path = tmp_path / ".attempts"
    writer = launch.Journals()
    for index in range(3):
        writer.write(str(path), head(index), first=True)
    journal = records.Journal(path)
    assert journal.get(("job", "t", 2, 1)) is not None
    path.unlink()
    writer.close_all()
    for index in new:
        writer.write(str(path), head(index, 2), first=True)
    assert journal.get(("job", "t", new[-1], 2)) is not None
    assert set(journal.records) == {("job", "t", index, 2) for index in new}


def test_a_journal_read_in_small_chunks_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".attempts"
    writer = launch.Journals()
    for index in range(50):
        writer.write(str(path), head(index), first=True)
        writer.write(str(path), launch.started_line(tag(index), 100 + index, 1.0, 2.0))
    whole = read(path)
    monkeypatch.setattr(records, "READ_CHUNK", 37)  # lines split across reads, every way
    assert read(path) == whole and len(whole) == 50
    assert all(record.pid == 100 + key[2] for key, record in whole.items())


@pytest.mark.anyio
async def test_after_a_restart_a_start_no_instance_can_claim_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start with no pid line whose spawner lives, of an attempt run again since: its
    line may never come (its spawner could not take the start back), and waiting for it
    would cost this restart, and every later one, the whole wait. The journal is read once."""
    layout = StateLayout(tmp_path)
    executor = LocalExecutor(layout)
    executor.runtime_id = "r"
    journal = layout.journal_path("job")
    living = b'\n{"key":%b,"runtime":"r","spawner":%b}\n' % (tag(0), launch.identity(os.getpid()))
    writer = launch.Journals()
    writer.write(str(journal), living, first=True)
    writer.close_all()
    reads: list[object] = []
    records_of = records.records_of

    def counted(*args: Any) -> Any:
        reads.append(args)
        return records_of(*args)

    monkeypatch.setattr(records, "records_of", counted)
    with anyio.fail_after(10):
        found = await executor.find_attempts(["job"], lambda key: key != ("job", "t", 0, 1))
    assert [(f.index, f.attempt) for f in found] == [(0, 1)]  # for recovery to match, or not
    assert len(reads) == 1
