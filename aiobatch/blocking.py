"""The blocking API, for scripts and notebooks: ``aiobatch.connect(...)`` with PyODPS' names.

It is no second client: one anyio blocking portal (an event loop in a thread of its own)
per connection runs the async ``Client`` or an embedded ``Runtime``, and every method
hands its call to that loop and waits. So it works from a plain script and from a thread
whose own event loop is running (a Jupyter cell), and raises the async API's errors::

    with aiobatch.connect(state_dir="batch") as o:  # or socket=..., or url=... and token=...
        inst = o.submit("examples/diamond.yaml")
        inst.wait_for_success()                      # JobFailed if it did not succeed
        print(inst.get_task_progress("render").get_stage_progress_formatted_string())
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from aiobatch.api import (
    BatchAPI,
    JobHandle,
    JobSnapshot,
    JobSummary,
    SpecInput,
    TaskProgress,
    TaskResult,
)
from aiobatch.config import Config
from aiobatch.errors import AiobatchError
from aiobatch.spec import JobSpec
from aiobatch.states import JobState, Status, coarse_status

T = TypeVar("T")

# The fine-grained states each of PyODPS' statuses stands for, for list_instances(status=).
_STATES_OF: dict[Status, tuple[JobState, ...]] = {
    status: tuple(state for state in JobState if coarse_status(state) is status)
    for status in Status
}


class WaitTimeoutError(AiobatchError, TimeoutError):
    """``wait_for_completion``/``wait_for_success`` ran out of time (PyODPS' name); the job
    goes on. ``instance_id`` names it."""

    def __init__(self, instance_id: str, timeout: float) -> None:
        super().__init__(f"Wait completion of instance {instance_id} timed out after {timeout}s")
        self.instance_id = instance_id


class ConnectionClosed(AiobatchError, RuntimeError):
    """A call on a connection after ``close()``."""


def connect(
    *,
    socket: str | Path | None = None,
    url: str | None = None,
    token: str | None = None,
    state_dir: str | Path | None = None,
    config: Config | str | Path | None = None,
    logview: str | None = None,
) -> Connection:
    """A blocking connection: to a service (``socket=PATH``, or ``url=`` and ``token=``;
    nothing: the CLI's default socket), or to a runtime embedded in this process for as
    long as the connection is open (``state_dir=``, ``config=``, and ``logview="HOST:PORT"``
    to serve the jobs' pages as ``Runtime`` does). Close it, or use it as a context manager;
    one left open is closed when the interpreter exits."""
    if state_dir is not None or config is not None or logview is not None:
        if socket is not None or url is not None or token is not None:
            raise ValueError("give state_dir/config (embedded) or socket/url (a service), not both")
        from aiobatch.runtime import Runtime

        return Connection(lambda: Runtime(state_dir, config=config, logview=logview))
    if socket is not None and url is not None:
        raise ValueError("give a socket or a url, not both")
    from aiobatch.client import Client

    return Connection(lambda: Client(socket, url=url, token=token))


class Connection:
    """PyODPS' entry points over one portal: ``submit``, ``list_instances``,
    ``exist_instance``, ``get_instance``, ``stop_instance``. Safe to share between threads."""

    def __init__(self, make_api: Callable[[], Any]) -> None:
        stack = ExitStack()
        try:
            self._portal: BlockingPortal = stack.enter_context(
                start_blocking_portal(name="aiobatch-connection")
            )
            # Built and entered in the portal's loop, and left by the same task at close().
            api = self._portal.call(_make, make_api)
            manager: AbstractContextManager[BatchAPI] = self._portal.wrap_async_context_manager(api)
            self._api: BatchAPI = stack.enter_context(manager)
        except BaseException:
            stack.close()
            raise
        self._calls = _Calls()
        # Runs once: at close(), or at exit for a connection left open (its portal's thread
        # is a daemon: without this an embedded runtime would just vanish mid-write).
        self._close = weakref.finalize(self, _shut_down, self._portal, self._calls, stack)

    def __repr__(self) -> str:
        return f"<aiobatch.Connection {self._api!r}{'' if self._close.alive else ' closed'}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return not self._close.alive

    def close(self) -> None:
        """Close the client, or stop the embedded runtime cleanly, then end the portal. A
        call still waiting in another thread (``wait_for_completion``) raises
        ``ConnectionClosed``; the job itself goes on, as the async API leaves it."""
        self._close()

    @property
    def api(self) -> BatchAPI:
        """The async API behind this connection (call it only in the portal's loop)."""
        return self._api

    def call(self, func: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``await func(*args)`` in the connection's loop and return its result."""
        if not self._close.alive:
            raise ConnectionClosed("the connection is closed")
        result: T = self._portal.call(self._calls.run, func, *args)
        return result

    def submit(self, spec: SpecInput | JobSpec) -> Instance:
        """Validate, store and start a job (a file path, a mapping or a JobSpec)."""
        job = self.call(self._api.submit, spec)
        return Instance(self, job.id, job)

    def get_instance(self, id: str) -> Instance:
        """The job ``id``; ``JobNotFound`` if there is none."""
        job = self.call(self._api.get_job, id)
        return Instance(self, job.id, job)

    def exist_instance(self, id: str) -> bool:
        return self.call(self._api.exist_job, id)

    def stop_instance(self, id: str) -> None:
        """Stop the job ``id`` (its running instances are stopped, the job ends CANCELLED)."""
        self.call(self._api.stop_job, id)

    def delete_instance(self, id: str, stop: bool = False) -> None:
        """Delete the ended job ``id``: rows, events, work dirs, logs (``JobNotFinal`` if it
        has not ended, unless ``stop``: then it is stopped first)."""
        self.call(partial(self._api.delete_job, id, stop=stop))

    def list_instances(
        self,
        status: Status | JobState | str | None = None,
        limit: int | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Instance]:
        """Jobs newest first; ``status`` is PyODPS' (``Status.RUNNING`` or ``"Running"``)
        or a fine-grained ``JobState`` (``"FAILED"``); ``limit`` keeps the newest that many;
        ``labels``: only jobs that have every one of them."""
        states = _states(status)
        if states is None:
            jobs = self.call(self._list, None, limit, labels)
        else:
            # One query per fine-grained state, merged newest first.
            jobs = sorted(
                (job for state in states for job in self.call(self._list, state, limit, labels)),
                key=lambda job: job.seq,
                reverse=True,
            )[:limit]
        return [Instance(self, job.id) for job in jobs]

    async def _list(
        self, status: JobState | None, limit: int | None, labels: Mapping[str, str] | None
    ) -> list[JobSummary]:
        return await self._api.list_jobs(status=status, limit=limit, labels=labels)


def _states(status: Status | JobState | str | None) -> Iterable[JobState] | None:
    if status is None:
        return None
    if isinstance(status, Status):
        return _STATES_OF[status]
    if isinstance(status, JobState):
        return (status,)
    if status in {s.value for s in Status}:
        return _STATES_OF[Status(status)]
    if status.upper() in JobState.__members__:
        return (JobState(status.upper()),)
    names = [s.value for s in Status] + list(JobState.__members__)
    raise ValueError(f"status: one of {', '.join(names)}, got {status!r}")


async def _make(make_api: Callable[[], T]) -> T:
    return make_api()


class _Calls:
    """The calls in flight on a connection's loop, to cancel when it closes: a wait for a
    job would otherwise hold the portal open for as long as the job runs. Only the portal's
    loop touches it."""

    def __init__(self) -> None:
        self.scopes: set[anyio.CancelScope] = set()
        self.closing = False

    async def run(self, func: Callable[..., Awaitable[T]], *args: object) -> T:
        if not self.closing:
            with anyio.CancelScope() as scope:
                self.scopes.add(scope)
                try:
                    return await func(*args)
                finally:
                    self.scopes.discard(scope)
        raise ConnectionClosed("the connection was closed during the call")

    async def cancel(self) -> None:
        self.closing = True
        for scope in self.scopes:
            scope.cancel()


def _shut_down(portal: BlockingPortal, calls: _Calls, stack: ExitStack) -> None:
    try:
        portal.call(calls.cancel)
    finally:
        stack.close()


class Instance:
    """A job, the way PyODPS' ``Instance`` is used: every method blocks until it has its answer.
    The async ``JobHandle`` is ``handle`` (fetched at first use for a listed instance)."""

    def __init__(self, connection: Connection, id: str, handle: JobHandle | None = None) -> None:
        self._connection = connection
        self._id = id
        self._handle = handle

    def __repr__(self) -> str:
        return f"<aiobatch.Instance {self.id}>"

    @property
    def id(self) -> str:
        return self._id

    @property
    def handle(self) -> JobHandle:
        if self._handle is None:
            self._handle = self._connection.call(self._connection.api.get_job, self._id)
        return self._handle

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def state(self) -> JobState:
        """The fine-grained state, asked now."""
        return self._connection.call(self.handle.get_state)

    @property
    def status(self) -> Status:
        """PyODPS' ``Status``: RUNNING, SUSPENDED or TERMINATED, asked now."""
        return coarse_status(self.state)

    def is_terminated(self) -> bool:
        return self._connection.call(self.handle.is_terminated)

    def is_successful(self) -> bool:
        return self._connection.call(self.handle.is_successful)

    def is_running(self) -> bool:
        return self.status is Status.RUNNING

    def wait_for_completion(self, timeout: float | None = None) -> JobSnapshot:
        """Wait until the job ends, whatever the outcome; ``WaitTimeoutError`` (also a
        ``TimeoutError``) after ``timeout`` seconds, the job going on."""
        return self._connection.call(self._wait, self.handle.wait_for_completion, timeout)

    def wait_for_success(self, timeout: float | None = None) -> JobSnapshot:
        """As ``wait_for_completion``, then ``JobFailed`` naming the failed tasks unless the
        job SUCCEEDED."""
        return self._connection.call(self._wait, self.handle.wait_for_success, timeout)

    async def _wait(
        self, wait: Callable[[], Awaitable[JobSnapshot]], seconds: float | None
    ) -> JobSnapshot:
        with anyio.move_on_after(seconds) as scope:
            return await wait()
        assert scope.cancelled_caught and seconds is not None
        raise WaitTimeoutError(self.id, seconds)

    def get_task_names(self) -> list[str]:
        return self.handle.get_task_names()

    def get_task_result(self, name: str) -> TaskResult:
        """``TaskNotFound`` for a name the job has not."""
        return self._connection.call(self.handle.get_task_result, name)

    def get_task_results(self) -> dict[str, TaskResult]:
        return self._connection.call(self.handle.get_task_results)

    def get_task_progress(self, name: str) -> TaskProgress:
        """With ``get_stage_progress_formatted_string()``; ``TaskNotFound`` for a name the
        job has not."""
        return self._connection.call(self.handle.get_task_progress, name)

    def get_logview_address(self, hours: float = 24) -> str | None:
        """The job's page, read-only, for ``hours``; None when no log view is served."""
        return self._connection.call(self._logview, hours)

    async def _logview(self, hours: float) -> str | None:
        return await self.handle.get_logview_address(hours=hours)

    def stop(self) -> None:
        self._connection.call(self.handle.stop)

    def suspend(self) -> bool:
        return self._connection.call(self.handle.suspend)

    def resume(self) -> bool:
        return self._connection.call(self.handle.resume)

    def retry(self) -> bool:
        """Re-run what did not succeed of a FAILED or CANCELLED job (``JobNotRetryable``
        otherwise)."""
        return self._connection.call(self.handle.retry)

    def stop_instance(self, task: str, index: int) -> None:
        """Stop one instance of a task (PyODPS has no such thing; aiobatch's handle has)."""
        self._connection.call(self.handle.stop_instance, task, index)
