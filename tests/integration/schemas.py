"""The schema as an earlier version shipped it, for migration tests: the current one less
what each later version added (each piece must still be there, as the current one spells it)."""

from __future__ import annotations

from aiobatch.schema import LABELS_SCHEMA, NOTIFY_SCHEMA, SCHEMA, SCHEMA_VERSION

ADDED_BY = {
    2: (
        "    lost INTEGER NOT NULL DEFAULT 0,\n",
        "    interrupted INTEGER NOT NULL DEFAULT 0,\n",
        "    stop_reason TEXT,\n",
    ),
    3: (LABELS_SCHEMA,),
    4: (
        NOTIFY_SCHEMA,
        "    not_before REAL,\n",
        "    cpu_user_s REAL,\n    cpu_system_s REAL,\n    max_rss_bytes INTEGER,\n",
        "CREATE INDEX jobs_by_end ON jobs (state, ended_at);\n",
    ),
}


def schema_as_of(version: int) -> str:
    text = SCHEMA
    for later in range(version + 1, SCHEMA_VERSION + 1):
        for part in ADDED_BY[later]:
            assert part in text, f"version {later}'s {part!r} is not in the schema"
            text = text.replace(part, "")
    return text
