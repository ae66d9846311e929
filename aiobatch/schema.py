"""The SQLite schema, its migrations, and the rows read back from it."""

from __future__ import annotations

from typing import Any

import msgspec

from aiobatch.spec import JobDef
from aiobatch.states import INSTANCE_TERMINAL, JOB_TERMINAL, InstanceState, JobState

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    stopping_state TEXT,
    stopping_reason TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL
);
CREATE INDEX jobs_by_state ON jobs (state);
CREATE INDEX jobs_by_end ON jobs (state, ended_at);
CREATE TABLE tasks (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;
CREATE TABLE instances (
    job_id TEXT NOT NULL,
    task TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    exit_code INTEGER,
    signal INTEGER,
    pid INTEGER,
    started_at REAL,
    ended_at REAL,
    duration_s REAL,
    lost INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    not_before REAL,
    cpu_user_s REAL,
    cpu_system_s REAL,
    max_rss_bytes INTEGER,
    PRIMARY KEY (job_id, task, idx)
) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX events_by_job ON events (job_id, seq);
"""
# A job's labels, one row each, found by (key, value) when jobs are listed by label.
LABELS_SCHEMA = """
CREATE TABLE job_labels (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
) WITHOUT ROWID;
CREATE INDEX job_labels_by_label ON job_labels (key, value);
"""
SCHEMA += LABELS_SCHEMA
# Webhook deliveries (notify_delivery.py), kept apart from the store's rows: a job's events
# up to notify_jobs.seq have been delivered to (or given up by) every target; a target still
# working through events after that has its place (and the tries of its next one) in
# notify_lanes. Both are read and written through a connection of their own.
NOTIFY_SCHEMA = """
CREATE TABLE notify_jobs (
    job_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE notify_lanes (
    job_id TEXT NOT NULL,
    target TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    PRIMARY KEY (job_id, target)
) WITHOUT ROWID;
"""
SCHEMA += NOTIFY_SCHEMA
# A database made before notifications: its jobs' history is never delivered.
NOTIFY_MIGRATION = (
    NOTIFY_SCHEMA + "INSERT INTO notify_jobs SELECT id, "
    "COALESCE((SELECT MAX(seq) FROM events WHERE events.job_id = jobs.id), 0) FROM jobs;"
)

# Version N's entry takes a database from version N - 1 to N.
MIGRATIONS = {
    2: "ALTER TABLE instances ADD COLUMN lost INTEGER NOT NULL DEFAULT 0; "
    "ALTER TABLE instances ADD COLUMN interrupted INTEGER NOT NULL DEFAULT 0; "
    "ALTER TABLE instances ADD COLUMN stop_reason TEXT;",
    # Labels were added in version 3: a job stored before has none.
    3: LABELS_SCHEMA,
    # Version 4: when a waiting instance may start (a retry's backoff); ended jobs found by
    # age (retention); webhook deliveries.
    4: "ALTER TABLE instances ADD COLUMN not_before REAL; "
    "ALTER TABLE instances ADD COLUMN cpu_user_s REAL; "
    "ALTER TABLE instances ADD COLUMN cpu_system_s REAL; "
    "ALTER TABLE instances ADD COLUMN max_rss_bytes INTEGER; "
    "CREATE INDEX jobs_by_end ON jobs (state, ended_at); " + NOTIFY_MIGRATION,
}

INSERT_JOB = "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_TASK = "INSERT INTO tasks VALUES (?, ?, ?, ?)"
INSERT_LABEL = "INSERT INTO job_labels VALUES (?, ?, ?)"
INSERT_EVENT = "INSERT INTO events (job_id, body) VALUES (?, ?)"

UPSERT_INSTANCE = """
INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)
ON CONFLICT (job_id, task, idx) DO UPDATE SET
    attempt = excluded.attempt, state = excluded.state, reason = excluded.reason,
    exit_code = excluded.exit_code, signal = excluded.signal, pid = excluded.pid,
    started_at = excluded.started_at, ended_at = excluded.ended_at,
    duration_s = excluded.duration_s, lost = excluded.lost, interrupted = excluded.interrupted,
    not_before = excluded.not_before, cpu_user_s = excluded.cpu_user_s,
    cpu_system_s = excluded.cpu_system_s, max_rss_bytes = excluded.max_rss_bytes,
    -- a stop request holds while its attempt is active; it ends with the attempt
    stop_reason = IIF(
        excluded.attempt = instances.attempt
        AND excluded.state IN ('STAGING', 'RUNNING', 'UPLOADING'),
        instances.stop_reason, NULL
    )
"""

STOP_INSTANCE = """
UPDATE instances SET stop_reason = ?
WHERE job_id = ? AND task = ? AND idx = ? AND attempt = ?
    AND state IN ('STAGING', 'RUNNING', 'UPLOADING')
"""

# A job that cannot be loaded is ended as stored (restart.py): what had not ended, never will.
END_UNLOADABLE_JOB = (
    "UPDATE jobs SET state = 'FAILED', reason = ?1, ended_at = ?2, "
    "stopping_state = NULL, stopping_reason = NULL WHERE id = ?3",
    "UPDATE tasks SET state = 'CANCELLED', reason = 'job_unrecoverable' WHERE job_id = ?3 "
    "AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'SKIPPED')",
    "UPDATE instances SET state = 'CANCELLED', reason = 'job_unrecoverable', ended_at = ?2, "
    "stop_reason = NULL WHERE job_id = ?3 AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED')",
)

# Every row of a job, its history first (the largest); the job's own row last.
DELETE_JOB = tuple(
    f"DELETE FROM {table} WHERE {key} = ?"
    for table, key in (
        ("events", "job_id"),
        ("instances", "job_id"),
        ("tasks", "job_id"),
        ("job_labels", "job_id"),
        ("notify_lanes", "job_id"),
        ("notify_jobs", "job_id"),
        ("jobs", "id"),
    )
)

TERMINAL_INSTANCE_STATES = {s.value for s in INSTANCE_TERMINAL}
TERMINAL_JOB_STATES = {s.value for s in JOB_TERMINAL}


class JobRow(msgspec.Struct, frozen=True):
    id: str
    seq: int
    defn: JobDef
    state: JobState
    reason: str | None
    stopping: tuple[JobState, str] | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    # Why the stored spec cannot be read (``defn`` is then a stand-in without tasks).
    damaged: str | None = None


class InstanceRow(msgspec.Struct, frozen=True):
    task: str
    index: int
    attempt: int
    state: InstanceState
    reason: str | None
    exit_code: int | None
    signal: int | None
    pid: int | None
    started_at: float | None
    ended_at: float | None
    duration_s: float | None
    lost: int
    interrupted: int
    stop_reason: str | None  # a stop of its active attempt was requested
    not_before: float | None = None  # waiting out a retry's backoff until then
    cpu_user_s: float | None = None  # what its latest attempt that ended cost
    cpu_system_s: float | None = None
    max_rss_bytes: int | None = None


def job_row(row: Any) -> JobRow:
    """A row of ``jobs``. One whose spec cannot be decoded is still listed (``damaged``)."""
    stopping = (JobState(row[7]), row[8]) if row[7] else None
    damaged = None
    try:
        defn = msgspec.json.decode(row[4], type=JobDef)
    except (msgspec.DecodeError, TypeError) as exc:
        damaged = f"its stored spec cannot be read: {' '.join(str(exc).split())[:200]}"
        defn = JobDef(name=str(row[2]), tasks=())
    return JobRow(
        id=row[0],
        seq=row[1],
        defn=defn,
        damaged=damaged,
        state=JobState(row[5]),
        reason=row[6],
        stopping=stopping,
        submitted_at=row[9],
        started_at=row[10],
        ended_at=row[11],
    )
