"""Deleting jobs, by request and by age: real runtimes, real SQLite files, real files."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Collection
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import Config, RetentionConfig
from aiobatch.errors import JobNotFinal, JobNotFound
from aiobatch.retention import BATCH, BUSY_SHARE, Deletions
from aiobatch.states import JobState
from tests.helpers import Gates, instance_is, process_alive, until
from tests.integration.service import AIOBATCH, Service

pytestmark = pytest.mark.anyio

TABLES = {"jobs": "id", "tasks": "job_id", "instances": "job_id", "events": "job_id"}
TABLES["job_labels"] = "job_id"


def small_job(name: str = "small", instances: int = 3) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"kind": "test"},
        "tasks": [
            {"name": "a", "instances": instances, "command": "echo out; echo err >&2"},
            {"name": "b", "depends_on": ["a"], "command": "true"},
        ],
    }


async def outcome(call: Awaitable[object]) -> str:
    """ "done", or "not found" if it raised JobNotFound."""
    try:
        await call
    except JobNotFound:
        return "not found"
    return "done"


def paused(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> tuple[anyio.Event, anyio.Event]:
    """``owner.name`` made to stop on its way: the first event is set once it is reached,
    and it goes on once the second is set."""
    reached, go_on = anyio.Event(), anyio.Event()
    original = getattr(owner, name)

    async def pausing(*args: Any) -> Any:
        reached.set()
        await go_on.wait()
        return await original(*args)

    monkeypatch.setattr(owner, name, pausing)
    return reached, go_on


async def cli(*args: str, socket: Path) -> tuple[int, str, str]:
    result = await anyio.run_process([str(AIOBATCH), *args, "--socket", str(socket)], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def rows_of(state_dir: Path, job_id: str) -> dict[str, int]:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        return {
            table: db.execute(
                f"SELECT count(*) FROM {table} WHERE {key} = ?", (job_id,)
            ).fetchone()[0]
            for table, key in TABLES.items()
        }


def files_of(state_dir: Path, job_id: str) -> list[str]:
    """Every path under the state dir that names the job."""
    return [
        os.path.join(folder, name)
        for folder, dirs, files in os.walk(state_dir)
        for name in dirs + files
        if job_id in name or job_id in folder
    ]


async def test_deleting_an_ended_job_leaves_nothing_of_it(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        gone = await rt.submit(small_job("gone"))
        kept = await rt.submit(small_job("kept"))
        await gone.wait_for_success()
        await kept.wait_for_success()
        assert files_of(state_dir, gone.id)  # work dirs, logs, records
        await rt.delete_job(gone.id)
        assert not await rt.exist_job(gone.id)
        with pytest.raises(JobNotFound):
            await rt.get_job(gone.id)
        assert [job.id for job in await rt.list_jobs()] == [kept.id]
        assert [job.id for job in await rt.list_jobs(labels={"kind": "test"})] == [kept.id]
        with pytest.raises(JobNotFound):
            await rt.delete_job(gone.id)  # a second time: it is not there
    assert rows_of(state_dir, gone.id) == dict.fromkeys(TABLES, 0)
    assert files_of(state_dir, gone.id) == []
    kept_rows = rows_of(state_dir, kept.id)
    assert kept_rows["jobs"] == 1 and kept_rows["events"] > 0 and kept_rows["instances"] == 4
    assert files_of(state_dir, kept.id)


async def test_a_deletion_removes_files_only_once_no_work_dir_is_made_ahead(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's work dirs made ahead (dirs_ahead.py) are made in a thread: one made after
    the deletion removed the job's files would stay for good."""
    async with Runtime(state_dir) as rt:
        job = await rt.submit(small_job("gone"))
        await job.wait_for_success()
        settled: list[str] = []
        settle = rt._deletions._dirs_settled

        async def made_last(job_ids: Collection[str]) -> None:
            await settle(job_ids)
            for job_id in job_ids:  # as a making still under way would at its end
                (state_dir / "work" / job_id / "made-last").mkdir()
                settled.append(job_id)

        monkeypatch.setattr(rt._deletions, "_dirs_settled", made_last)
        await rt.delete_job(job.id)
    assert settled == [job.id]
    assert files_of(state_dir, job.id) == []


async def test_a_running_job_is_deleted_only_when_stopped(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {"name": "slow", "tasks": [{"name": "t", "command": gates.command}]}
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            running = await until(events, instance_is("t", "RUNNING"))
        with pytest.raises(JobNotFinal, match="is RUNNING; only a job that has ended"):
            await rt.delete_job(job.id)
        assert await job.get_state() is JobState.RUNNING  # untouched
        pid = getattr(running, "pid", None)
        await rt.delete_job(job.id, stop=True)
        assert not await rt.exist_job(job.id)
        assert pid is None or not process_alive(pid)
    assert rows_of(state_dir, job.id) == dict.fromkeys(TABLES, 0)
    assert files_of(state_dir, job.id) == []


async def test_jobs_are_deleted_by_age_while_others_run(state_dir: Path, tmp_path: Path) -> None:
    config = Config(retention=RetentionConfig(succeeded="1s", failed="1h"))
    gates = Gates(tmp_path / "gates", 1)
    held = {"name": "held", "tasks": [{"name": "t", "command": gates.command}]}
    failing = {"name": "failing", "tasks": [{"name": "t", "command": "exit 3"}]}
    async with Runtime(state_dir, config=config) as rt:
        running = await rt.submit(held)
        failed = await rt.submit(failing)
        done = [await rt.submit(small_job(f"s{i}")) for i in range(5)]
        for job in done:
            await job.wait_for_success()
        await failed.wait_for_completion()
        with anyio.fail_after(15):  # a limit; the loop looks at ages every second
            # Polling the store: a deletion publishes no event to wait on.
            while any([await rt.exist_job(job.id) for job in done]):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert await rt.exist_job(failed.id)  # kept for an hour
        assert await running.get_state() is JobState.RUNNING
        await gates.release(0)
        await running.wait_for_success()
    for job in done:
        assert rows_of(state_dir, job.id) == dict.fromkeys(TABLES, 0)
        assert files_of(state_dir, job.id) == []
    assert rows_of(state_dir, failed.id)["jobs"] == 1


async def test_deleting_by_age_yields_the_time_to_running_instances(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[tuple[float, float]] = []  # each batch's start and end
    delete = Deletions._delete

    async def timed(self: Deletions, job_ids: list[str]) -> None:
        began = time.monotonic()
        await delete(self, job_ids)
        batches.append((began, time.monotonic()))

    monkeypatch.setattr(Deletions, "_delete", timed)
    one = {"name": "one", "tasks": [{"name": "t", "command": "true"}]}
    async with Runtime(state_dir) as rt:  # no retention yet: the jobs pile up
        jobs = [await rt.submit(one) for _ in range(BATCH * 2 + 1)]
        for job in jobs:
            await job.wait_for_success()
    gates = Gates(tmp_path / "gates", 1)
    held = {"name": "held", "tasks": [{"name": "t", "command": gates.command}]}
    config = Config(retention=RetentionConfig(succeeded="1s"))
    async with Runtime(state_dir, config=config) as rt:
        running = await rt.submit(held)  # an instance runs: deletion takes turns with it
        with anyio.fail_after(60):  # a limit; the loop looks at ages every second
            # Polling the store: a deletion publishes no event to wait on.
            while await rt.exist_job(jobs[-1].id):  # noqa: ASYNC110
                await anyio.sleep(0.1)
        await gates.release(0)
        await running.wait_for_success()
    assert len(batches) == 3, batches
    for (began, ended), (after, _) in itertools.pairwise(batches):
        # The pause after a batch is (1 - share) / share times its duration (19 at 5%).
        assert after - ended >= (ended - began) * (1 / BUSY_SHARE - 1) * 0.95, batches


async def test_the_database_shrinks_after_a_large_deletion(state_dir: Path) -> None:
    many = {
        "name": "many",
        "tasks": [{"name": "t", "instances": 400, "command": "true", "env": {"PAD": "x" * 2000}}],
    }
    async with Runtime(state_dir) as rt:
        jobs = [await rt.submit(many) for _ in range(3)]
        for job in jobs:
            await job.wait_for_success()
    full = (state_dir / "aiobatch.db").stat().st_size
    async with Runtime(state_dir) as rt:
        for job in jobs:
            await rt.delete_job(job.id)
    emptied = (state_dir / "aiobatch.db").stat().st_size
    assert emptied < full / 4, (full, emptied)


async def test_files_of_a_job_the_database_does_not_know_are_removed_at_start(
    state_dir: Path,
) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit(small_job())
        await job.wait_for_success()
    # As a crash between a deletion's commit and its file removal leaves them.
    for top in ("work", "logs"):
        (state_dir / top / "20260101000000deadbeef0000" / "t").mkdir(parents=True)
    async with Runtime(state_dir):
        pass
    assert not (state_dir / "work" / "20260101000000deadbeef0000").exists()
    assert not (state_dir / "logs" / "20260101000000deadbeef0000").exists()
    assert files_of(state_dir, job.id)  # a known job keeps its files


async def test_delete_through_the_cli_and_the_api(service: Service, tmp_path: Path) -> None:
    await service.start()
    gates = Gates(tmp_path / "gates", 1)
    async with service.client() as client:
        ended = await client.submit(small_job("ended"))
        await ended.wait_for_success()
        other = await client.submit(small_job("other"))
        await other.wait_for_success()
        held = await client.submit(
            {"name": "held", "tasks": [{"name": "t", "command": gates.command}]}
        )
        code, out, err = await cli("delete", ended.id, socket=service.socket)
        assert (code, out, err) == (0, f"job {ended.id} deleted\n", "")
        assert not await client.exist_job(ended.id)
        # One that has not ended is refused (exit 2, named), the others in the list still go.
        code, out, err = await cli("delete", held.id, other.id, "--json", socket=service.socket)
        assert code == 2 and err == ""
        assert json.loads(out) == [
            {"id": held.id, "deleted": False, "error": f"job {held.id} is RUNNING; only a job "
             "that has ended can be deleted (stop it first, or delete with --stop)"},
            {"id": other.id, "deleted": True},
        ]  # fmt: skip
        assert await held.get_state() is JobState.RUNNING
        with pytest.raises(JobNotFinal) as refused:  # over the socket: 409, the same class
            await client.delete_job(held.id)
        assert refused.value.job_id == held.id and refused.value.status == "RUNNING"
        code, _, err = await cli("delete", "20200101000000000000000000", socket=service.socket)
        assert (code, err) == (2, "aiobatch: no job with id '20200101000000000000000000'\n")
        code, out, _ = await cli("delete", held.id, "--stop", socket=service.socket)
        assert (code, out) == (0, f"job {held.id} deleted\n")
        assert [job.id for job in await client.list_jobs()] == []
    await service.close()
    for job_id in (ended.id, other.id, held.id):
        assert rows_of(service.state_dir, job_id) == dict.fromkeys(TABLES, 0)
        assert files_of(service.state_dir, job_id) == []


async def test_a_read_that_meets_a_deletion_finds_the_job_gone_and_never_brings_it_back(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job known only by its rows is being read when its deletion (by age) begins: the
    read finds it gone (not half of its rows), and no later read finds it again."""
    async with Runtime(state_dir) as rt:
        job = await rt.submit(small_job())
        await job.wait_for_success()
    async with Runtime(state_dir) as rt:  # a new runtime: only the rows know the job
        # Paused after the job's row, before its tasks'.
        reading, go_on = paused(monkeypatch, vars(rt)["_store"], "task_rows")
        found: list[str] = []

        async def read() -> None:
            found.append(await outcome(rt.get_job(job.id)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await reading.wait()
            deletions: Deletions = vars(rt)["_deletions"]
            tg.start_soon(deletions.expire, {"SUCCEEDED": 0.0})
            await anyio.wait_all_tasks_blocked()  # the deletion waits for the read
            go_on.set()
        assert found == ["not found"]
        with pytest.raises(JobNotFound):
            await rt.get_job(job.id)
    assert rows_of(state_dir, job.id) == dict.fromkeys(TABLES, 0)


async def test_a_job_being_retried_is_not_deleted_and_runs_with_its_rows(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion asked for while a retry of the job is under way waits for it, then finds
    the job running again: it is refused, and the job runs with all its rows."""
    spec = {"name": "fails", "tasks": [{"name": "t", "command": "exit 3"}]}
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        retrying, go_on = paused(monkeypatch, vars(rt)["_resources"], "open_for")
        refused: list[str] = []

        async def delete() -> None:
            try:
                await rt.delete_job(job.id)
            except JobNotFinal as exc:
                refused.append(str(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.retry_job, job.id)
            await retrying.wait()
            tg.start_soon(delete)
            await anyio.wait_all_tasks_blocked()  # the deletion waits for the retry
            go_on.set()
        assert refused and "RUNNING" in refused[0]
        await job.wait_for_completion()
        assert await job.get_state() is JobState.FAILED
    rows = rows_of(state_dir, job.id)
    assert rows["jobs"] == 1 and rows["instances"] == 1 and rows["events"] > 0
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        query = "SELECT attempt FROM instances WHERE job_id = ?"
        (attempt,) = db.execute(query, (job.id,)).fetchone()
    assert attempt == 2  # the retry ran it again


async def test_two_deletions_of_one_job_at_once_delete_it_once(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit(small_job())
        await job.wait_for_success()
        results: list[str] = []

        async def delete() -> None:
            results.append(await outcome(rt.delete_job(job.id)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete)
            tg.start_soon(delete)
        deletions: Deletions = vars(rt)["_deletions"]
    assert sorted(results) == ["done", "not found"] and deletions.deleted == 1
