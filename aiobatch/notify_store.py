"""Where webhook deliveries stand, in the state database (``schema.NOTIFY_SCHEMA``).

This goes through the store's own connection, one statement at a time and never in a
transaction of its own: the store's writer runs its transactions over several awaits, so a
statement from here may land inside one and is then committed with it. Each statement is
right on its own, and in an order that a crash between two of them cannot make wrong: the
worst it can do is deliver an event again (at least once), never skip one. (A second
connection would be a second writer, and the store's transactions, begun deferred, would
then fail with "database is locked" when a read ran first in them.)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import msgspec

from aiobatch.logging import get_logger
from aiobatch.notify_types import NotifyDef
from aiobatch.schema import TERMINAL_JOB_STATES
from aiobatch.store import Store

log = get_logger("aiobatch.notifications")

# Jobs never taken on (their first event came just before a crash) start from their first
# event; then every job with events after what was delivered is pending, oldest first.
_ADOPT = (
    "INSERT INTO notify_jobs SELECT id, 0 FROM jobs "
    "WHERE id NOT IN (SELECT job_id FROM notify_jobs)"
)
_PENDING = (
    "SELECT n.job_id FROM notify_jobs n JOIN jobs j ON j.id = n.job_id "
    "WHERE EXISTS (SELECT 1 FROM events e WHERE e.job_id = n.job_id AND e.seq > n.seq) "
    "ORDER BY j.seq"
)
_TAKE_ON = "INSERT OR IGNORE INTO notify_jobs SELECT id, 0 FROM jobs WHERE id = ?"
_JOB = (
    "SELECT j.name, j.spec, COALESCE(n.seq, 0), j.seq FROM jobs j "
    "LEFT JOIN notify_jobs n ON n.job_id = j.id WHERE j.id = ?"
)
_SAVE_LANE = (
    "INSERT INTO notify_lanes SELECT ?1, ?2, ?3, ?4 "
    "WHERE EXISTS (SELECT 1 FROM jobs WHERE id = ?1) "  # not for a job deleted meanwhile
    "ON CONFLICT (job_id, target) DO UPDATE SET seq = excluded.seq, tries = excluded.tries"
)
# The job's place first: lanes left behind it by a crash between the two are ignored.
_ADVANCE = (
    "UPDATE notify_jobs SET seq = ?2 WHERE job_id = ?1 AND seq < ?2",
    "DELETE FROM notify_lanes WHERE job_id = ?1 AND seq <= ?2",
)


_IDS_AT_ONCE = 500  # job ids in one query (SQLite allows 32,766 parameters)


class _Notify(msgspec.Struct):
    """The one field of a stored spec the deliverer needs (the rest is skipped unread)."""

    notify: tuple[NotifyDef, ...] = ()


class JobTargets(msgspec.Struct):
    """A job as the deliverer sees it: its name, own targets and where delivery stands."""

    job_id: str
    name: str
    notify: tuple[NotifyDef, ...]
    seq: int  # every event up to this one is done with
    number: int  # its place among jobs, in the order submitted
    # target -> (seq, tries)
    lanes: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)


class NotifyStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._store.db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await (await self._store.db.execute(sql, params)).close()

    async def pending_jobs(self) -> list[str]:
        """At start: jobs with events not yet done with (every job is taken on first)."""
        await self._run(_ADOPT)
        return [row[0] for row in await self._rows(_PENDING)]

    async def load(self, job_id: str) -> JobTargets | None:
        """A job's targets and progress (taken on now if it was not); None if it is gone."""
        await self._run(_TAKE_ON, (job_id,))
        rows = await self._rows(_JOB, (job_id,))
        if not rows:
            return None
        name, spec, seq, number = rows[0]
        lanes = await self._rows(
            "SELECT target, seq, tries FROM notify_lanes WHERE job_id = ? AND seq >= ?",
            (job_id, seq),
        )
        try:
            notify = msgspec.json.decode(spec, type=_Notify).notify
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("notify_spec_unreadable", job_id=job_id)  # the config's targets still hear
            notify = ()
        return JobTargets(
            job_id=job_id,
            name=name,
            notify=notify,
            seq=seq,
            number=number,
            lanes={target: (lane_seq, tries) for target, lane_seq, tries in lanes},
        )

    async def last_seqs(self, job_ids: list[str]) -> tuple[dict[str, int], int]:
        """The seq of each job's last event (0 for none), and of the history's last."""
        last: dict[str, int] = dict.fromkeys(job_ids, 0)
        for at in range(0, len(job_ids), _IDS_AT_ONCE):
            chunk = job_ids[at : at + _IDS_AT_ONCE]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT job_id, MAX(seq) FROM events WHERE job_id IN ({marks}) GROUP BY job_id"
            last.update(await self._rows(sql, tuple(chunk)))
        ((overall,),) = await self._rows("SELECT MAX(seq) FROM events")
        return last, overall or 0

    async def read(
        self, job_id: str, after: int, tags: Collection[str], limit: int
    ) -> tuple[list[tuple[int, bytes]], int]:
        """The job's events after ``after`` whose tags are in ``tags`` (at most ``limit``),
        and the seq up to which that read covers the job's history."""
        # The end first: an event stored between the two reads is left for the next round.
        (last,) = (await self._rows("SELECT MAX(seq) FROM events WHERE job_id = ?", (job_id,)))[0]
        if last is None or last <= after:
            return [], after
        rows: list[tuple[int, bytes]] = []
        if tags:
            # An event's body starts with its tag (msgspec writes it first).
            prefixes = [f'{{"type":"{tag}"'.encode() for tag in sorted(tags)]
            match = " OR ".join("substr(body, 1, ?) = ?" for _ in prefixes)
            rows = await self._rows(
                "SELECT seq, body FROM events WHERE job_id = ? AND seq > ? AND seq <= ? "
                f"AND ({match}) ORDER BY seq LIMIT ?",
                (job_id, after, last, *(v for p in prefixes for v in (len(p), p)), limit),
            )
        covered = rows[-1][0] if len(rows) == limit else last
        return [(seq, bytes(body)) for seq, body in rows], covered

    async def ended(self, job_id: str) -> bool:
        """Whether the job is in a final state (or gone)."""
        rows = await self._rows("SELECT state FROM jobs WHERE id = ?", (job_id,))
        return not rows or rows[0][0] in TERMINAL_JOB_STATES

    async def save_lane(self, job_id: str, target: str, seq: int, tries: int) -> None:
        """One target is done with the job's events up to ``seq``; ``tries`` of the next."""
        await self._run(_SAVE_LANE, (job_id, target, seq, tries))

    async def advance(self, job_id: str, seq: int) -> None:
        """Every target is done with the job's events up to ``seq``."""
        for statement in _ADVANCE:
            await self._run(statement, (job_id, seq))
