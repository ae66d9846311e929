"""Answers that list every instance of a job's tasks (``?instances=1``, a task's result),
streamed a slice at a time: a task may have a million instances, and one answer must hold
neither the event loop nor memory for all of them at once (a shared link may ask for it, as
often as it likes)."""

from __future__ import annotations

import uuid

import anyio.lowlevel
import msgspec
from aiohttp import web

from aiobatch import wire
from aiobatch.api import InstanceResult, JobSnapshot, TaskResult
from aiobatch.server.served import ServedAPI
from aiobatch.server.streams import LongRequests

INSTANCES_AT_ONCE = 1_000  # built, encoded and written at a time


class InstanceLists:
    def __init__(self, api: ServedAPI, long_requests: LongRequests) -> None:
        self._api, self._long = api, long_requests

    async def job(self, request: web.Request, snapshot: JobSnapshot) -> web.StreamResponse:
        """``snapshot`` (its tasks without instances) with every task's instances."""
        marker = _marker()
        marked = msgspec.structs.replace(
            snapshot,
            tasks={
                name: msgspec.structs.replace(task, instances=[marker])
                for name, task in snapshot.tasks.items()
            },
        )
        lists = [(name, task.total) for name, task in snapshot.tasks.items()]
        return await self._stream(request, snapshot.id, marked, marker, lists)

    async def task(
        self, request: web.Request, job_id: str, name: str, result: TaskResult
    ) -> web.StreamResponse:
        """``result`` (without instances) with the task's instances."""
        marker = _marker()
        marked = msgspec.structs.replace(result, instances=[marker])
        return await self._stream(request, job_id, marked, marker, [(name, result.total)])

    async def _stream(
        self,
        request: web.Request,
        job_id: str,
        marked: msgspec.Struct,
        marker: InstanceResult,
        lists: list[tuple[str, int]],
    ) -> web.StreamResponse:
        # The body as encoded with one marker for each list: the lists go in their place.
        parts = wire.encoder.encode(marked).split(wire.encoder.encode(marker))
        assert len(parts) == len(lists) + 1, "a marker's text turned up elsewhere"

        async def pump(response: web.StreamResponse) -> None:
            await response.write(parts[0])
            for (task, total), after in zip(lists, parts[1:], strict=True):
                for start in range(0, total, INSTANCES_AT_ONCE):
                    stop = min(total, start + INSTANCES_AT_ONCE)
                    results = await self._api.instance_results(job_id, task, start, stop)
                    items = wire.encoder.encode(results)[1:-1]  # without the list's brackets
                    await response.write(items if start == 0 else b"," + items)
                    await anyio.lowlevel.checkpoint()  # other requests between slices
                await response.write(after)

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        return await self._long.stream(request, response, pump)


def _marker() -> InstanceResult:
    """An instance no job has: its status, a random token, is found nowhere else."""
    return InstanceResult(index=-1, status=uuid.uuid4().hex)
