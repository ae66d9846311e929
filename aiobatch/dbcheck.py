"""Before a runtime writes to its database: is the file intact, ours, and of a version we read?

The check reads through a read-only connection, so a file it refuses is left exactly as it
was found: SQLite cannot write to it, cannot "recover" it, cannot checkpoint a -wal file
into it. Such a connection may have to create the -wal and -shm files of a database in WAL
mode; those it created (empty, or an index rebuilt from the -wal) are removed again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aiobatch.errors import DatabaseUnusable
from aiobatch.schema import SCHEMA_VERSION

TABLES = frozenset({"schema_version", "jobs", "tasks", "instances", "events"})
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_DETAIL_CHARS = 160
MOVE_AWAY = "move it (and any -wal file beside it) out of the state dir to start afresh"


def check_database(path: Path) -> None:
    """Raise DatabaseUnusable unless ``path`` is missing, empty, or an aiobatch database that
    this version reads and SQLite finds intact (``PRAGMA quick_check``)."""
    try:
        if path.stat().st_size == 0:
            return  # SQLite's empty database: made ours on open
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc)) from None
    sidecars = Sidecars(path)
    try:
        _inspect(path)
    finally:
        sidecars.remove_new()


class Sidecars:
    """The -wal and -shm files of the database at ``path`` that are not there yet: SQLite
    makes them even for a connection that cannot write (they are empty, or an index)."""

    def __init__(self, path: Path) -> None:
        self._new = [
            sidecar
            for sidecar in (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
            if not sidecar.exists()
        ]

    def remove_new(self) -> None:
        """Remove them again (no connection may be open: the state dir's lock is held)."""
        for sidecar in self._new:
            sidecar.unlink(missing_ok=True)


def _inspect(path: Path) -> None:
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _unreadable(path, str(exc)) from None
    try:
        listing = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        tables = {name for (name,) in listing}
        if not tables:
            return  # a database with nothing in it yet
        if "schema_version" not in tables:
            listed = ", ".join(sorted(tables)[:5])
            raise DatabaseUnusable(
                path,
                f"is not an aiobatch database (it holds {listed})",
                "use another --state-dir",
            )
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
        if len(versions) != 1 or not isinstance(versions[0], int) or versions[0] < 1:
            raise _corrupt(path, f"schema_version holds {versions[:3]!r}")
        if versions[0] > SCHEMA_VERSION:
            raise DatabaseUnusable(
                path,
                f"was written by a newer aiobatch (schema version {versions[0]}; "
                f"this one reads 1 to {SCHEMA_VERSION})",
                "upgrade aiobatch, or use another --state-dir",
            )
        missing = sorted(TABLES - tables)
        if missing:
            raise _corrupt(path, f"table {missing[0]} is missing")
        [(verdict,)] = db.execute("PRAGMA quick_check(1)").fetchall()
        if verdict != "ok":
            raise _corrupt(path, str(verdict))
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _CORRUPT_CODES:
            raise _corrupt(path, str(exc)) from None
        raise _unreadable(path, str(exc)) from None
    finally:
        db.close()


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _DETAIL_CHARS else flat[: _DETAIL_CHARS - 3] + "..."


def _corrupt(path: Path, detail: str) -> DatabaseUnusable:
    return DatabaseUnusable(
        path, f"is corrupt ({_one_line(detail)})", f"restore a backup, or {MOVE_AWAY}"
    )


def _unreadable(path: Path, detail: str) -> DatabaseUnusable:
    return DatabaseUnusable(
        path, f"cannot be read ({_one_line(detail)})", "check the file and its permissions"
    )
