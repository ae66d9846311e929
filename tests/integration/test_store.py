"""The SQLite store on real files: group commit, schema version, loading rows back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aiobatch.events import (
    InstanceStateChanged,
    JobStateChanged,
    JobStopRequested,
    JobSubmitted,
    TaskStateChanged,
)
from aiobatch.schema import SCHEMA, SCHEMA_VERSION
from aiobatch.spec import resolve_spec
from aiobatch.store import Store

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


async def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(sqlite3.DatabaseError, match="schema version"):
        await Store(tmp_path / "db.sqlite").open()


async def test_a_version_1_database_is_migrated_with_its_rows(tmp_path: Path) -> None:
    # Version 1 as it shipped: instances had no `lost` column.
    v1 = (
        SCHEMA.replace("    lost INTEGER NOT NULL DEFAULT 0,\n", "")
        .replace("    interrupted INTEGER NOT NULL DEFAULT 0,\n", "")
        .replace("    stop_reason TEXT,\n", "")
    )
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
