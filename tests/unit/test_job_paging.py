"""job_pages, the Client's paging of GET /v1/jobs, against a model of the service's list
changed at random between pages (jobs submitted, jobs entering and leaving the listed
status): each job is given once, newest first, and none that was listed throughout is
skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aiobatch.api import JobSummary
from aiobatch.job_pages import job_pages

# Between two pages: (new jobs submitted, of which listed; which jobs toggle their status,
# by place among all jobs, newest first: near the pages already read).
Change = tuple[int, int, list[int]]
changes = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.lists(st.integers(0, 20), max_size=6)),
    max_size=30,
)


@dataclass
class Model:
    """The service's jobs by seq, and which of them have the listed status."""

    listed: dict[int, bool]
    changes: list[Change]
    requests: int = 0
    toggled: set[int] = field(default_factory=set)

    def page(self, limit: int, offset: int) -> list[int]:
        if self.requests and self.changes:  # the first page is read before any change
            new, new_listed, toggles = self.changes.pop(0)
            top = max(self.listed, default=0)
            for n in range(new):
                self.listed[top + 1 + n] = n < new_listed
            everyone = sorted(self.listed, reverse=True)
            for place in toggles:
                if place < len(everyone):
                    seq = everyone[place]
                    self.listed[seq] = not self.listed[seq]
                    self.toggled.add(seq)
        self.requests += 1
        order = sorted((seq for seq, on in self.listed.items() if on), reverse=True)
        return order[offset : offset + limit]


def summary(seq: int) -> JobSummary:
    return JobSummary(
        id=str(seq),
        name="j",
        status="RUNNING",
        reason=None,
        submitted_at=0.0,
        started_at=None,
        ended_at=None,
        seq=seq,
    )


@settings(max_examples=300, deadline=None)
# The two newest jobs leave the list after the first page: offsets alone would skip one.
@example(jobs=[True] * 10, churn=[(0, 0, [0, 1])], page=3, limit=None, offset=0)
@given(
    jobs=st.lists(st.booleans(), max_size=80),
    churn=changes,
    page=st.integers(2, 9),
    limit=st.none() | st.integers(1, 100),
    offset=st.integers(0, 5),
)
def test_pages_give_each_job_once_newest_first_and_skip_none_listed_throughout(
    jobs: list[bool], churn: list[Change], page: int, limit: int | None, offset: int
) -> None:
    model = Model({seq: on for seq, on in enumerate(jobs, 1)}, list(churn))
    at_start = sorted((seq for seq, on in model.listed.items() if on), reverse=True)

    async def fetch(size: int, at: int) -> list[JobSummary]:
        assert 1 <= size <= page and at >= 0
        return [summary(seq) for seq in model.page(size, at)]

    async def listing() -> list[JobSummary]:
        pages = job_pages(fetch, page=page, limit=limit, offset=offset)
        return [job async for job in pages]

    seqs = [job.seq for job in anyio.run(listing)]
    assert seqs == sorted(set(seqs), reverse=True)  # once each, newest first
    assert limit is None or len(seqs) <= limit
    # Listed throughout (present at the start past the offset, never toggled): given, up to
    # the limit.
    steady = [seq for seq in at_start[offset:] if seq not in model.toggled]
    if limit is not None and len(seqs) == limit:
        steady = [seq for seq in steady if seq >= seqs[-1]]
    assert set(steady) <= set(seqs), (steady, seqs)
