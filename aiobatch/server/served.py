"""What the server serves: the API, plus what only an in-process runtime can offer."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

from anyio.streams.memory import MemoryObjectReceiveStream

from aiobatch.api import BatchAPI, InstanceResult, LogStream, TaskResult
from aiobatch.events import Event


class ServedAPI(BatchAPI, Protocol):
    """The API, with streams that cut off a consumer too far behind, and log files by path.

    Entering ``subscribe`` registers the stream at once, so it is registered before its
    response starts: a client that has the headers sees every event from then on.
    (``events()`` only subscribes at its first iteration, with no way to tell when.)
    ``log_path`` lets a log be streamed from its file in bounded chunks. ``Runtime`` is one.
    """

    def subscribe(
        self, job_id: str | None = None, *, limit: float = ...
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[Event]]: ...

    def log_path(self, job_id: str, task: str, index: int, stream: LogStream) -> Path: ...

    async def task_result(self, job_id: str, task: str, *, instances: bool = True) -> TaskResult:
        """Without ``instances``, the task's counts and failures' stderr tails alone."""
        ...

    async def instance_results(
        self, job_id: str, task: str, start: int, stop: int
    ) -> list[InstanceResult]:
        """The results of the task's instances ``start`` to ``stop`` (not included)."""
        ...

    async def metrics_text(self) -> bytes: ...
