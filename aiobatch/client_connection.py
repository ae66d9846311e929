"""``ServiceConnection``: the HTTP session to a running service, over its control socket (or
TCP), with the service's error answers raised as the classes the runtime raised.

``Client`` builds the ``BatchAPI`` methods on it; this module knows requests, answers and
the API's paths, nothing of jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from aiobatch import wire
from aiobatch.config import default_socket_path
from aiobatch.errors import AiobatchError, ServiceUnavailable

T = TypeVar("T")
Params = Mapping[str, str] | Sequence[tuple[str, str]]  # a list repeats a name

CONNECT_TIMEOUT_S = 10.0
_error_decoder = msgspec.json.Decoder(wire.ErrorBody)


class RequestRefused(AiobatchError, ValueError):
    """The service refused a request as malformed (400 and the like): ``status`` says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ServiceConnection:
    """An HTTP session to an ``aiobatch serve`` process, open between ``async with``'s
    enter and exit.

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
        if socket is not None and url is not None:
            raise ValueError("give a socket or a url, not both")
        self.url = url.rstrip("/") if url is not None else None
        self.socket_path = None if url is not None else Path(socket or default_socket_path())
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    @property
    def address(self) -> str:
        """The socket path or URL, as errors name it."""
        return self.url or str(self.socket_path)

    async def __aenter__(self) -> Self:
        connector: aiohttp.BaseConnector
        if self.socket_path is not None:
            connector = aiohttp.UnixConnector(path=str(self.socket_path))
        else:
            connector = aiohttp.TCPConnector()
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            # No overall limit: waits and streams last as long as the job does.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, *, params: Params | None = None, body: bytes | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status; errors raised as the runtime raised them."""
        if self._session is None:
            raise RuntimeError("use the client as `async with Client(...) as client:`")
        headers = {"Content-Type": "application/json"} if body is not None else None
        base = self.url or "http://localhost"
        try:
            async with self._session.request(
                method, base + wire.API_PREFIX + path, params=params, data=body, headers=headers
            ) as response:
                if response.status >= 400:
                    raise await self._error(response)
                yield response
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise self._unavailable(exc) from exc

    async def _call(
        self,
        method: str,
        path: str,
        kind: type[T],
        *,
        params: Params | None = None,
        body: bytes | None = None,
    ) -> T:
        async with self._request(method, path, params=params, body=body) as response:
            data = await response.read()
        try:
            return msgspec.json.decode(data, type=kind)
        except msgspec.DecodeError as exc:
            raise AiobatchError(f"unexpected answer from {self.address}: {exc}") from None

    async def _error(self, response: aiohttp.ClientResponse) -> AiobatchError:
        body = await response.read()
        try:
            detail = _error_decoder.decode(body).error
        except msgspec.DecodeError:
            text = body[:200].decode(errors="replace")
            return AiobatchError(f"HTTP {response.status} from {self.address}: {text}")
        if detail.type not in wire.ERROR_CLASSES and 400 <= response.status < 500:
            return RequestRefused(detail.message, response.status)
        return wire.exception_from(detail)

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            return ServiceUnavailable(
                f"cannot reach the aiobatch service at {self.address}: {reason}"
            )
        return ServiceUnavailable(f"lost the aiobatch service at {self.address}: {exc}")


# -- the API's paths ---------------------------------------------------------------------------


def _quoted(text: str) -> str:
    # A name from argv that was not UTF-8 goes as its bytes; the service says what is wrong.
    return quote(text, safe="", errors="surrogateescape")


def job_path(job_id: str) -> str:
    return f"/jobs/{_quoted(job_id)}"


def task_path(job_id: str, task: str) -> str:
    return f"{job_path(job_id)}/tasks/{_quoted(task)}"


def instance_path(job_id: str, task: str, index: int) -> str:
    return f"{task_path(job_id, task)}/instances/{index}"


def env_path(name: str) -> str:
    return f"/envs/{quote(name, safe='')}"
