"""``Client``: a running service's ``BatchAPI``, over its control socket (or TCP).

The same methods, signatures and results as ``Runtime``, so code written against
``BatchAPI`` (and every ``JobHandle``) works over either::

    async with Client() as api:  # $AIOBATCH_SOCKET, else $XDG_RUNTIME_DIR/aiobatch.sock, ...
        job = await api.submit("job.yaml")
        await job.wait_for_success()

Errors come back as the classes the runtime raised (``SpecError`` with the same
``.errors``, ``JobNotFound``, ...); a service that cannot be reached raises
``ServiceUnavailable`` naming the socket or URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Self

import aiohttp
import anyio
import msgspec

from aiobatch import wire
from aiobatch.api import (
    HistoryEntry,
    InstanceDetail,
    JobHandle,
    JobSnapshot,
    JobSummary,
    LogStream,
    SpecInput,
    TaskResult,
)
from aiobatch.client_connection import RequestRefused as RequestRefused  # importable from here
from aiobatch.client_connection import (
    ServiceConnection,
    env_path,
    instance_path,
    job_path,
    task_path,
)
from aiobatch.errors import JobNotFound, SpecError
from aiobatch.events import Event, JobStateChanged, JobSubmitted, event_decoder
from aiobatch.job_pages import job_pages
from aiobatch.labels import checked_labels
from aiobatch.links import check_hours
from aiobatch.spec import JobDef, JobSpec, read_spec_file
from aiobatch.states import JobState

LOG_CHUNK = 64 * 1024  # bytes of a log handed on at a time


class Client(ServiceConnection):
    """The API of an ``aiobatch serve`` process. Use as ``async with Client(...) as client:``.

    ``socket``: the unix socket (default: ``default_socket_path()``); or ``url``
    (``http://HOST:PORT``) and ``token`` for the service's TCP listener.
    """

    def __init__(
        self,
        socket: str | Path | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(socket, url=url, token=token)
        self._statuses: dict[str, JobState] = {}  # the last status seen of each job
        self.jobs_page = wire.MAX_JOBS_PAGE  # jobs asked for a request when listing more

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    # -- statuses seen -----------------------------------------------------------------------

    def _seen(self, job_id: str, status: str) -> None:
        self._statuses[job_id] = JobState(status)

    def _seen_event(self, event: Event) -> None:
        if isinstance(event, JobStateChanged):
            self._seen(event.job_id, event.state)
        elif isinstance(event, JobSubmitted):
            self._statuses.setdefault(event.job_id, JobState.SUBMITTED)

    # -- jobs --------------------------------------------------------------------------------

    async def submit(self, spec: SpecInput | JobSpec) -> JobHandle:
        """Submit a spec: a file (read here, so errors name it), a mapping or a ``JobSpec``."""
        data: Any = spec
        if isinstance(spec, str | Path):
            data = await anyio.to_thread.run_sync(read_spec_file, spec)
        elif isinstance(spec, Mapping):
            data = dict(spec)
        try:
            body = wire.encoder.encode(data)
        except (TypeError, msgspec.EncodeError) as exc:
            raise SpecError([f"$: cannot be sent as JSON: {exc}"]) from None
        done = await self._call("POST", "/jobs", wire.Submitted, body=body)
        self._seen(done.id, done.status)
        return JobHandle(self, done.id, done.name, done.tasks, JobState(done.status))

    async def list_jobs(
        self,
        *,
        status: JobState | str | None = None,
        limit: int | None = None,
        offset: int = 0,
        labels: Mapping[str, str] | None = None,
    ) -> list[JobSummary]:
        """Jobs newest first, optionally of one status and with all of ``labels``;
        ``offset`` skips that many.

        The service answers at most ``wire.MAX_JOBS_PAGE`` jobs a request; for more (or all,
        ``limit=None``) this asks page after page, each job once and in order, however jobs
        are submitted or change status meanwhile (see ``job_pages``)."""
        wanted = checked_labels(labels) if labels else {}
        if limit is not None and limit <= self.jobs_page:
            jobs = await self._jobs_page(status, wanted, limit, offset)
        else:
            pages = job_pages(
                lambda size, at: self._jobs_page(status, wanted, size, at),
                page=self.jobs_page,
                limit=limit,
                offset=offset,
            )
            jobs = [job async for job in pages]
        for job in jobs:
            self._seen(job.id, job.status)
        return jobs

    async def _jobs_page(
        self, status: JobState | str | None, labels: Mapping[str, str], limit: int, offset: int
    ) -> list[JobSummary]:
        params = [("offset", str(offset)), ("limit", str(limit))]
        if status is not None:
            params.append(("status", str(status)))
        params += [("label", f"{key}={value}") for key, value in labels.items()]
        return await self._call("GET", "/jobs", list[JobSummary], params=params)

    async def job_definition(self, job_id: str) -> JobDef:
        """The job as resolved at submission: its tasks, edges, mappings."""
        return await self._call("GET", job_path(job_id) + "/definition", JobDef)

    async def job_history(
        self, job_id: str, *, after: int = 0, limit: int = 10_000
    ) -> list[HistoryEntry]:
        """The job's stored events after ``after`` (a ``seq``), oldest first."""
        params = {"after": str(after), "limit": str(limit)}
        path = job_path(job_id) + "/history"
        return await self._call("GET", path, list[HistoryEntry], params=params)

    async def logview_address(
        self, job_id: str, *, hours: float = wire.DEFAULT_LINK_HOURS
    ) -> str | None:
        """The job's page in a browser, if the service serves one: a link that shows that
        job alone, read-only, for ``hours`` (0 < hours <= 8760; ValueError otherwise)."""
        hours = check_hours(hours)
        params = {"hours": f"{hours:.6f}".rstrip("0").rstrip(".")}
        path = job_path(job_id) + "/logview"
        return (await self._call("GET", path, wire.LogviewAddress, params=params)).url

    async def rotate_logview_links(self) -> bool:
        """A new key for the service's log-view links: every link made so far stops working.
        False if the service serves no log view (nothing to revoke). Needs the admin scope."""
        answer = await self._call("POST", "/logview/rotate", wire.LinksRotated)
        return answer.rotated

    async def exist_job(self, job_id: str) -> bool:
        try:
            await self.job_snapshot(job_id)
        except JobNotFound:
            return False
        return True

    async def get_job(self, job_id: str) -> JobHandle:
        snapshot = await self.job_snapshot(job_id)
        status = JobState(snapshot.status)
        return JobHandle(self, snapshot.id, snapshot.name, list(snapshot.tasks), status)

    def cached_status(self, job_id: str) -> JobState:
        """The status this client last saw the job in (from any answer or event)."""
        try:
            return self._statuses[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def job_snapshot(self, job_id: str, *, instances: bool = False) -> JobSnapshot:
        params = {"instances": "1"} if instances else None
        snapshot = await self._call("GET", job_path(job_id), JobSnapshot, params=params)
        self._seen(job_id, snapshot.status)
        return snapshot

    async def task_result(self, job_id: str, task: str) -> TaskResult:
        return await self._call("GET", task_path(job_id, task), TaskResult)

    async def wait_job(self, job_id: str) -> JobSnapshot:
        """The job's snapshot once it has ended (RuntimeClosed if the service stops first)."""
        snapshot = await self._call("GET", job_path(job_id) + "/wait", JobSnapshot)
        self._seen(job_id, snapshot.status)
        return snapshot

    async def _act(self, job_id: str, action: str) -> bool:
        done = await self._call("POST", f"{job_path(job_id)}/{action}", wire.JobActionDone)
        self._seen(job_id, done.status)
        return done.changed

    async def suspend_job(self, job_id: str) -> bool:
        return await self._act(job_id, "suspend")

    async def resume_job(self, job_id: str) -> bool:
        return await self._act(job_id, "resume")

    async def stop_job(self, job_id: str) -> None:
        await self._act(job_id, "stop")

    async def retry_job(self, job_id: str) -> bool:
        """Re-run what did not succeed of a FAILED or CANCELLED job (else JobNotRetryable)."""
        return await self._act(job_id, "retry")

    async def list_envs(self) -> list[wire.EnvInfo]:
        """Every compute env: slots, slots in use, instances waiting, Docker hosts."""
        return await self._call("GET", "/envs", list[wire.EnvInfo])

    async def update_env(self, name: str, change: wire.EnvChange) -> wire.EnvInfo:
        """Change an env's slots or Docker hosts now (stored: kept across restarts)."""
        path = env_path(name)
        return await self._call("PATCH", path, wire.EnvInfo, body=wire.encoder.encode(change))

    async def delete_job(self, job_id: str, *, stop: bool = False) -> None:
        """Delete an ended job (else JobNotFinal); ``stop``: stop it first."""
        path = job_path(job_id) + ("?stop=1" if stop else "")
        await self._call("DELETE", path, wire.JobDeleted)

    async def stop_instance(self, job_id: str, task: str, index: int) -> None:
        path = instance_path(job_id, task, index) + "/stop"
        await self._call("POST", path, wire.InstanceActionDone)

    async def instance_result(self, job_id: str, task: str, index: int) -> InstanceDetail:
        """One instance's result, with its stderr tail if it failed."""
        return await self._call("GET", instance_path(job_id, task, index), InstanceDetail)

    async def health(self) -> dict[str, Any]:
        """``/v1/health`` as plain data (as ``Runtime.health`` gives it), checked against
        ``wire.Health`` on the way."""
        health: dict[str, Any] = msgspec.to_builtins(
            await self._call("GET", "/health", wire.Health)
        )
        return health

    # -- streams -----------------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(self, job_id: str | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """Events as an iterator; once entered, every later event is sure to reach it.

        (``events()`` starts listening at its first iteration, so what happens before that
        may be missed; enter this first, then act, when the order matters.)
        """
        params = {"job": job_id} if job_id is not None else None
        async with self._request("GET", "/events", params=params) as response:
            yield _EventLines(response.content, self._seen_event)

    def job_events(self, job_id: str) -> AsyncIterator[Event]:
        """Every state change of a job from now on, ending after its final state."""
        return self.events(job_id)

    async def events(self, job_id: str | None = None) -> AsyncIterator[Event]:
        """Every state change (of one job, ending with it; or of all jobs, without end)."""
        async with self.subscribe(job_id) as events:
            async for event in events:
                yield event

    async def read_log(
        self,
        job_id: str,
        task: str,
        index: int,
        *,
        stream: LogStream = "stdout",
        offset: int = 0,
        limit: int | None = None,
    ) -> bytes:
        """Bytes of an instance's log from ``offset`` (empty if it has not started)."""
        params = {"offset": str(offset)}
        if limit is not None:
            params["limit"] = str(limit)
        path = f"{instance_path(job_id, task, index)}/logs/{stream}"
        async with self._request("GET", path, params=params) as response:
            return await response.read()

    async def log_chunks(
        self,
        job_id: str,
        task: str,
        index: int,
        *,
        stream: LogStream = "stdout",
        offset: int = 0,
        limit: int | None = None,
    ) -> AsyncIterator[bytes]:
        """``read_log``'s bytes, a chunk at a time as they arrive (memory: one chunk)."""
        params = {"offset": str(offset)}
        if limit is not None:
            params["limit"] = str(limit)
        path = f"{instance_path(job_id, task, index)}/logs/{stream}"
        async with self._request("GET", path, params=params) as response:
            async for chunk in response.content.iter_chunked(LOG_CHUNK):
                yield chunk

    async def log_size(
        self, job_id: str, task: str, index: int, *, stream: LogStream = "stdout"
    ) -> int:
        """How many bytes the instance's log holds now."""
        path = f"{instance_path(job_id, task, index)}/logs/{stream}"
        params = {"offset": "0", "limit": "0"}
        async with self._request("GET", path, params=params) as response:
            return int(response.headers.get(wire.SIZE_HEADER, "0"))

    async def follow_log(
        self, job_id: str, task: str, index: int, *, stream: LogStream = "stdout", offset: int = 0
    ) -> AsyncIterator[bytes]:
        """Chunks of an instance's log as they are written, until the instance has ended."""
        path = f"{instance_path(job_id, task, index)}/logs/{stream}"
        params = {"follow": "1", "offset": str(offset)}
        async with self._request("GET", path, params=params) as response:
            async for chunk in response.content.iter_any():
                yield chunk


class _EventLines:
    """Events decoded from a stream of JSON lines."""

    def __init__(self, content: aiohttp.StreamReader, seen: Callable[[Event], None]) -> None:
        self._content = content
        self._seen = seen

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        line = await self._content.readline()
        if not line:
            raise StopAsyncIteration
        event: Event = event_decoder.decode(line)
        self._seen(event)
        return event
