"""``ControlServer``: the listeners, the aiohttp application and its middlewares, start and stop."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import msgspec
from aiohttp import web

from aiobatch import wire
from aiobatch.config import ServerConfig, default_socket_path
from aiobatch.errors import ConfigError
from aiobatch.links import LinkKeys
from aiobatch.listeners import Listeners, bind_listeners
from aiobatch.logging import get_logger
from aiobatch.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aiobatch.server.auth import SESSION, Auth, Session, authorize
from aiobatch.server.bodies import defer_continue
from aiobatch.server.envs import EnvHandlers
from aiobatch.server.events import EventHandlers
from aiobatch.server.jobs import JobHandlers
from aiobatch.server.limits import (
    FD_SHARE,
    LINGER_S,
    MAX_HEADERS,
    MAX_LINE_BYTES,
    GuardedSite,
    Limits,
    Listener,
    Peers,
    raise_open_files_limit,
)
from aiobatch.server.logs import LogHandlers
from aiobatch.server.metrics_listener import LISTENER_NAME, serve_metrics
from aiobatch.server.params import query
from aiobatch.server.responses import error_response, json_response
from aiobatch.server.served import ServedAPI
from aiobatch.server.streams import LINK_EPOCH, LongRequests
from aiobatch.server.ui import add_ui

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = get_logger("aiobatch.server")

SHUTDOWN_GRACE_S = 5.0  # short requests in flight get this long to finish at shutdown


class ControlServer:
    """Serves a ``Runtime`` (any ``ServedAPI``) on the control socket while the context is open.

    ``async with Runtime(...) as rt, ControlServer(rt, config.server) as server: ...``
    """

    def __init__(
        self,
        api: ServedAPI,
        config: ServerConfig | None = None,
        *,
        socket: str | Path | None = None,
        unix: bool = True,
        listeners: Listeners | None = None,
        limits: Limits | None = None,
        links: LinkKeys | None = None,
    ) -> None:
        """``unix=False``: the TCP listener only (the log view of an embedded runtime).
        ``listeners``: bound already (see ``bind_listeners``), served and closed by this
        server; without them it binds its own. ``limits``: per connection (the module's
        constants by default). ``links``: the key of log-view links (none: no link is
        accepted)."""
        self.config = config or ServerConfig()
        if self.config.http is not None and not (self.config.token or self.config.tokens):
            raise ConfigError("$.server.tokens: a token is required when $.server.http is set")
        if not unix and self.config.http is None:
            raise ConfigError("$.server.http: required without the unix socket")
        self.api = api
        self._unix = unix if listeners is None else listeners.unix is not None
        self._socket = Path(socket) if socket is not None else None
        self._given_listeners = listeners
        self.socket_path = Path(socket or self.config.socket or default_socket_path())
        self.http_url: str | None = None  # set once the TCP listener is up
        self.metrics_url: str | None = None  # and the metrics listener (``server.metrics``)
        self._auth = Auth(self.config, links)
        self._limits = limits or Limits()
        self._peers = Peers()
        self._listeners: list[Listener] = []
        self._long = LongRequests()
        self._stack: AsyncExitStack | None = None
        self._version = _version()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        files = raise_open_files_limit()
        limits = msgspec.structs.replace(
            self._limits, connections=min(self._limits.connections, files // FD_SHARE)
        )
        async with AsyncExitStack() as stack:
            listeners = self._given_listeners
            if listeners is None:
                listeners = bind_listeners(self.config, socket=self._socket, unix=self._unix)
            stack.callback(listeners.close)  # ours now, given or not
            if listeners.socket_path is not None:
                self.socket_path = listeners.socket_path
            self.http_url, self.metrics_url = listeners.http_url, listeners.metrics_url
            if listeners.tcp is not None:
                self._auth.port = str(listeners.tcp.getsockname()[1])
            sockets = [
                (name, sock)
                for name, sock in (("unix", listeners.unix), ("tcp", listeners.tcp))
                if sock is not None
            ]
            options: dict[str, Any] = {
                "access_log": None,
                # Ours decides (limits.Connection, which counts it); aiohttp's only backs it up.
                "keepalive_timeout": 2 * limits.idle_timeout_s,
                "lingering_time": LINGER_S,
                "max_line_size": MAX_LINE_BYTES,
                "max_field_size": MAX_LINE_BYTES,
                "max_headers": MAX_HEADERS,
            }
            runner = web.AppRunner(
                self._application(limits), shutdown_timeout=SHUTDOWN_GRACE_S, **options
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            for name, sock in sockets:
                listener = Listener(name, limits, self._peers)
                self._listeners.append(listener)
                await GuardedSite(runner, sock, listener, options).start()
            if listeners.metrics is not None:
                listener = Listener(LISTENER_NAME, limits, self._peers)
                self._listeners.append(listener)
                await serve_metrics(
                    stack,
                    listeners.metrics,
                    listener,
                    options,
                    metrics=self._metrics,
                    errors=self._errors,
                    shutdown_timeout=SHUTDOWN_GRACE_S,
                )
            self._stack = stack.pop_all()
        socket_path = str(self.socket_path) if self._unix else None
        log.info(
            "server_started",
            socket=socket_path,
            http=self.http_url,
            metrics=self.metrics_url,
            connections=limits.connections,
            open_files=files,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        assert stack is not None, "not entered"
        await stack.aclose()
        log.info("server_stopped", socket=str(self.socket_path) if self._unix else None)

    async def _on_shutdown(self, app: web.Application) -> None:
        self._long.close()

    def server_statistics(self) -> wire.ServerStatistics:
        return wire.ServerStatistics(
            version=self._version,
            pid=os.getpid(),
            socket=str(self.socket_path),
            http=self.http_url,
            long_requests=len(self._long),  # streams and waits
            connections={
                listener.name: wire.ListenerStatistics(
                    open=listener.open,
                    limit=listener.limits.connections,
                    refused=listener.refused,
                    timed_out=listener.timed_out,
                )
                for listener in self._listeners
            },
        )

    def statistics(self) -> dict[str, Any]:
        """``server_statistics()`` as plain data."""
        result: dict[str, Any] = msgspec.to_builtins(self.server_statistics())
        return result

    def _application(self, limits: Limits) -> web.Application:
        app = web.Application(
            client_max_size=wire.MAX_BODY_BYTES,
            middlewares=[self._errors, self._authorize],
        )
        app.on_shutdown.append(self._on_shutdown)
        routes = [
            web.get(wire.API_PREFIX + "/health", self._health),
            web.get(wire.METRICS_PATH, self._metrics),
            web.get(wire.API_PREFIX + "/openapi.json", self._openapi),
            web.get(wire.API_PREFIX + "/session", self._session),
            web.post(wire.API_PREFIX + "/logview/rotate", self._rotate_links),
            *JobHandlers(self.api, self._long, limits).routes(),
            *EnvHandlers(self.api, limits).routes(),
            *LogHandlers(self.api, self._long).routes(),
            *EventHandlers(self.api, self._long).routes(),
        ]
        for route in routes:  # `100 Continue` only once the peer and the length are accepted
            route.kwargs.setdefault("expect_handler", defer_continue)
        app.add_routes(routes)
        add_ui(app, expect_handler=defer_continue)
        return app

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as a JSON error; every request logged at debug; the connection's
        deadline held while the request is served."""
        started = time.perf_counter()
        connection = self._peers.of(request.transport)
        if connection is not None:
            connection.request_started()
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                response = error_response(exc, request)
            # Sent here: the connection is busy until it is out. (A file's answer prepares
            # itself anew each time it is asked: aiohttp sends it.)
            if isinstance(response, web.Response) and not response.prepared:
                with contextlib.suppress(ConnectionError):  # the peer went meanwhile
                    await response.prepare(request)
                    await response.write_eof()
        finally:
            if connection is not None:
                connection.request_ended()
        log.debug(
            "request_handled",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(1000 * (time.perf_counter() - started), 2),
        )
        return response

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who the peer is (``Auth.check``) and whether its scope covers the route (``authorize``
        with ``wire.ROUTE_ACCESS``). Before any body."""
        session = self._auth.check(request)
        if not isinstance(session, Session):
            return session
        authorize(request, session)
        request[SESSION] = session
        if session.job is not None:  # a link: its long requests end if links are revoked
            request[LINK_EPOCH] = self._long.revocations
        return await handler(request)

    # -- handlers of the server itself -------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        query(request)
        # The runtime's part comes as a mapping (BatchAPI.health); the answer is the struct.
        health = {**await self.api.health(), "server": self.server_statistics()}
        return json_response(msgspec.convert(health, wire.Health))

    async def _metrics(self, request: web.Request) -> web.Response:
        query(request)
        text = await self.api.metrics_text()
        return web.Response(body=text, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _session(self, request: web.Request) -> web.Response:
        query(request)
        session = request[SESSION]
        actions = [a for a in wire.JOB_ACTIONS if wire.scope_covers(session.scope, "operate")]
        answer = wire.Session(
            scope=session.scope, actions=actions, job=session.job, expires=session.expires
        )
        return json_response(answer)

    async def _rotate_links(self, request: web.Request) -> web.Response:
        """A new key for log-view links: every link made so far stops working at once."""
        query(request)
        links = self._auth.links
        if links is not None:
            await anyio.to_thread.run_sync(links.rotate)
            self._long.revoke_links()
            log.warning("logview_links_rotated")
        return json_response(wire.LinksRotated(rotated=links is not None))

    async def _openapi(self, request: web.Request) -> web.Response:
        query(request)
        from aiobatch import openapi  # written from the wire structs; only when asked for

        return json_response(openapi.document())


def _version() -> str:
    try:
        return importlib.metadata.version("aiobatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
