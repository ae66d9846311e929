"""Events (frozen, tagged msgspec structs) and the in-process bus that carries them.

There is one event type per kind of entity; its ``state`` says what happened. That keeps the
store, the watchers and the wire format uniform: a consumer switches on the tag, not on
dozens of classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from aiobatch.logging import get_logger


class JobSubmitted(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    job_id: str
    name: str
    ts: float


class JobStateChanged(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    job_id: str
    state: str
    reason: str | None
    ts: float


class JobStopRequested(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """The job winds down: no new instance starts, active ones are stopped, then ``state``."""

    job_id: str
    state: str
    reason: str
    ts: float


class InstanceStopRequested(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """One running attempt is being stopped (stored, so that a crash before it ends cannot
    let it run on: the next runtime stops it again)."""

    job_id: str
    task: str
    index: int
    attempt: int
    reason: str
    ts: float


class TaskStateChanged(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    job_id: str
    task: str
    state: str
    reason: str | None
    ts: float


class InstanceStateChanged(msgspec.Struct, frozen=True, tag=True, kw_only=True, omit_defaults=True):
    job_id: str
    task: str
    index: int
    attempt: int
    state: str
    reason: str | None
    ts: float
    exit_code: int | None = None
    signal: int | None = None
    pid: int | None = None
    started_at: float | None = None
    duration_s: float | None = None
    # Attempts so far that ended with the runtime, not charged to retries: lost in a crash,
    # interrupted by a shutdown.
    lost: int = 0
    interrupted: int = 0
    # A PENDING instance waiting out its retry's backoff: when it may start (wall clock).
    not_before: float | None = None
    # What its latest attempt that ended cost (attempt.Usage).
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    max_rss_bytes: int | None = None


class NotificationFailed(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """A webhook delivery given up after its last try; the job's outcome is untouched."""

    job_id: str
    url: str
    notification: str  # what was not delivered: job_failed, ...
    seq: int  # the event it was made of, in the job's history
    delivery: str  # its X-Aiobatch-Delivery
    tries: int
    error: str  # the last try's: HTTP 503, ClientConnectorError: ..., secret_unavailable: ...
    ts: float


log = get_logger("aiobatch.events")

Event = (
    JobSubmitted
    | JobStateChanged
    | JobStopRequested
    | TaskStateChanged
    | InstanceStateChanged
    | InstanceStopRequested
    | NotificationFailed
)
Subscriber = Callable[[Event], None]

event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)


class Bus:
    """Synchronous fan-out to subscribers, plus async streams for watchers.

    Subscribers run inline in ``publish`` and must not block: the store buffers, waiters set
    flags, streams enqueue. Publishing is therefore cheap enough for every state change.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.streams_open = 0  # watchers' streams (API streams, pages, waits)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        # One subscriber that fails (a view, a user's) must not keep the event from the
        # others, the store first among them: it is logged, and the next one is called.
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("subscriber_failed", subscriber=repr(subscriber))

    @contextmanager
    def stream(
        self, job_id: str | None = None, *, limit: float = math.inf
    ) -> Iterator[MemoryObjectReceiveStream[Event]]:
        """A receive stream of every event (of one job, if given) while the context is open.

        A consumer that falls ``limit`` events behind is cut off: its stream ends after
        what it holds, rather than growing without bound (a watcher can then resync).
        """
        send: MemoryObjectSendStream[Event]
        send, receive = anyio.create_memory_object_stream[Event](limit)

        def forward(event: Event) -> None:
            if job_id is None or event.job_id == job_id:
                try:
                    send.send_nowait(event)
                except anyio.WouldBlock:
                    send.close()  # the receiver drains what it has, then sees the end
                except anyio.ClosedResourceError:
                    pass

        unsubscribe = self.subscribe(forward)
        self.streams_open += 1
        try:
            with receive:
                yield receive
        finally:
            self.streams_open -= 1
            unsubscribe()
            send.close()
