"""The state database's connection: opened (checked, configured, migrated, and tried with a
write) or refused before anything is written to it; and which SQLite errors mean the file
system (full, failing, read-only) rather than the data.

What is in the file is checked first, read-only, by ``dbcheck.py``; ``store.py`` writes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio

from aiobatch.dbcheck import Sidecars, check_database
from aiobatch.errors import DatabaseUnusable, StateDirUnwritable
from aiobatch.logging import get_logger
from aiobatch.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

A = TypeVar("A")
R = TypeVar("R")

log = get_logger("aiobatch.database")

# SQLite's primary result codes that mean the file system, not the data: full, I/O error,
# read-only. Writes are kept in memory and tried again.
_SQLITE_FULL = 13
_STORAGE_CODES = {_SQLITE_FULL, 10, 8}  # SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY
_INCREMENTAL = 2  # PRAGMA auto_vacuum: NONE 0, FULL 1, INCREMENTAL 2


async def open_database(path: Path) -> aiosqlite.Connection:
    """Open the database, or refuse to (DatabaseUnusable, StateDirUnwritable) before
    anything is written to it: a corrupt or foreign file is left as it was found."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(check_database, path)
    await anyio.to_thread.run_sync(_made_private, path)
    sidecars = Sidecars(path)
    # isolation_level=None: the store issues BEGIN/COMMIT itself, one per batch.
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await _configure(db, path)
        await anyio.to_thread.run_sync(_private, path)
    except BaseException as exc:
        await db.close()
        sidecars.remove_new()
        if not isinstance(exc, sqlite3.Error):
            raise
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
            raise StateDirUnwritable(path.parent, str(exc)) from None
        raise DatabaseUnusable(  # a read-only file, say
            path,
            f"cannot be opened for writing ({exc})",
            "check the file, its permissions and its file system",
        ) from None
    return db


def _made_private(path: Path) -> None:
    """A new database file is made 0600 before SQLite opens it (and its WAL files, which
    take its mode): readable by no one else even for a moment."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StateDirUnwritable(path.parent, exc.strerror or str(exc)) from None
        raise DatabaseUnusable(
            path, f"cannot be made ({exc.strerror})", "check the state dir's permissions"
        ) from None


def _private(path: Path) -> None:
    """The database and its WAL files readable by us alone: they hold every job's spec and
    environment (SQLite makes its WAL files with the database's mode)."""
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(name), 0o600)


async def _configure(db: aiosqlite.Connection, path: Path) -> None:
    await _reclaimable(db)
    await db.execute("PRAGMA journal_mode = WAL")
    # After a checkpoint the WAL file is cut back to this, not left at its largest: a
    # service deleting jobs by age keeps a small footprint.
    await db.execute("PRAGMA journal_size_limit = 1048576")
    # NORMAL: a commit survives the process being killed, not the machine losing power.
    # Transactions that accept new jobs are synced in full (see Store.write_pending).
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = OFF")
    await _migrate(db, path)
    await probe_write(db)  # a file that cannot be written shows now, not at the first job


async def _reclaimable(db: aiosqlite.Connection) -> None:
    """Pages freed by deleting jobs can be given back to the file system (``PRAGMA
    incremental_vacuum`` after each deletion). A new database is made so; one made before
    is rebuilt once (VACUUM), which needs a second copy's room for as long as it takes."""
    async with db.execute("PRAGMA auto_vacuum") as cursor:
        row = await cursor.fetchone()
    if row is not None and row[0] == _INCREMENTAL:
        return
    await db.execute(f"PRAGMA auto_vacuum = {_INCREMENTAL}")
    async with db.execute("SELECT count(*) FROM sqlite_master") as cursor:
        row = await cursor.fetchone()
    if row is not None and row[0]:  # tables exist: the new mode takes a rebuild
        try:
            await db.execute("VACUUM")
        except sqlite3.Error as exc:
            # No room for the copy, say: freed pages are still reused, not given back.
            log.warning("database_not_rebuilt", error=str(exc))


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    async with db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ) as cursor:
        exists = await cursor.fetchone() is not None
    if not exists:
        await db.executescript(
            f"BEGIN; {SCHEMA} INSERT INTO schema_version VALUES ({SCHEMA_VERSION}); COMMIT;"
        )
        return
    async with db.execute("SELECT version FROM schema_version") as cursor:
        row = await cursor.fetchone()
    version = row[0] if row else 0
    if not 1 <= version <= SCHEMA_VERSION:  # check_database said so already
        raise DatabaseUnusable(
            path,
            f"has schema version {version}; this aiobatch reads 1 to {SCHEMA_VERSION}",
            "use another --state-dir",
        )
    steps = " ".join(MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1))
    if steps:  # one transaction: a crash mid-migration leaves the old version intact
        await db.executescript(
            f"BEGIN; {steps} UPDATE schema_version SET version = {SCHEMA_VERSION}; COMMIT;"
        )


async def in_db_thread(
    db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection, A], R], arg: A
) -> R:
    """``fn(connection, arg)`` in the connection's own thread, as aiosqlite runs each of its
    calls: many statements in one round trip between the threads (each costs ~0.1 ms, and
    awaiting statement by statement made them most of a small transaction's time)."""
    return await db._execute(lambda: fn(db._conn, arg))  # type: ignore[no-untyped-call,no-any-return]


async def probe_write(db: aiosqlite.Connection) -> None:
    """A write of no consequence: raises as a real write would if there is no room."""
    await db.execute("BEGIN")
    try:
        await db.execute("UPDATE schema_version SET version = version")
        await db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise


def is_storage_failure(exc: sqlite3.Error) -> bool:
    """The file system failed (full, I/O error, read-only), not the data or the code."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _STORAGE_CODES
