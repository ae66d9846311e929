"""Handler of an instance's log: its bytes from an offset, or followed while it grows.

Read from the file in chunks of ``LOG_CHUNK`` bytes, off the event loop, and written as they
are read (the peer's pace sets ours): a response holds one chunk in memory whatever the
size of the log. Every answer says how long the log was when it began
(``X-Aiobatch-Log-Size``); a plain read also has its ``Content-Length``.
"""

from __future__ import annotations

import anyio
from aiohttp import web

from aiobatch import views, wire
from aiobatch.api import LogStream
from aiobatch.server.params import flag_param, instance_of, int_param, query
from aiobatch.server.responses import bad_request
from aiobatch.server.served import ServedAPI
from aiobatch.server.streams import LongRequests, chunked, closing


class LogHandlers:
    def __init__(self, api: ServedAPI, long_requests: LongRequests) -> None:
        self.api = api
        self._long = long_requests

    def routes(self) -> list[web.RouteDef]:
        path = wire.API_PREFIX + "/jobs/{job_id}/tasks/{task}/instances/{index}/logs/{stream}"
        return [web.get(path, self.log)]

    async def log(self, request: web.Request) -> web.StreamResponse:
        params = query(request, "offset", "limit", "follow")
        offset = int_param(params, "offset") or 0
        limit = int_param(params, "limit")
        follow = flag_param(params, "follow")
        if follow and limit is not None:
            raise bad_request("limit: cannot be combined with follow")
        job_id, task, index = instance_of(request)
        stream = request.match_info["stream"]
        if stream not in ("stdout", "stderr"):
            raise web.HTTPNotFound()
        which: LogStream = "stdout" if stream == "stdout" else "stderr"
        # Nothing read: unknown ids 404 here, before any answer begins.
        await self.api.read_log(job_id, task, index, stream=which, offset=0, limit=0)
        path = self.api.log_path(job_id, task, index, which)
        if follow:
            response = chunked("text/plain")
            response.headers[wire.SIZE_HEADER] = str(
                await anyio.to_thread.run_sync(views.size, path)
            )

            async def follow_pump(response: web.StreamResponse) -> None:
                chunks = self.api.follow_log(job_id, task, index, stream=which, offset=offset)
                async with closing(chunks) as chunks:
                    async for chunk in chunks:
                        await response.write(chunk)

            return await self._long.stream(request, response, follow_pump)

        try:
            file = await anyio.open_file(path, "rb")
        except FileNotFoundError:  # not started: an empty log
            return web.Response(
                body=b"", content_type="text/plain", headers={wire.SIZE_HEADER: "0"}
            )
        async with file:
            size = await anyio.to_thread.run_sync(views.fstat_size, file.wrapped)
            end = size if limit is None else min(size, offset + limit)
            response = web.StreamResponse(headers={wire.SIZE_HEADER: str(size)})
            response.content_type = "text/plain"
            response.content_length = max(0, end - offset)

            async def read_pump(response: web.StreamResponse) -> None:
                if offset >= end:
                    return
                await file.seek(offset)
                left = end - offset
                while left > 0:
                    chunk = await file.read(min(left, views.LOG_CHUNK))
                    if not chunk:
                        raise EOFError(f"{path} is shorter than it was")  # a broken answer
                    left -= len(chunk)
                    await response.write(chunk)

            return await self._long.stream(request, response, read_pump)
