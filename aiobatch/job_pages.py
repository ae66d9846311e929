"""Listing any number of jobs through GET /v1/jobs, whose answers are bounded pages.

Offsets alone would repeat jobs when new ones are submitted between two pages (they push the
rest down), and skip jobs when listed ones leave the listed status (the rest move up). So
each page after the first starts one job early, at the last job given, and only jobs older
than it (a smaller ``seq``) are taken: no repeat. A page that does not reach back to it may
have passed some over, so it is asked again from further up: no skip (at offset 0 nothing
can be above it). A job whose status changes during the listing is given if it had the
status when its page was read; jobs submitted after the first page are not given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiobatch.api import JobSummary

# One page: (limit, offset) -> at most limit jobs from offset, newest (largest seq) first.
Fetch = Callable[[int, int], Awaitable[list[JobSummary]]]


async def job_pages(
    fetch: Fetch, *, page: int, limit: int | None, offset: int
) -> AsyncIterator[JobSummary]:
    """Jobs from ``offset`` on, newest first, each once; ``limit`` of them (None: all).
    ``page``: at most this many asked at a time (2 or more)."""
    if page < 2:
        raise ValueError(f"page: expected at least 2, got {page}")
    given, last = 0, None  # last: the seq of the last job given
    at = offset  # the offset of the next job, as far as the last page tells
    while limit is None or given < limit:
        early = 0 if last is None else 1  # then start at the last job given
        start = at - early
        want = page - early
        if limit is not None:
            want = min(want, limit - given)
        jobs = await fetch(want + early, start)
        if last is not None and start > 0 and (not jobs or jobs[0].seq < last):
            at = max(1, at - page)  # jobs above left the list: look further up
            continue
        for job in jobs:
            if (last is None or job.seq < last) and (limit is None or given < limit):
                given, last = given + 1, job.seq
                yield job
        at = start + len(jobs)
        if len(jobs) < want + early:
            return
