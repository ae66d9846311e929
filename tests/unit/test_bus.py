"""The bus's streams: filtered by job, and cut off when their consumer falls too far behind."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from aiobatch.events import Bus, Event, JobStateChanged

pytestmark = pytest.mark.anyio


def changed(job_id: str, n: int) -> JobStateChanged:
    return JobStateChanged(job_id=job_id, state="RUNNING", reason=str(n), ts=float(n))


async def test_a_stream_gets_its_jobs_events_in_order() -> None:
    bus = Bus()
    with bus.stream("a") as stream:
        for n in range(3):
            bus.publish(changed("a", n))
            bus.publish(changed("b", n))
        received = [stream.receive_nowait().ts for _ in range(3)]
    assert received == [0.0, 1.0, 2.0]


async def test_a_consumer_too_far_behind_is_cut_off_not_buffered_for() -> None:
    bus = Bus()
    with bus.stream(limit=3) as stream:
        for n in range(10):
            bus.publish(changed("a", n))  # nobody reads meanwhile
        received = [event.ts async for event in stream]
    assert received == [0.0, 1.0, 2.0]  # what it held, then the end


async def test_other_streams_go_on_when_one_is_cut_off() -> None:
    bus = Bus()
    with bus.stream(limit=1) as slow, bus.stream() as fast:
        for n in range(3):
            bus.publish(changed("a", n))
        assert [e.ts async for e in slow] == [0.0]
        assert [fast.receive_nowait().ts for _ in range(3)] == [0.0, 1.0, 2.0]


def test_a_failing_subscriber_keeps_the_event_from_no_one() -> None:
    bus = Bus()
    before: list[Event] = []
    after: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("a view's bug")

    bus.subscribe(lambda event: before.append(event))  # as the store is: first
    bus.subscribe(broken)
    bus.subscribe(lambda event: after.append(event))
    with capture_logs() as logs:
        for n in range(2):
            bus.publish(changed("a", n))
    assert [e.ts for e in before] == [e.ts for e in after] == [0.0, 1.0]
    assert [entry["event"] for entry in logs] == ["subscriber_failed"] * 2
