"""The control server of ``aiobatch serve``: HTTP/1.1 + JSON over a unix socket (and TCP).

The unix socket is mode 0600 and every request's peer uid (SO_PEERCRED) must be the
service's own or one of ``server.allowed_uids``, else 403. The optional TCP listener
(``server.http = "HOST:PORT"``) wants ``Authorization: Bearer TOKEN`` on every request,
else 401. Bodies are JSON (results are the API's structs: ``JobSnapshot``, ``JobSummary``,
``TaskResult``, ``InstanceResult``); ``ID`` is a job id, ``TASK`` a task name, ``N`` an
instance index.

======  ====================================================  ===================================
method  path and parameters                                   200/201 response
======  ====================================================  ===================================
GET     /v1/health                                            ``{"status": "ok"|"closing",
                                                              "jobs": {STATE: n}, "compute_envs",
                                                              "commits", "server": {"version",
                                                              "pid", "long_requests", ...}}``
POST    /v1/jobs  body: a job spec, JSON (default), YAML      201 ``{"id", "name", "status",
        (``Content-Type: application/yaml`` or                "tasks": [NAME, ...]}``, and
        ``text/yaml``) or TOML (``application/toml``)         ``Location: /v1/jobs/ID``
GET     /v1/jobs?status=STATE&limit=N                         ``[JobSummary, ...]``, newest first
GET     /v1/jobs/ID?instances=1                               ``JobSnapshot`` (tasks' ``instances``
                                                              only with ``instances=1``)
GET     /v1/jobs/ID/wait                                      ``JobSnapshot`` once the job has
                                                              ended (long poll)
POST    /v1/jobs/ID/stop|suspend|resume|retry                 ``{"id", "action", "changed",
                                                              "status"}``
GET     /v1/jobs/ID/tasks/TASK                                ``TaskResult`` with ``instances``
                                                              and ``stderr_tails`` {N: [line]}
GET     /v1/jobs/ID/tasks/TASK/instances/N                    ``InstanceResult`` plus
                                                              ``stderr_tail`` (failed ones)
POST    /v1/jobs/ID/tasks/TASK/instances/N/stop               ``{"id", "task", "index",
                                                              "action": "stop"}``
GET     /v1/jobs/ID/tasks/TASK/instances/N/logs/stdout|stderr raw bytes (text/plain) from
        ?offset=BYTES&limit=BYTES  or  ?follow=1&offset=BYTES ``offset``; with ``follow=1``: a
                                                              chunked stream of bytes until the
                                                              instance has ended
GET     /v1/events?job=ID                                     application/x-ndjson: one event
                                                              per line (``{"type":
                                                              "JobStateChanged", ...}``), from
                                                              now on; with ``job``: that job's,
                                                              ending after its final state (at
                                                              once if it has already ended)
======  ====================================================  ===================================

Errors are ``{"error": {"type", "message"}}`` plus ``errors`` (every ``$.field.path:
problem``) for ``SpecError`` and ``job_id`` / ``status`` where they apply:

- 400 ``BadRequest``: a body that is not valid JSON (YAML, TOML), an unknown or malformed
  query parameter; 401 ``Unauthorized``; 403 ``Forbidden``; 405 ``MethodNotAllowed``;
- 404 ``JobNotFound``, ``TaskNotFound``, ``InstanceNotFound``, or ``NotFound`` (no route);
- 409 ``JobNotRetryable``; 413 ``RequestTooLarge`` (body over 1 MiB); 422 ``SpecError``;
- 503 ``RuntimeClosed``: the runtime takes no new work, or the service is shutting down
  (a pending ``wait`` gets this); 507 ``StateDirUnwritable``: the state dir's disk is full
  (or read-only, failing), so no job is accepted until there is space (queries answer);
  500 ``InternalError``, the details in the service's log.

A refused request stores nothing. Streams end cleanly (final chunk) when the service shuts
down, so a watcher sees the end of its stream, not a broken connection.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib.metadata
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import msgspec
import structlog
from aiohttp import web
from anyio.streams.memory import MemoryObjectReceiveStream

from aiobatch import wire
from aiobatch.api import BatchAPI, LogStream
from aiobatch.config import ServerConfig, default_socket_path
from aiobatch.errors import (
    AiobatchError,
    ConfigError,
    JobNotFound,
    RuntimeClosed,
    SpecError,
)
from aiobatch.events import Event, JobStateChanged, event_encoder
from aiobatch.listeners import bind_tcp_socket, bind_unix_socket
from aiobatch.states import JOB_TERMINAL, JobState

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("aiobatch.server")

UI_DIR = Path(__file__).with_name("ui")  # the log view's pages and assets
# Cookie names end in the listener's port: every port of a host shares cookies, and a
# one-off `run --ui` page must not replace the service's.
TOKEN_COOKIE, CSRF_COOKIE, CSRF_HEADER = "aiobatch_session_", "aiobatch_csrf_", "X-Aiobatch-CSRF"
# The pages run only their own files and talk only to this server; nothing inline.
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
PEER_POLL_S = 1.0  # how often a long request checks that its peer is still there
SHUTDOWN_GRACE_S = 5.0  # short requests in flight get this long to finish at shutdown
STREAM_BATCH = 1000  # events at most in one write of an event stream
# A watcher this many events behind (stopped, or too slow) is cut off, not buffered for
# without bound: its stream ends, and it can reconnect and resync.
STREAM_BUFFER = 100_000
CLIENT_GONE = 499  # logged (never sent) when the peer left before the answer was ready
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
HTTP_ERROR_TYPES = {
    HTTPStatus.BAD_REQUEST: "BadRequest",
    HTTPStatus.UNAUTHORIZED: "Unauthorized",
    HTTPStatus.FORBIDDEN: "Forbidden",
    HTTPStatus.NOT_FOUND: "NotFound",
    HTTPStatus.METHOD_NOT_ALLOWED: "MethodNotAllowed",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "RequestTooLarge",
}


class ServedAPI(BatchAPI, Protocol):
    """What the server serves: the API, with streams that cut off a consumer too far behind.

    Entering ``subscribe`` registers the stream at once, so it is registered before its
    response starts: a client that has the headers sees every event from then on.
    (``events()`` only subscribes at its first iteration, with no way to tell when.)
    ``Runtime`` is one.
    """

    def subscribe(
        self, job_id: str | None = None, *, limit: float = ...
    ) -> AbstractAsyncContextManager[MemoryObjectReceiveStream[Event]]: ...


class RequestError(Exception):
    """A request refused at the edge, before the API is called."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        self.status, self.message, self.headers = status, message, headers
        super().__init__(message)


def peer_uid(request: web.BaseRequest) -> int | None:
    """The uid of the process at the other end of a unix connection; None for TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    _pid, uid, _gid = PEERCRED.unpack(creds)
    return int(uid)


# -- request parsing ------------------------------------------------------------------------


def query(request: web.BaseRequest, *allowed: str) -> Mapping[str, str]:
    """The query parameters, refusing any this endpoint does not know (a typo is an error)."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"unknown query parameter {unknown[0]!r} (known: {known})"
        )
    return request.query


def int_param(params: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < minimum:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"{name}: expected an integer >= {minimum}, got {raw!r}"
        )
    return int(raw)


def flag_param(params: Mapping[str, str], name: str) -> bool:
    raw = params.get(name, "0").lower()
    if raw not in ("0", "1", "true", "false", "yes", "no"):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name}: expected 1 or 0, got {raw!r}")
    return raw in ("1", "true", "yes")


def state_param(params: Mapping[str, str], name: str) -> JobState | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return JobState(raw.upper())
    except ValueError:
        states = ", ".join(JobState)
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"{name}: expected one of {states}, got {raw!r}"
        ) from None


async def read_spec(request: web.Request) -> Mapping[str, Any]:
    """The job spec in a request body; nothing else (a string would be taken for a path)."""
    if request.content_length is not None and request.content_length > wire.MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(wire.MAX_BODY_BYTES, request.content_length)
    body = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    if not body.strip():
        raise RequestError(HTTPStatus.BAD_REQUEST, "empty request body: send a job spec")
    data = parse_body(body, request.content_type)
    if not isinstance(data, Mapping):
        got = type(data).__name__
        raise SpecError([f"$: expected a mapping at the top level, got {got}"])
    return data


def parse_body(body: bytes, content_type: str) -> Any:
    if content_type in YAML_TYPES:
        import yaml  # only YAML bodies pay for importing PyYAML

        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid YAML: {exc}") from None
    if content_type == "application/toml":
        try:
            return msgspec.toml.decode(body)
        except msgspec.DecodeError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid TOML: {exc}") from None
    try:  # JSON whatever the type says: `curl -d @job.json` sends it as a form
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"body is not valid JSON: {exc} (for YAML, send Content-Type: application/yaml)",
        ) from None


# -- responses ------------------------------------------------------------------------------


def json_response(
    body: Any, status: int = HTTPStatus.OK, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=wire.encoder.encode(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: BaseException, request: web.BaseRequest) -> web.Response:
    """The JSON error for anything a handler raised. Never a traceback."""
    if isinstance(exc, RequestError):
        body = wire.error_body(HTTP_ERROR_TYPES[HTTPStatus(exc.status)], exc.message)
        return json_response(body, exc.status, exc.headers)
    if isinstance(exc, web.HTTPException):
        return http_error_response(exc, request)
    if isinstance(exc, AiobatchError) and (mapped := wire.error_response(exc)) is not None:
        return json_response(mapped[1], mapped[0])
    log.error("request_failed", method=request.method, path=request.path, exc_info=exc)
    body = wire.error_body("InternalError", "internal error; the service log has the details")
    return json_response(body, HTTPStatus.INTERNAL_SERVER_ERROR)


def http_error_response(exc: web.HTTPException, request: web.BaseRequest) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as JSON errors."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == HTTPStatus.NOT_FOUND:
        message = f"no such endpoint: {request.method} {request.path}"
    elif exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = exc.headers.get("Allow", "")
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    elif exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        message = f"request body larger than {wire.MAX_BODY_BYTES} bytes"
    else:
        message = exc.text or exc.reason
    kind = HTTP_ERROR_TYPES.get(HTTPStatus(exc.status), exc.reason.replace(" ", ""))
    return json_response(wire.error_body(kind, message), exc.status, headers)


def encode_line(event: Event) -> bytes:
    return event_encoder.encode(event) + b"\n"


def ends_job(event: Event) -> bool:
    return isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL


@asynccontextmanager
async def closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close an async generator even when its consumer stops early (the peer went away)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def watch_peer(request: web.BaseRequest, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once the peer has gone.

    aiohttp neither cancels a handler whose peer left nor offers an event for it (for a
    request without a body), so the transport is looked at now and then.
    """
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await anyio.sleep(PEER_POLL_S)
    scope.cancel()


# -- the server -----------------------------------------------------------------------------


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
    ) -> None:
        """``unix=False``: the TCP listener only (the log view of an embedded runtime)."""
        self.config = config or ServerConfig()
        if self.config.http is not None and not self.config.token:
            raise ConfigError("$.server.token: required when $.server.http is set")
        if not unix and self.config.http is None:
            raise ConfigError("$.server.http: required without the unix socket")
        self.api = api
        self._unix = unix
        self.socket_path = Path(socket or self.config.socket or default_socket_path())
        self.http_url: str | None = None  # set once the TCP listener is up
        self._allowed_uids = {os.getuid(), *self.config.allowed_uids}
        self._token = (self.config.token or "").encode()
        # Cookies hold values derived from the token, never the token itself (a server on
        # another port of the host gets the cookies too); derived, they survive a restart.
        self._session = _derive(self._token, b"aiobatch session")
        self._csrf = _derive(self._token, b"aiobatch csrf")  # echoed in CSRF_HEADER by POSTs
        self._port = ""  # of the TCP listener, once bound
        self._long_requests: set[anyio.CancelScope] = set()
        self._closing = False
        self._stack: AsyncExitStack | None = None
        self._version = _version()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            sockets = []
            if self._unix:
                unix = bind_unix_socket(self.socket_path)
                stack.callback(unix.close)
                stack.callback(self._remove_socket_file, os.stat(self.socket_path))
                sockets.append(unix)
            if self.config.http is not None:
                tcp = bind_tcp_socket(self.config.http)
                stack.callback(tcp.close)
                host, port = tcp.getsockname()[:2]
                self._port = str(port)
                self.http_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
                sockets.append(tcp)
            runner = web.AppRunner(
                self._application(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
            )
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            for sock in sockets:
                await web.SockSite(runner, sock).start()
            self._stack = stack.pop_all()
        socket_path = str(self.socket_path) if self._unix else None
        log.info("server_started", socket=socket_path, http=self.http_url)
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

    def _remove_socket_file(self, ours: os.stat_result) -> None:
        """Remove the socket file, unless another service has replaced it meanwhile."""
        try:
            now = self.socket_path.lstat()
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino):
            self.socket_path.unlink()

    async def _on_shutdown(self, app: web.Application) -> None:
        """Called once the listeners are closed: end streams and pending waits."""
        self._closing = True
        for scope in self._long_requests:
            scope.cancel()

    def statistics(self) -> dict[str, Any]:
        return {
            "version": self._version,
            "pid": os.getpid(),
            "socket": str(self.socket_path),
            "http": self.http_url,
            "long_requests": len(self._long_requests),  # streams and waits
        }

    def _application(self) -> web.Application:
        app = web.Application(
            client_max_size=wire.MAX_BODY_BYTES, middlewares=[self._errors, self._authorize]
        )
        app.on_shutdown.append(self._on_shutdown)
        job = wire.API_PREFIX + "/jobs/{job_id}"
        instance = job + r"/tasks/{task}/instances/{index:\d+}"
        app.add_routes(
            [
                web.get(wire.API_PREFIX + "/health", self._health),
                web.post(wire.API_PREFIX + "/jobs", self._submit),
                web.get(wire.API_PREFIX + "/jobs", self._list_jobs),
                web.get(job, self._get_job),
                web.get(job + "/wait", self._wait_job),
                web.post(job + "/{action:stop|suspend|resume|retry}", self._job_action),
                web.get(job + "/tasks/{task}", self._task_result),
                web.get(instance, self._instance),
                web.post(instance + "/stop", self._stop_instance),
                web.get(instance + "/logs/{stream:stdout|stderr}", self._log),
                web.get(wire.API_PREFIX + "/events", self._events),
                web.get(job + "/definition", self._definition),
                web.get(job + "/history", self._history),
                web.get(job + "/logview", self._logview),
                web.get("/ui", self._ui_home),
                web.get("/ui/jobs", self._ui_page("jobs.html")),
                web.get("/ui/jobs/{job_id}", self._ui_page("job.html")),
            ]
        )
        if UI_DIR.is_dir():
            app.router.add_static("/ui/static", UI_DIR, follow_symlinks=False)
        app.on_response_prepare.append(_ui_headers)
        return app

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure as a JSON error; every request logged at debug."""
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_response(exc, request)
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
        """Unix socket: the peer's uid. TCP: the bearer token, or (a browser) the token
        cookie, whose POSTs must also echo the CSRF cookie in a header."""
        uid = peer_uid(request)  # None over TCP
        if uid is not None:
            if uid not in self._allowed_uids:
                raise RequestError(HTTPStatus.FORBIDDEN, f"peer uid {uid} may not use this socket")
            return await handler(request)
        if self._token_ok(request.headers.get("Authorization", "")):
            return await handler(request)
        given = request.query.get("token")
        if given is not None and request.method == "GET" and request.path.startswith("/ui"):
            # The address as printed, opened again by a browser that is signed in already:
            # sign in again (the token may be a new one) and drop it from the address.
            if self._matches(given, self._token):
                return self._signed_in(request)
        elif self._matches(request.cookies.get(TOKEN_COOKIE + self._port), self._session):
            if request.method != "GET" and not self._matches(
                request.headers.get(CSRF_HEADER), self._csrf
            ):
                raise RequestError(HTTPStatus.FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
            return await handler(request)
        raise RequestError(
            HTTPStatus.UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
            {"WWW-Authenticate": 'Bearer realm="aiobatch"'},
        )

    def _token_ok(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and self._matches(given.strip(), self._token)

    @staticmethod
    def _matches(given: str | None, expected: bytes) -> bool:
        return (
            bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected)
        )

    def _signed_in(self, request: web.Request) -> web.Response:
        """The token came in the address: keep it in cookies, and drop it from the address
        (so it does not stay in the history or leak in a Referer)."""
        query = {k: v for k, v in request.query.items() if k != "token"}
        location = str(request.rel_url.with_query(query))
        response = web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": location})
        session, csrf = self._session.decode(), self._csrf.decode()
        response.set_cookie(
            TOKEN_COOKIE + self._port, session, path="/", samesite="Strict", httponly=True
        )
        response.set_cookie(CSRF_COOKIE + self._port, csrf, path="/", samesite="Strict")
        return response

    # -- long requests -----------------------------------------------------------------------

    async def _interruptible(self, request: web.Request, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``, cancelled when the service shuts down or the peer goes away.

        Raises RuntimeClosed if it was cancelled (when the peer left there is nobody to tell,
        so that does not matter); ``work``'s own errors come through as they are.
        """
        result: list[T] = []
        failure: list[Exception] = []

        async def run(scope: anyio.CancelScope) -> None:
            try:
                result.append(await work())
            except Exception as exc:  # re-raised below, not wrapped in an exception group
                failure.append(exc)
            scope.cancel()

        try:
            async with anyio.create_task_group() as tg:
                self._long_requests.add(tg.cancel_scope)
                if self._closing:
                    tg.cancel_scope.cancel()
                tg.start_soon(run, tg.cancel_scope)
                tg.start_soon(watch_peer, request, tg.cancel_scope)
        finally:
            self._long_requests.discard(tg.cancel_scope)
        if failure:
            raise failure[0]
        if not result:
            raise RuntimeClosed("the service is shutting down")
        return result[0]

    async def _stream(
        self,
        request: web.Request,
        content_type: str,
        pump: Callable[[web.StreamResponse], Awaitable[None]],
    ) -> web.StreamResponse:
        """A chunked response that ``pump`` writes to, until it is done or we are."""
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = content_type
        response.enable_chunked_encoding()

        async def run() -> None:
            await response.prepare(request)  # registered as a long request before this
            await pump(response)

        try:
            await self._interruptible(request, run)
        except RuntimeClosed:
            if not response.prepared:
                raise  # shutting down before the stream began: 503 like any late request
        except ConnectionError:
            return response  # the peer went away mid-stream
        except Exception:
            if not response.prepared:
                raise
            # The status is sent: the error cannot become a JSON response any more.
            log.exception("stream_failed", path=request.path)
            if request.transport is not None:
                request.transport.abort()  # a broken stream, not one that looks complete
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    # -- handlers ----------------------------------------------------------------------------

    async def _job_status(self, job_id: str) -> JobState:
        try:
            return self.api.cached_status(job_id)
        except JobNotFound:  # not in memory (ended long ago): ask properly
            return JobState((await self.api.job_snapshot(job_id)).status)

    async def _health(self, request: web.Request) -> web.Response:
        query(request)
        return json_response({**await self.api.health(), "server": self.statistics()})

    async def _submit(self, request: web.Request) -> web.Response:
        query(request)
        spec = await read_spec(request)
        job = await self.api.submit(spec)
        body = wire.Submitted(
            id=job.id, name=job.name, status=job.status.value, tasks=job.get_task_names()
        )
        location = f"{wire.API_PREFIX}/jobs/{job.id}"
        return json_response(body, HTTPStatus.CREATED, {"Location": location})

    async def _list_jobs(self, request: web.Request) -> web.Response:
        params = query(request, "status", "limit", "offset")
        status, limit = state_param(params, "status"), int_param(params, "limit", 1)
        offset = int_param(params, "offset", 0) or 0
        return json_response(await self.api.list_jobs(status=status, limit=limit, offset=offset))

    async def _get_job(self, request: web.Request) -> web.Response:
        instances = flag_param(query(request, "instances"), "instances")
        job_id = request.match_info["job_id"]
        return json_response(await self.api.job_snapshot(job_id, instances=instances))

    async def _wait_job(self, request: web.Request) -> web.Response:
        query(request)
        job_id = request.match_info["job_id"]
        try:
            snapshot = await self._interruptible(request, lambda: self.api.wait_job(job_id))
        except RuntimeClosed:
            if not self._closing:
                return web.Response(status=CLIENT_GONE)  # never sent: the peer has gone
            raise
        return json_response(snapshot)

    async def _job_action(self, request: web.Request) -> web.Response:
        query(request)
        job_id, action = request.match_info["job_id"], request.match_info["action"]
        if action == "stop":
            changed = await self._job_status(job_id) not in JOB_TERMINAL
            await self.api.stop_job(job_id)
        else:
            act = {
                "suspend": self.api.suspend_job,
                "resume": self.api.resume_job,
                "retry": self.api.retry_job,
            }[action]
            changed = await act(job_id)
        status = await self._job_status(job_id)
        done = wire.JobActionDone(id=job_id, action=action, changed=changed, status=status.value)
        return json_response(done)

    async def _task_result(self, request: web.Request) -> web.Response:
        query(request)
        info = request.match_info
        return json_response(await self.api.task_result(info["job_id"], info["task"]))

    async def _instance(self, request: web.Request) -> web.Response:
        query(request)
        return json_response(await self.api.instance_result(*self._instance_of(request)))

    async def _stop_instance(self, request: web.Request) -> web.Response:
        query(request)
        job_id, task, index = self._instance_of(request)
        await self.api.stop_instance(job_id, task, index)
        return json_response(
            wire.InstanceActionDone(id=job_id, task=task, index=index, action="stop")
        )

    @staticmethod
    def _instance_of(request: web.Request) -> tuple[str, str, int]:
        info = request.match_info
        return info["job_id"], info["task"], int(info["index"])

    async def _log(self, request: web.Request) -> web.StreamResponse:
        params = query(request, "offset", "limit", "follow")
        offset = int_param(params, "offset", 0) or 0
        limit = int_param(params, "limit", 0)
        follow = flag_param(params, "follow")
        if follow and limit is not None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "limit: cannot be combined with follow")
        job_id, task, index = self._instance_of(request)
        stream: LogStream = "stdout" if request.match_info["stream"] == "stdout" else "stderr"
        # Read (up to limit, or nothing when following) first: unknown ids 404 here.
        data = await self.api.read_log(
            job_id, task, index, stream=stream, offset=offset, limit=0 if follow else limit
        )
        if not follow:
            return web.Response(body=data, content_type="text/plain")

        async def pump(response: web.StreamResponse) -> None:
            chunks = self.api.follow_log(job_id, task, index, stream=stream, offset=offset)
            async with closing(chunks) as chunks:
                async for chunk in chunks:
                    await response.write(chunk)

        return await self._stream(request, "text/plain", pump)

    async def _definition(self, request: web.Request) -> web.Response:
        query(request)
        return json_response(await self.api.job_definition(request.match_info["job_id"]))

    async def _history(self, request: web.Request) -> web.Response:
        params = query(request, "after", "limit")
        after = int_param(params, "after", 0) or 0
        limit = int_param(params, "limit", 1) or 10_000
        job_id = request.match_info["job_id"]
        return json_response(await self.api.job_history(job_id, after=after, limit=limit))

    async def _logview(self, request: web.Request) -> web.Response:
        query(request)
        return json_response({"url": await self.api.logview_address(request.match_info["job_id"])})

    async def _ui_home(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": "/ui/jobs"})

    @staticmethod
    def _ui_page(name: str) -> Handler:
        async def page(request: web.Request) -> web.StreamResponse:
            query(request)
            path = UI_DIR / name
            if not path.is_file():
                raise web.HTTPNotFound()
            return web.FileResponse(path, headers=UI_HEADERS)

        return page

    async def _events(self, request: web.Request) -> web.StreamResponse:
        job_id = query(request, "job").get("job")
        if job_id == "":
            raise RequestError(HTTPStatus.BAD_REQUEST, "job: expected a job id")
        # Registered before the response starts: a client that has the headers sees every
        # event from then on.
        async with self.api.subscribe(job_id, limit=STREAM_BUFFER) as events:
            ended = job_id is not None and await self._job_status(job_id) in JOB_TERMINAL

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

            return await self._stream(request, wire.NDJSON, pump)


async def _ui_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The log view's pages and files, static ones included, get the same strict headers."""
    if request.path.startswith("/ui/") and response.status < 300:
        response.headers.update(UI_HEADERS)


def _derive(token: bytes, purpose: bytes) -> bytes:
    return hmac.new(token, purpose, "sha256").hexdigest().encode() if token else b""


def _version() -> str:
    try:
        return importlib.metadata.version("aiobatch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
