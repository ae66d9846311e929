"""The SQLite store on real files: group commit, schema version, loading rows back, and
rows it cannot hold refused before they reach the writer."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from aiobatch import Runtime
from aiobatch.errors import DatabaseUnusable, SpecError
from aiobatch.events import (
    InstanceStateChanged,
    JobStateChanged,
    JobStopRequested,
    JobSubmitted,
    TaskStateChanged,
)
from aiobatch.schema import SCHEMA, SCHEMA_VERSION
from aiobatch.spec import JobDef, resolve_spec
from aiobatch.store import COMMIT_EVERY_S, Store
from tests.integration.schemas import schema_as_of

pytestmark = pytest.mark.anyio


async def test_many_events_one_transaction_and_rows_coalesced(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    try:
        defn = resolve_spec(
            {"name": "j", "tasks": [{"name": "t", "instances": 500, "command": "x"}]}
        )
        store.add_job(JobSubmitted(job_id="job1", name="j", ts=1.0), 1, defn)
        # The bus brings the runtime's JobSubmitted too: stored once, with its job.
        store.on_event(JobSubmitted(job_id="job1", name="j", ts=1.0))
        for index in range(500):
            for state in ("STAGING", "RUNNING", "UPLOADING", "SUCCEEDED"):
                store.on_event(
                    InstanceStateChanged(
                        job_id="job1", task="t", index=index, attempt=1, state=state,
                        reason=None, ts=2.0, exit_code=0 if state == "SUCCEEDED" else None,
                    )
                )  # fmt: skip
        store.on_event(
            TaskStateChanged(job_id="job1", task="t", state="READY", reason=None, ts=2.0)
        )
        await store.flush()
        assert store.commits == 1
        rows = await store.instance_rows("job1")
        events = await store.events("job1")
    finally:
        await store.close()
    assert len(rows) == 500 and {r.state for r in rows} == {"SUCCEEDED"}
    assert all(r.ended_at == 2.0 and r.exit_code == 0 for r in rows)
    assert len(events) == 1 + 2000 + 1  # submitted, instance changes, task change
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT state FROM tasks").fetchall() == [("READY",)]


async def test_a_trickle_of_state_changes_is_written_in_few_transactions(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    try:
        defn = resolve_spec(
            {"name": "j", "tasks": [{"name": "t", "instances": 300, "command": "x"}]}
        )
        store.add_job(JobSubmitted(job_id="job1", name="j", ts=1.0), 1, defn)
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            await store.flush()
            before, began = store.commits, anyio.current_time()
            for index in range(300):  # one state change per turn of the loop, as dispatch does
                store.on_event(
                    InstanceStateChanged(
                        job_id="job1", task="t", index=index, attempt=1, state="STAGING",
                        reason=None, ts=2.0,
                    )
                )  # fmt: skip
                await anyio.lowlevel.checkpoint()
            await store.flush()
            commits, elapsed = store.commits - before, anyio.current_time() - began
            tg.cancel_scope.cancel()
        rows = await store.instance_rows("job1")
    finally:
        await store.close()
    assert len(rows) == 300
    # One transaction per COMMIT_EVERY_S at most, and the flush's: not one per turn.
    assert commits <= elapsed / COMMIT_EVERY_S + 2, (commits, elapsed)


async def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.close()
    path = anyio.Path(tmp_path / "db.sqlite")
    before = await path.read_bytes()
    with pytest.raises(DatabaseUnusable, match=f"schema version {SCHEMA_VERSION + 1};"):
        await Store(tmp_path / "db.sqlite").open()
    assert await path.read_bytes() == before  # and no -wal or -shm was left beside it
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == ["db.sqlite"]


def unvalidated(defn: JobDef, **changes: Any) -> JobDef:
    """``defn`` changed past the spec's validator: what the store must still refuse."""
    return msgspec.structs.replace(defn, **changes)


ONE_TASK = {"name": "j", "tasks": [{"name": "t", "command": "true"}]}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"priority": 2**70}, "$.priority: is beyond a signed 64-bit integer"),
        ({"priority": -(2**63) - 1}, "$.priority: is beyond a signed 64-bit integer"),
        ({"name": "bad\udc80"}, "$: cannot be stored: "),  # the spec itself: not UTF-8
        ("duplicate", "$.tasks[1].name: 't' is the name of another task"),
    ],
)
async def test_rows_sqlite_cannot_hold_are_refused_by_add_job(
    tmp_path: Path, changes: Any, error: str
) -> None:
    defn = resolve_spec(ONE_TASK)
    if changes == "duplicate":
        bad = unvalidated(defn, tasks=defn.tasks * 2)
    else:
        bad = unvalidated(defn, **changes)
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    try:
        with pytest.raises(SpecError) as refused:
            store.add_job(JobSubmitted(job_id="bad", name="j", ts=1.0), 1, bad)
        assert refused.value.errors[0].startswith(error), refused.value.errors
        store.add_job(JobSubmitted(job_id="good", name="j", ts=1.0), 2, defn)
        await store.flush()  # the writer of a test: what it writes, the runtime's would
        assert [row.id for row in await store.list_job_rows()] == ["good"]
        assert await store.events("bad") == []
    finally:
        await store.close()


async def test_a_job_the_store_cannot_hold_is_refused_and_the_runtime_goes_on(
    tmp_path: Path,
) -> None:
    """Past the validator (bypassed here), a priority beyond 64 bits reached the writer,
    whose OverflowError took the runtime down. Now submit refuses it; nothing is stored."""
    async with Runtime(tmp_path / "state") as rt:
        defn = rt.resolve(ONE_TASK)
        async with rt.subscribe() as events:
            with pytest.raises(SpecError, match=r"\$\.priority: is beyond a signed 64-bit"):
                await rt.submit(unvalidated(defn, priority=2**64))
            with pytest.raises(SpecError, match=r"\$\.tasks\[1\]\.name: 't' is the name"):
                await rt.submit(unvalidated(defn, tasks=defn.tasks * 2))
            job = await rt.submit(defn)  # the runtime goes on
            done = await job.wait_for_completion()
            heard = [event.job_id for event in drain(events) if isinstance(event, JobSubmitted)]
        assert done.status == "SUCCEEDED"
        assert heard == [job.id]
        assert [summary.id for summary in await rt.list_jobs()] == [job.id]
    with sqlite3.connect(tmp_path / "state" / "aiobatch.db") as db:
        assert db.execute("SELECT id FROM jobs").fetchall() == [(job.id,)]
        assert db.execute("SELECT DISTINCT job_id FROM events").fetchall() == [(job.id,)]
    db.close()


def drain(stream: Any) -> list[Any]:
    taken = []
    with contextlib.suppress(anyio.WouldBlock):
        while True:
            taken.append(stream.receive_nowait())
    return taken


async def test_a_version_1_database_is_migrated_with_its_rows(tmp_path: Path) -> None:
    # Version 1 as it shipped: instances had no `lost` column.
    v1 = schema_as_of(1)
    assert v1 != SCHEMA
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(v1 + "INSERT INTO schema_version VALUES (1);")
        db.execute(
            "INSERT INTO instances VALUES ('j', 't', 0, 2, 'PENDING', 'exit_code: 1', 1, "
            "NULL, NULL, NULL, NULL, NULL)"
        )
    store = Store(path)
    await store.open()
    try:
        rows = await store.instance_rows("j")
    finally:
        await store.close()
    assert [(r.attempt, r.state, r.lost, r.interrupted, r.stop_reason) for r in rows] == [
        (2, "PENDING", 0, 0, None)
    ]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


async def test_a_version_2_database_is_migrated_to_labels(tmp_path: Path) -> None:
    """Version 2 as it shipped (no job_labels): its jobs stay, without labels, and jobs
    submitted after the migration are found by their labels through the new index."""
    v2 = schema_as_of(2)
    assert v2 != SCHEMA
    old = resolve_spec(ONE_TASK)
    stored = msgspec.json.encode(old).replace(b',"labels":{}', b"")  # as version 2 wrote it
    assert b"labels" not in stored
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(v2 + "INSERT INTO schema_version VALUES (2);")
        db.execute(
            "INSERT INTO jobs VALUES ('old', 1, 'j', 0, ?, 'SUCCEEDED', NULL, NULL, NULL, "
            "1.0, 1.0, 2.0)",
            (stored,),
        )
    db.close()
    store = Store(path)
    await store.open()
    try:
        labelled = resolve_spec({**ONE_TASK, "labels": {"team": "ml", "run": "nightly"}})
        store.add_job(JobSubmitted(job_id="new", name="j", ts=3.0), 2, labelled)
        await store.flush()
        every = await store.list_job_rows()
        by_team = await store.list_job_rows(labels={"team": "ml"})
        by_both = await store.list_job_rows(labels={"team": "ml", "run": "nightly"})
        by_other = await store.list_job_rows(labels={"team": "ml", "run": "weekly"})
    finally:
        await store.close()
    assert [(row.id, row.defn.labels) for row in every] == [
        ("new", {"team": "ml", "run": "nightly"}),
        ("old", {}),
    ]
    assert [row.id for row in by_team] == [row.id for row in by_both] == ["new"]
    assert by_other == []  # every label given must match
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert SCHEMA_VERSION == 4
        assert sorted(db.execute("SELECT * FROM job_labels")) == [
            ("new", "run", "nightly"),
            ("new", "team", "ml"),
        ]
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT job_id FROM job_labels WHERE key = ? AND value = ?",
            ("team", "ml"),
        ).fetchall()
        assert "job_labels_by_label" in str(plan)
    db.close()


async def test_a_withdrawn_job_leaves_no_labels(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    try:
        defn = resolve_spec({**ONE_TASK, "labels": {"team": "ml"}})
        store.add_job(JobSubmitted(job_id="gone", name="j", ts=1.0), 1, defn)
        store.withdraw_job("gone")
        store.add_job(JobSubmitted(job_id="kept", name="j", ts=1.0), 2, defn)
        await store.flush()
        found = await store.list_job_rows(labels={"team": "ml"})
    finally:
        await store.close()
    assert [row.id for row in found] == ["kept"]
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("SELECT job_id FROM job_labels").fetchall() == [("kept",)]
    db.close()


async def test_a_stop_and_the_end_in_one_batch_leave_no_stop_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    try:
        defn = resolve_spec({"name": "j", "tasks": [{"name": "t", "command": "x"}]})
        store.add_job(JobSubmitted(job_id="job1", name="j", ts=1.0), 1, defn)
        store.on_event(JobStopRequested(job_id="job1", state="CANCELLED", reason="r", ts=2.0))
        store.on_event(JobStateChanged(job_id="job1", state="CANCELLED", reason="r", ts=2.0))
        await store.flush()
        row = await store.job_row("job1")
    finally:
        await store.close()
    # Else a retried job would be wound down again by the next recovery.
    assert row is not None and row.state == "CANCELLED" and row.stopping is None
