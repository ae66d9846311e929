"""The hand-written part of the OpenAPI document of /v1: its table of routes.

Paths, methods, parameters with their ranges, which body answers with which status, and
what each error status means. The bodies themselves are generated from the wire structs by
``openapi``, which builds the document from this table.
"""

from __future__ import annotations

from typing import Any

import msgspec

from aiobatch import wire
from aiobatch.api import HistoryEntry, InstanceDetail, JobSnapshot, JobSummary, TaskResult
from aiobatch.events import Event
from aiobatch.labels import LABEL_FILTER_PATTERN, LABEL_KEY_RULE
from aiobatch.limits import INT64_MAX, MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS
from aiobatch.spec_types import JobDef
from aiobatch.states import JobState

PATH = wire.API_PREFIX + "/openapi.json"
JSON, TEXT = "application/json", "text/plain"
SCHEMA_REF = "#/components/schemas/{name}"
FLAG_VALUES = ("0", "1", "false", "true", "no", "yes")


def integer(minimum: int, maximum: int = INT64_MAX) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def ref(kind: type[Any]) -> dict[str, Any]:
    """A reference to a type's schema among the components (every one in REFERENCED)."""
    return {"$ref": SCHEMA_REF.format(name=kind.__name__)}


def flag() -> dict[str, Any]:
    return {"type": "string", "enum": list(FLAG_VALUES), "default": "0"}


class Param(msgspec.Struct, frozen=True):
    name: str
    where: str  # "path" or "query"
    schema: dict[str, Any]
    description: str


class Header(msgspec.Struct, frozen=True):
    name: str
    schema: dict[str, Any]
    description: str
    required: bool = True


class Route(msgspec.Struct, frozen=True):
    """One operation: what it takes, what it answers on success, which errors it may give."""

    method: str
    path: str
    operation_id: str
    summary: str
    answer: Any  # the type of the success body (str: raw bytes as text/plain)
    status: int = 200
    media: str = JSON
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # besides those every route may give (COMMON_ERRORS)
    takes_spec: bool = False
    takes_env_change: bool = False  # a JSON body: wire.EnvChange
    headers: tuple[Header, ...] = ()  # of the success answer
    links: tuple[str, ...] = ()  # operations that take this answer's job id (and task)


JOB = wire.API_PREFIX + "/jobs/{job_id}"
TASK = JOB + "/tasks/{task}"
INSTANCE = TASK + "/instances/{index}"

JOB_ID = Param("job_id", "path", {"type": "string"}, "A job id, as POST /v1/jobs answered it")
TASK_NAME = Param("task", "path", {"type": "string"}, "A task name of the job")
INDEX = Param("index", "path", integer(0), "An instance index, 0 to the task's instances - 1")
STREAM = Param("stream", "path", {"type": "string", "enum": ["stdout", "stderr"]}, "Which log")
# Every route may refuse an unknown query parameter (400), a peer it does not know (401
# over TCP without the token, 403 over the socket from a uid not allowed), an Expect header
# other than 100-continue (417), fail (500), or answer while the service shuts down (503).
COMMON_ERRORS = (400, 401, 403, 417, 500, 503)
WRITE_ERRORS = (404, 507)  # an action on a job stores an event: a full disk refuses it

# Every operation on one job: the links from a submission (stateful tests follow them).
ON_A_JOB = tuple(
    "getJob waitJob stopJob suspendJob resumeJob retryJob getTaskResult getInstance stopInstance "
    "readLog getJobDefinition getJobHistory getLogviewAddress streamEvents deleteJob".split()
)

ROUTES = (
    Route("GET", PATH, "getOpenAPI", "This document", dict[str, Any]),
    Route("GET", wire.API_PREFIX + "/health", "getHealth", "The service's state", wire.Health),
    Route(
        "GET",
        wire.API_PREFIX + "/envs",
        "listEnvs",
        "Every compute env: slots, slots in use, instances waiting, Docker hosts",
        list[wire.EnvInfo],
    ),
    Route(
        "PATCH",
        wire.API_PREFIX + "/envs/{name}",
        "updateEnv",
        "Change an env's slots or Docker hosts now (stored: kept across restarts)",
        wire.EnvInfo,
        params=(Param("name", "path", {"type": "string"}, "A compute env's name"),),
        errors=(404, 408, 413, 422),
        takes_env_change=True,
    ),
    Route(
        "GET",
        wire.METRICS_PATH,
        "getMetrics",
        "The service's metrics in Prometheus' text format (version 0.0.4)",
        str,
        media=TEXT,
    ),
    Route(
        "GET",
        wire.API_PREFIX + "/session",
        "getSession",
        "Who the service takes the caller for: its scope, the job actions it may take, and "
        "for a log-view link its job and expiry",
        wire.Session,
    ),
    Route(
        "POST",
        wire.API_PREFIX + "/jobs",
        "submitJob",
        "Submit a job spec (JSON, YAML or TOML); nothing of a refused one is stored",
        wire.Submitted,
        status=201,
        errors=(408, 413, 415, 422, 507),
        takes_spec=True,
        headers=(Header("Location", {"type": "string"}, "The job's address, /v1/jobs/{id}"),),
        links=ON_A_JOB,
    ),
    Route(
        "GET",
        wire.API_PREFIX + "/jobs",
        "listJobs",
        "Jobs, newest first (by seq), a page at a time",
        list[JobSummary],
        params=(
            Param("status", "query", ref(JobState), "Only jobs in this state"),
            Param(
                "limit",
                "query",
                integer(1, wire.MAX_JOBS_PAGE),
                f"At most this many jobs (default {wire.DEFAULT_JOBS_PAGE})",
            ),
            Param("offset", "query", integer(0), "Skip this many jobs first (the next page)"),
            Param(
                "label",
                "query",
                {
                    "type": "array",
                    "maxItems": MAX_LABELS,
                    "items": {
                        "type": "string",
                        "pattern": LABEL_FILTER_PATTERN,
                        "maxLength": MAX_LABEL_KEY_CHARS + 1 + MAX_LABEL_VALUE_CHARS,
                    },
                },
                "Only jobs with this label, as KEY=VALUE; repeated: jobs with all of them "
                f"(a key: {LABEL_KEY_RULE}; a value: at most {MAX_LABEL_VALUE_CHARS} "
                "characters, no control character)",
            ),
        ),
    ),
    Route(
        "GET",
        JOB,
        "getJob",
        "A job's snapshot",
        JobSnapshot,
        params=(JOB_ID, Param("instances", "query", flag(), "With every task's instances")),
        errors=(404,),
    ),
    Route(
        "DELETE",
        JOB,
        "deleteJob",
        "Delete an ended job: its rows, events, work dirs and logs (never what it uploaded)",
        wire.JobDeleted,
        params=(
            JOB_ID,
            Param("stop", "query", flag(), "Stop a job that has not ended first, then delete it"),
        ),
        errors=(*WRITE_ERRORS, 409),
    ),
    Route(
        "GET",
        JOB + "/wait",
        "waitJob",
        "The job's snapshot once it has ended (a long poll)",
        JobSnapshot,
        params=(JOB_ID,),
        errors=(404,),
    ),
    *(
        Route(
            "POST",
            JOB + "/" + action,
            action + "Job",
            summary,
            wire.JobActionDone,
            params=(JOB_ID,),
            errors=(*WRITE_ERRORS, *((409,) if action == "retry" else ())),
        )
        for action, summary in (
            ("stop", "Stop a job: no instance starts, running ones are stopped"),
            ("suspend", "Suspend a job: no new instance starts until it is resumed"),
            ("resume", "Resume a suspended job"),
            ("retry", "Re-run what did not succeed of a FAILED or CANCELLED job"),
        )
    ),
    Route(
        "GET",
        TASK,
        "getTaskResult",
        "A task's result, its instances and the stderr tails of failed ones",
        TaskResult,
        params=(JOB_ID, TASK_NAME),
        errors=(404,),
    ),
    Route(
        "GET",
        INSTANCE,
        "getInstance",
        "An instance's result, with its stderr tail if it failed",
        InstanceDetail,
        params=(JOB_ID, TASK_NAME, INDEX),
        errors=(404,),
    ),
    Route(
        "POST",
        INSTANCE + "/stop",
        "stopInstance",
        "Stop one instance",
        wire.InstanceActionDone,
        params=(JOB_ID, TASK_NAME, INDEX),
        errors=WRITE_ERRORS,
    ),
    Route(
        "GET",
        INSTANCE + "/logs/{stream}",
        "readLog",
        "Bytes of an instance's log from offset; with follow, a stream until the instance ends",
        str,
        media=TEXT,
        params=(
            JOB_ID,
            TASK_NAME,
            INDEX,
            STREAM,
            Param("offset", "query", integer(0), "The first byte to read"),
            Param("limit", "query", integer(0), "At most this many bytes (not with follow)"),
            Param("follow", "query", flag(), "Stream what is written until the instance ends"),
        ),
        errors=(404,),
        headers=(
            Header(wire.SIZE_HEADER, integer(0), "The log's size in bytes when the answer began"),
        ),
    ),
    Route(
        "GET",
        JOB + "/definition",
        "getJobDefinition",
        "The job as resolved at submission",
        JobDef,
        params=(JOB_ID,),
        errors=(404,),
    ),
    Route(
        "GET",
        JOB + "/history",
        "getJobHistory",
        "The job's stored events after a seq, oldest first",
        list[HistoryEntry],
        params=(
            JOB_ID,
            Param("after", "query", integer(0), "Only events with a greater seq"),
            Param(
                "limit",
                "query",
                integer(1, wire.MAX_HISTORY_PAGE),
                f"At most this many events (default {wire.MAX_HISTORY_PAGE})",
            ),
        ),
        errors=(404,),
    ),
    Route(
        "GET",
        JOB + "/logview",
        "getLogviewAddress",
        "The job's page in a browser: a link that shows this job alone, read-only, for hours",
        wire.LogviewAddress,
        params=(
            JOB_ID,
            Param(
                "hours",
                "query",
                {
                    "type": "string",
                    "pattern": r"^[0-9]+(\.[0-9]+)?$",
                    "default": str(wire.DEFAULT_LINK_HOURS),
                },
                f"How long the link may be used: above 0, at most {wire.MAX_LINK_HOURS} hours",
            ),
        ),
        errors=(404,),
    ),
    Route(
        "POST",
        wire.API_PREFIX + "/logview/rotate",
        "rotateLogviewLinks",
        "A new key for log-view links: every link made so far stops working at once",
        wire.LinksRotated,
    ),
    Route(
        "GET",
        wire.API_PREFIX + "/events",
        "streamEvents",
        "Events from now on, one JSON object per line; with job, that job's, ending after "
        "its final state (at once if it has ended); without, until the service stops",
        list[Event],
        media=wire.NDJSON,
        params=(Param("job", "query", {"type": "string", "minLength": 1}, "Only this job's"),),
        errors=(404,),
    ),
)

REFERENCED = (JobState,)  # types that parameters refer to with ref()

# Each error status: its name among the responses, and what it means.
ERRORS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "A malformed body or query parameter, or one this route does not know"),
    401: ("Unauthorized", "TCP listener only: no valid bearer token, or an expired link"),
    403: (
        "Forbidden",
        "The caller's scope does not cover the operation (x-aiobatch-scope), a log-view "
        "link's job is not the one asked for, the unix socket's peer is not allowed, or a "
        "browser's POST lacks its CSRF header",
    ),
    404: ("NotFound", "JobNotFound, TaskNotFound, InstanceNotFound or EnvNotFound"),
    408: ("RequestTimeout", "The body did not arrive in time"),
    409: ("Conflict", "JobNotRetryable (not FAILED or CANCELLED), JobNotFinal (not ended)"),
    413: ("RequestTooLarge", f"The body is larger than {wire.MAX_BODY_BYTES} bytes"),
    415: ("UnsupportedMediaType", "A compressed body (Content-Encoding): send it as it is"),
    417: ("ExpectationFailed", "An Expect header other than 100-continue"),
    422: (
        "SpecError",
        "Invalid input (a spec, an env change): error.errors lists every $.field.path: problem",
    ),
    500: ("InternalError", "A bug: the details are in the service's log"),
    503: ("RuntimeClosed", "The service is shutting down and takes no new work"),
    507: ("StateDirUnwritable", "The state dir's disk is full: nothing new is accepted"),
}
