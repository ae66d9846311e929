"""The JSON wire format shared by the control server and the client: bodies and errors.

Results travel as the API's own msgspec structs (``JobSnapshot``, ``TaskResult``, ...);
this module adds the few bodies only the socket needs, and the one mapping between
exceptions and ``{"error": {"type", "message", ...}}`` responses, used in both directions
so that a client raises the very class the runtime raised.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

import msgspec

from aiobatch.errors import (
    AiobatchError,
    EnvNotFound,
    InstanceNotFound,
    JobNotFinal,
    JobNotFound,
    JobNotRetryable,
    RuntimeClosed,
    SpecError,
    StateDirUnwritable,
    TaskNotFound,
)
from aiobatch.limits import Slots
from aiobatch.links import DEFAULT_LINK_HOURS as DEFAULT_LINK_HOURS
from aiobatch.links import MAX_LINK_HOURS as MAX_LINK_HOURS

API_PREFIX = "/v1"
METRICS_PATH = "/metrics"  # Prometheus' custom: not under the API's prefix
MAX_BODY_BYTES = 1024 * 1024  # a job spec larger than this is refused with 413
NDJSON = "application/x-ndjson"
SIZE_HEADER = "X-Aiobatch-Log-Size"  # a log's size in bytes when its answer began
MAX_HISTORY_PAGE = 10_000  # events in one /history answer (also its default)
# Jobs in one GET /v1/jobs answer: without ``limit`` the newest DEFAULT_JOBS_PAGE, and
# ``limit`` at most MAX_JOBS_PAGE (a bounded answer, however many jobs are stored); the
# Client pages through the rest with ``offset``.
DEFAULT_JOBS_PAGE = 1_000
MAX_JOBS_PAGE = 10_000

encoder = msgspec.json.Encoder()


class Submitted(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/jobs`` → 201."""

    id: str
    name: str
    status: str
    tasks: list[str]


class JobActionDone(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/jobs/{id}/stop|suspend|resume|retry`` → 200.

    ``changed`` is false when there was nothing to do (suspending a suspended job, stopping
    an ended one); ``status`` is the job's status right after the action.
    """

    id: str
    action: str
    changed: bool
    status: str


class JobDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """``DELETE /v1/jobs/{id}`` → 200: the job's rows, events, work dirs and logs are gone."""

    id: str
    deleted: bool = True


class EnvChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``PATCH /v1/envs/{name}``: what to change (each part optional). ``slots``: in all for a
    local env, per host for a Docker one; hosts as in the config (``unix://``, ``tcp://``)."""

    slots: Slots | None = None
    add_hosts: list[str] = []
    drain_hosts: list[str] = []
    remove_hosts: list[str] = []


class HostInfo(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    attempts: int  # placed on it now
    healthy: bool | None  # answered its last check (None: the env has not been used yet)
    drained: bool  # takes no new attempt (an operator's drain, or it is being removed)
    removing: bool  # goes once its last attempt has ended


class EnvInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/envs`` → a list of these; ``PATCH /v1/envs/{name}`` → one."""

    name: str
    kind: str
    slots: int  # in all (for Docker: per host times the hosts that take attempts)
    slots_per_host: int | None  # Docker only
    used: int
    queued: int  # instances that could start if a slot were free
    hosts: list[HostInfo] | None  # Docker only


class InstanceActionDone(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/jobs/{id}/tasks/{task}/instances/{index}/stop`` → 200."""

    id: str
    task: str
    index: int
    action: str


class SlotUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One compute env's slots: how many there are, how many run an instance now."""

    slots: int
    used: int


class ListenerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One listener's connections: open now, its limit, and since the start those refused
    (over the limit) and those closed for being idle or slow."""

    open: int
    limit: int
    refused: int
    timed_out: int


class ServerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The server's own part of ``/v1/health``."""

    version: str
    pid: int
    socket: str
    http: str | None  # the TCP listener's URL, if there is one
    long_requests: int  # streams and waits open now
    connections: dict[str, ListenerStatistics] = {}  # by listener: "unix", "tcp", "metrics"


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/health`` → 200. ``degraded``: the state dir has no room (``store`` says
    why), instances' logs are paused until it has, or starts wait for a system limit
    (``dispatch`` says which)."""

    status: Literal["ok", "closing", "degraded"]
    jobs: dict[str, int]  # jobs held in memory, by state
    compute_envs: dict[str, SlotUsage]
    commits: int  # store transactions since the start
    store: str  # "ok", or why the state dir takes nothing new
    logs_paused: int
    # "ok", or the compute envs whose starts wait for a system limit (open files,
    # processes), each with why: "local: system_limit: log: Too many open files"
    dispatch: str = "ok"
    server: ServerStatistics


class LinksRotated(msgspec.Struct, frozen=True, kw_only=True):
    """``POST /v1/logview/rotate`` → 200: a new key signs links; every earlier one is void."""

    rotated: bool


class LogviewAddress(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/jobs/{id}/logview?hours=H`` → 200: the job's page, with a link that shows
    that job alone, read-only, for ``hours``; or null when the service serves no log view."""

    url: str | None


class ErrorDetail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What went wrong: ``type`` names the error class (``SpecError``, ``JobNotFound``,
    ``BadRequest``, ...), ``message`` says it in words."""

    type: str
    message: str
    errors: list[str] | None = None  # SpecError: every problem with its field path
    job_id: str | None = None  # JobNotFound, JobNotRetryable, JobNotFinal
    status: str | None = None  # JobNotRetryable, JobNotFinal: the job's status


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every 4xx and 5xx answer of the API."""

    error: ErrorDetail


# The errors that cross the wire as themselves, with their HTTP status.
ERROR_STATUS: dict[type[AiobatchError], int] = {
    SpecError: HTTPStatus.UNPROCESSABLE_ENTITY,
    JobNotFound: HTTPStatus.NOT_FOUND,
    TaskNotFound: HTTPStatus.NOT_FOUND,
    InstanceNotFound: HTTPStatus.NOT_FOUND,
    JobNotRetryable: HTTPStatus.CONFLICT,
    JobNotFinal: HTTPStatus.CONFLICT,
    EnvNotFound: HTTPStatus.NOT_FOUND,
    RuntimeClosed: HTTPStatus.SERVICE_UNAVAILABLE,
    StateDirUnwritable: HTTPStatus.INSUFFICIENT_STORAGE,
}
ERROR_CLASSES = {cls.__name__: cls for cls in ERROR_STATUS}


def error_response(exc: AiobatchError) -> tuple[int, ErrorBody] | None:
    """The status and body for an API error, or None if it is not one that crosses the wire."""
    status = ERROR_STATUS.get(type(exc))
    if status is None:
        return None
    errors = list(exc.errors) if isinstance(exc, SpecError) else None
    detail = ErrorDetail(
        type=type(exc).__name__,
        message=str(exc),
        errors=errors,
        job_id=getattr(exc, "job_id", None),
        status=getattr(exc, "status", None),
    )
    return status, ErrorBody(error=detail)


def error_body(type_: str, message: str) -> ErrorBody:
    return ErrorBody(error=ErrorDetail(type=type_, message=message))


def exception_from(detail: ErrorDetail) -> AiobatchError:
    """The exception a server error stands for: the runtime's own class when it is known."""
    cls = ERROR_CLASSES.get(detail.type)
    if cls is None:
        return AiobatchError(detail.message)
    if cls is SpecError:
        return SpecError(detail.errors or [detail.message])
    # The constructors want what the message was made from (a task name, an index); the
    # message itself is what the server said, so rebuild the instance around it instead.
    exc = cls.__new__(cls)
    Exception.__init__(exc, detail.message)
    for name in ("job_id", "status"):
        value = getattr(detail, name)
        if value is not None:
            setattr(exc, name, value)
    return exc


# -- who may do what: the one table of routes and their scopes --------------------------------

Scope = Literal["read", "operate", "admin"]
# Each scope may do what the ones before it may: read (queries, logs, events), operate (plus
# stop, suspend, resume, retry, stop instance), admin (plus submit, delete).
SCOPES: tuple[Scope, ...] = ("read", "operate", "admin")


def scope_covers(held: Scope, needed: Scope) -> bool:
    return SCOPES.index(held) >= SCOPES.index(needed)


class Access(msgspec.Struct, frozen=True):
    """What a route needs: a scope, and whether a log-view link (bound to one job) may use
    it: ``link="path"`` when the path's job is the link's, ``"query"`` when ``?job=`` is,
    ``"any"`` for what names no job (the session, the page's static files), None never."""

    scope: Scope
    link: Literal["path", "query", "any"] | None = None


_JOB = API_PREFIX + "/jobs/{job_id}"
_INSTANCE = _JOB + "/tasks/{task}/instances/{index}"
# (method, path as the server's router and the OpenAPI document spell it): its access. A
# route the server serves that is not here is refused to everyone (and fails a test).
ROUTE_ACCESS: dict[tuple[str, str], Access] = {
    ("GET", API_PREFIX + "/openapi.json"): Access("read"),
    ("GET", API_PREFIX + "/health"): Access("read"),
    ("GET", METRICS_PATH): Access("read"),
    ("GET", API_PREFIX + "/envs"): Access("read"),
    ("PATCH", API_PREFIX + "/envs/{name}"): Access("admin"),
    ("GET", API_PREFIX + "/session"): Access("read", "any"),
    ("POST", API_PREFIX + "/jobs"): Access("admin"),
    ("GET", API_PREFIX + "/jobs"): Access("read"),
    ("GET", _JOB): Access("read", "path"),
    ("DELETE", _JOB): Access("admin"),
    ("GET", _JOB + "/wait"): Access("read", "path"),
    ("POST", _JOB + "/stop"): Access("operate"),
    ("POST", _JOB + "/suspend"): Access("operate"),
    ("POST", _JOB + "/resume"): Access("operate"),
    ("POST", _JOB + "/retry"): Access("operate"),
    ("GET", _JOB + "/tasks/{task}"): Access("read", "path"),
    ("GET", _INSTANCE): Access("read", "path"),
    ("POST", _INSTANCE + "/stop"): Access("operate"),
    ("GET", _INSTANCE + "/logs/{stream}"): Access("read", "path"),
    ("GET", _JOB + "/definition"): Access("read", "path"),
    ("GET", _JOB + "/history"): Access("read", "path"),
    ("GET", _JOB + "/logview"): Access("read"),  # a link makes no other links
    ("POST", API_PREFIX + "/logview/rotate"): Access("admin"),
    ("GET", API_PREFIX + "/events"): Access("read", "query"),
    ("GET", "/ui"): Access("read"),
    ("GET", "/ui/jobs"): Access("read"),
    ("GET", "/ui/jobs/{job_id}"): Access("read", "path"),
    ("GET", "/ui/static/{path}"): Access("read", "any"),
}


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """GET /v1/session: who the server takes the caller for, and what it may do. ``job``
    and ``expires`` (Unix time, seconds) only for a log-view link."""

    scope: Scope
    actions: list[str]  # the job actions it may take: stop, suspend, resume, retry
    job: str | None = None
    expires: int | None = None


JOB_ACTIONS = ("stop", "suspend", "resume", "retry")
