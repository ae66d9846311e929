"""Bounded work per peer: a connection limit per listener, a time limit for a request's
headers, one for an idle keep-alive connection, one for a peer that takes none of its
answer, and the process's file limit raised.

A peer past the limit is closed at once (not queued, holding a file descriptor); a peer that
has not sent a request's headers within ``header_timeout_s`` of connecting, or the next
request's headers within ``idle_timeout_s`` of its last answer (all of it sent), is closed.
A request in progress (a long wait, a stream, a large answer) is not timed out here, unless
its peer takes nothing of it for ``write_stall_s``: our send buffer full for that long.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

from aiobatch.listeners import listen_backlog
from aiobatch.logging import get_logger
from aiobatch.server.protocol import QuietRequestHandler

log = get_logger("aiobatch.server")

MAX_CONNECTIONS = 1024  # open connections per listener (fewer if the file limit is low)
# Open TCP connections from one address: no one peer holds every connection of a listener.
MAX_CONNECTIONS_PER_ADDRESS = 128
FD_SHARE = 4  # a listener holds at most this fraction of the process's file limit
HEADER_TIMEOUT_S = 10.0  # from connecting to a complete request line and headers
IDLE_TIMEOUT_S = 75.0  # from an answer to the next request's complete headers
WRITE_STALL_S = 75.0  # the send buffer full, the peer taking nothing of it
BODY_TIMEOUT_S = 30.0  # from a request's headers to the end of its body
LINGER_S = 1.0  # how long an unread request body is drained (and dropped) after the answer
MAX_LINE_BYTES = 8190  # a request line, and a header line (aiohttp refuses longer: 400)
MAX_HEADERS = 32  # header lines in one request (more: 400); with the line limit: 256 KiB


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """What one peer may hold of the server. Module constants by default; tests shorten them."""

    connections: int = MAX_CONNECTIONS
    connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    header_timeout_s: float = HEADER_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    write_stall_s: float = WRITE_STALL_S


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (systemd's default soft limit, 1024, is
    for select(); we use epoll). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # hard is RLIM_INFINITY where the kernel caps it lower
            return soft
        log.info("open_files_limit_raised", soft=soft, now=hard)
    return hard


class Peers:
    """The open connections of every listener, found by their transport."""

    def __init__(self) -> None:
        self._by_transport: dict[asyncio.BaseTransport, Connection] = {}

    def of(self, transport: asyncio.BaseTransport | None) -> Connection | None:
        return None if transport is None else self._by_transport.get(transport)

    def __len__(self) -> int:
        return len(self._by_transport)


class Listener:
    """One listening socket's connections, against its limits."""

    def __init__(self, name: str, limits: Limits, peers: Peers) -> None:
        self.name, self.limits, self.peers = name, limits, peers
        self.open = 0
        self.by_address: dict[str, int] = {}  # open TCP connections, by the peer's address
        self.refused = 0  # connections closed at once: the listener, or its peer's share, full
        # Connections closed for sending no request, or taking nothing of an answer, in time.
        self.timed_out = 0

    def protocol_factory(self, handler: Callable[[], asyncio.Protocol]) -> Connection:
        return Connection(self, handler())


class Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, inside a limit and a deadline for each request."""

    def __init__(self, listener: Listener, inner: asyncio.Protocol) -> None:
        self.listener, self.inner = listener, inner
        self.transport: asyncio.Transport | None = None
        self._accepted = False
        self._in_flight = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._stall: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes of answers still in our buffer when the deadline was set
        self._address: str | None = None  # a TCP peer's
        self._stalled_at = 0  # bytes in our buffer when the stall timer was set

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        listener = self.listener
        peer = transport.get_extra_info("peername")
        # A unix socket's peers are users the kernel vouches for: only TCP peers are counted.
        self._address = peer[0] if isinstance(peer, tuple) else None
        held = listener.by_address.get(self._address, 0) if self._address is not None else 0
        limits = listener.limits
        if listener.open >= limits.connections or held >= limits.connections_per_address:
            listener.refused += 1
            transport.abort()  # its file descriptor is freed now, not after a timeout
            return
        self._accepted, self.transport = True, transport
        listener.open += 1
        if self._address is not None:
            listener.by_address[self._address] = held + 1
        listener.peers._by_transport[transport] = self
        self._arm(listener.limits.header_timeout_s)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._accepted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._accepted else None

    def pause_writing(self) -> None:
        if self._accepted and self._stall is None:
            self._arm_stall()
        self.inner.pause_writing()

    def _arm_stall(self) -> None:
        loop = asyncio.get_running_loop()
        self._stall = loop.call_later(self.listener.limits.write_stall_s, self._stalled)
        self._stalled_at = self._unsent_now()

    def resume_writing(self) -> None:
        self._unstall()
        self.inner.resume_writing()

    def _unstall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self.transport is not None and self._accepted:
            if self._unsent_now() < self._stalled_at:
                self._arm_stall()  # it takes some, slowly: a slow reader, not a stalled one
                return
            self._time_out()  # its stream, or its answer, goes with it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._accepted:
            return
        self._accepted = False
        self._disarm()
        self._unstall()
        self.listener.open -= 1
        if self._address is not None:
            left = self.listener.by_address.pop(self._address) - 1
            if left:
                self.listener.by_address[self._address] = left
        if self.transport is not None:
            self.listener.peers._by_transport.pop(self.transport, None)
        self.inner.connection_lost(exc)

    # -- called around each request (by the server's middleware) ------------------------------

    def request_started(self) -> None:
        """The request's headers are all in: no deadline while it is served."""
        self._in_flight += 1
        self._disarm()

    def request_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._accepted:
            self._arm(self.listener.limits.idle_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(seconds, self._expire)
        # The end of the last answer may still wait in our buffer: while the peer takes
        # some of it, the connection is not idle.
        self._unsent = self._unsent_now()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._in_flight == 0 and self.transport is not None and self._accepted:
            unsent = self._unsent_now()
            if unsent and unsent < self._unsent:  # the peer is still taking the answer
                self._arm(self.listener.limits.idle_timeout_s)
                return
            self._time_out()

    def _unsent_now(self) -> int:
        """Bytes of our answers waiting in our buffer for the peer to take."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _time_out(self) -> None:
        assert self.transport is not None
        self.listener.timed_out += 1
        self.transport.abort()


class GuardedSite(web.SockSite):
    """aiohttp's site for a bound socket, its connections kept to a ``Listener``'s limits.

    ``options``: of each connection's ``RequestHandler`` (the runner's own handler options:
    the site makes its connections itself, with their answer to unparsable requests)."""

    __slots__ = ("_listener", "_options")

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        listener: Listener,
        options: Mapping[str, Any],
    ) -> None:
        super().__init__(runner, sock, backlog=listen_backlog())
        self._listener = listener
        self._options = dict(options)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        listener, options = self._listener, self._options
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            return QuietRequestHandler(server, loop=loop, **options)

        self._server = await loop.create_server(
            lambda: listener.protocol_factory(connection), sock=self._sock, backlog=self._backlog
        )
