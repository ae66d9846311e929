"""Handler of ``/v1/events``: state changes as JSON lines, from now on."""

from __future__ import annotations

import contextlib

import anyio
from aiohttp import web

from aiobatch import wire
from aiobatch.errors import JobNotFound
from aiobatch.events import Event, JobStateChanged, event_encoder
from aiobatch.server.params import query, text_param
from aiobatch.server.responses import bad_request
from aiobatch.server.served import ServedAPI
from aiobatch.server.streams import LongRequests, chunked
from aiobatch.states import JOB_TERMINAL, JobState

STREAM_BATCH = 1000  # events at most in one write of an event stream
# A watcher this many events behind (stopped, or too slow) is cut off, not buffered for
# without bound: its stream ends, and it can reconnect and resync.
STREAM_BUFFER = 100_000


class EventHandlers:
    def __init__(self, api: ServedAPI, long_requests: LongRequests) -> None:
        self.api = api
        self._long = long_requests

    def routes(self) -> list[web.RouteDef]:
        return [web.get(wire.API_PREFIX + "/events", self.events)]

    async def events(self, request: web.Request) -> web.StreamResponse:
        job_id = query(request, "job").get("job")
        if job_id == "":
            raise bad_request("job: expected a job id")
        if job_id is not None:
            text_param(job_id, "job")
        # Registered before the response starts: a client that has the headers sees every
        # event from then on.
        async with self.api.subscribe(job_id, limit=STREAM_BUFFER) as events:
            ended = job_id is not None and await self._status_is_final(job_id)

            async def pump(response: web.StreamResponse) -> None:
                if ended:
                    return
                async for first in events:
                    # Everything already queued goes out in one write: one loop iteration
                    # per event would fall behind a busy job (~40 events/s under load).
                    batch = [first]
                    with contextlib.suppress(anyio.WouldBlock):
                        while len(batch) < STREAM_BATCH:
                            batch.append(events.receive_nowait())
                    end = next((k for k, e in enumerate(batch) if ends_job(e)), None)
                    if job_id is None or end is None:
                        end = len(batch) - 1
                    await response.write(b"".join(encode_line(e) for e in batch[: end + 1]))
                    if job_id is not None and ends_job(batch[end]):
                        return

            return await self._long.stream(request, chunked(wire.NDJSON), pump)

    async def _status_is_final(self, job_id: str) -> bool:
        try:
            status = self.api.cached_status(job_id)
        except JobNotFound:  # not in memory (ended long ago): ask properly
            return JobState((await self.api.job_snapshot(job_id)).status) in JOB_TERMINAL
        return status in JOB_TERMINAL


def encode_line(event: Event) -> bytes:
    return event_encoder.encode(event) + b"\n"


def ends_job(event: Event) -> bool:
    return isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL
