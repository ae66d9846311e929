"""Long requests (waits, event and log streams): each cancelled when its peer goes away or
the server shuts down, so none outlives either."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TypeVar

import anyio
from aiohttp import web

from aiobatch.errors import JobNotFound, RuntimeClosed
from aiobatch.logging import get_logger
from aiobatch.server.auth import SESSION
from aiobatch.server.responses import RequestError

T = TypeVar("T")

log = get_logger("aiobatch.server")

PEER_POLL_S = 1.0  # how often a long request checks that its peer is still there
# The revocations of links there had been when a request made with one was let in.
LINK_EPOCH = web.RequestKey("link_epoch", int)


class LongRequests:
    """The long requests in flight, to end them all at shutdown."""

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self._by_link: set[anyio.CancelScope] = set()  # those a log-view link made
        self._revoked: set[anyio.CancelScope] = set()
        self.revocations = 0
        self.closing = False

    def __len__(self) -> int:
        return len(self._scopes)

    def close(self) -> None:
        """Called once the listeners are closed: end streams and pending waits."""
        self.closing = True
        for scope in self._scopes:
            scope.cancel()

    def revoke_links(self) -> None:
        """Every link was revoked: what links are still sent ends now (their streams cut)."""
        self.revocations += 1  # a link let in before, not yet here, is refused when it comes
        self._revoked |= self._by_link
        for scope in self._by_link:
            scope.cancel()

    async def run(self, request: web.Request, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``, cancelled when the service shuts down or the peer goes away.

        Raises RuntimeClosed if it was cancelled (when the peer left there is nobody to tell,
        so that does not matter), RequestError (401) if the link it was asked with expired
        or was revoked meanwhile; ``work``'s own errors come through as they are.
        """
        result: list[T] = []
        failure: list[Exception] = []
        session = request.get(SESSION)
        link = session if session is not None and session.job is not None else None
        if link is not None and request.get(LINK_EPOCH, self.revocations) != self.revocations:
            raise RequestError(HTTPStatus.UNAUTHORIZED, "the link expired or was revoked")

        async def run(scope: anyio.CancelScope) -> None:
            try:
                result.append(await work())
            except Exception as exc:  # re-raised below, not wrapped in an exception group
                failure.append(exc)
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                scope = tg.cancel_scope
                self._scopes.add(scope)
                if link is not None:  # a link shows nothing once it has expired or gone
                    self._by_link.add(scope)
                    if link.expires is not None:
                        scope.deadline = anyio.current_time() + link.expires - time.time()
                if self.closing:
                    scope.cancel()
                tg.start_soon(run, scope)
                tg.start_soon(watch_peer, request, scope)
        finally:
            self._scopes.discard(scope)
            self._by_link.discard(scope)
            revoked = scope in self._revoked
            self._revoked.discard(scope)
        if failure:
            raise failure[0]
        if not result:
            if link is not None and (revoked or time.time() >= (link.expires or math.inf)):
                raise RequestError(HTTPStatus.UNAUTHORIZED, "the link expired or was revoked")
            raise RuntimeClosed("the service is shutting down")
        return result[0]

    async def stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        pump: Callable[[web.StreamResponse], Awaitable[None]],
    ) -> web.StreamResponse:
        """``response`` (its headers set), that ``pump`` writes to until it is done or we are."""

        async def run() -> None:
            await response.prepare(request)  # registered as a long request before this
            if request.method != "HEAD":  # the headers alone: a body would break the framing
                await pump(response)

        try:
            await self.run(request, run)
        except RuntimeClosed:
            if not response.prepared:
                raise  # shutting down before the stream began: 503 like any late request
            if not response.chunked:  # cut short of its Content-Length: must not look whole
                _abort(request)
                return response
        except ConnectionError:
            return response  # the peer went away mid-stream
        except (RequestError, JobNotFound):
            if not response.prepared:
                raise
            _abort(request)  # the link ended, or the job was deleted: so does what was sent
            return response
        except Exception:
            if not response.prepared:
                raise
            # The status is sent: the error cannot become a JSON response any more.
            log.exception("stream_failed", path=request.path)
            _abort(request)  # a broken stream, not one that looks complete
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


def _abort(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()


def chunked(content_type: str) -> web.StreamResponse:
    """A response of unknown length, streamed as it is made."""
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = content_type
    response.enable_chunked_encoding()
    return response


async def watch_peer(request: web.BaseRequest, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the peer has gone.

    aiohttp neither cancels a handler whose peer left nor offers an event for it (for a
    request without a body), so the transport is looked at now and then.
    """
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await anyio.sleep(PEER_POLL_S)
    scope.cancel()


@asynccontextmanager
async def closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator even when its consumer stops early (the peer went away)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
