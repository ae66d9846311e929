"""The control server of ``aiobatch serve``: HTTP/1.1 + JSON over a unix socket (and TCP).

Every request has a scope, ``read`` (queries, logs, events), ``operate`` (plus stop,
suspend, resume, retry, stop instance) or ``admin`` (plus submit, and revoking log-view
links), and each route needs one (``wire.ROUTE_ACCESS``, the one table, which the OpenAPI
document states as well); too little is 403. The unix socket (mode ``socket_mode``, 0600 by
default, group ``socket_group``) maps its peer by uid (SO_PEERCRED; the service's own is
admin) and by gid, primary or supplementary (SO_PEERGROUPS) to the highest scope the config
gives them (``allowed_uids``, ``allowed_gids``); none is 403. The optional TCP listener
(``server.http = "HOST:PORT"``) wants ``Authorization: Bearer TOKEN`` (a named token of
``server.tokens``, with its scope) or a browser's cookie, else 401. The optional metrics
listener (``server.metrics = "HOST:PORT"``, ``metrics_listener.py``) serves ``GET /metrics``
alone, without a token, for scrapers on a private network. A log-view link
(``GET /v1/jobs/ID/logview``) is the read scope on one job until it expires: any other job,
list or write is 403, and an expired or revoked link 401.

Bodies are JSON (results are the API's structs: ``JobSnapshot``, ``JobSummary``,
``TaskResult``, ``InstanceResult``); ``ID`` is a job id, ``TASK`` a task name, ``N`` an
instance index.

======  ====================================================  ===================================
method  path and parameters                                   200/201 response
======  ====================================================  ===================================
GET     /v1/openapi.json                                      the OpenAPI document of /v1
GET     /v1/health                                            ``{"status": "ok"|"closing"|
                                                              "degraded", "jobs": {STATE: n},
                                                              "compute_envs", "commits", "store",
                                                              "dispatch", "logs_paused", "server":
                                                              {"version", "pid", ...}}``
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
                                                              (streamed, as with ``instances=1``)
                                                              and ``stderr_tails`` {N: [line]}
                                                              of the first 100 failed
GET     /v1/jobs/ID/tasks/TASK/instances/N                    ``InstanceResult`` plus
                                                              ``stderr_tail`` (failed ones)
POST    /v1/jobs/ID/tasks/TASK/instances/N/stop               ``{"id", "task", "index",
                                                              "action": "stop"}``
GET     /v1/session                                           ``{"scope", "actions", "job",
                                                              "expires"}``: the caller's
GET     /v1/jobs/ID/logview?hours=H (0 < H <= 8760, 24)       ``{"url"}``: a link to the job's
                                                              page, that job only, read-only
POST    /v1/logview/rotate                                    ``{"rotated"}``: every link made
                                                              so far is revoked
GET     /v1/jobs/ID/tasks/TASK/instances/N/logs/stdout|stderr raw bytes (text/plain) from
        ?offset=BYTES&limit=BYTES  or  ?follow=1&offset=BYTES ``offset``, streamed, with
                                                              ``Content-Length`` and
                                                              ``X-Aiobatch-Log-Size`` (the log's
                                                              size then); with ``follow=1``: a
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

- 400 ``BadRequest``: a body that is not valid JSON (YAML, TOML), an unknown, repeated or
  malformed query parameter or path number (numbers are ASCII digits from 0 to 2**63 - 1,
  the message names the parameter and its range); 401 ``Unauthorized``; 403 ``Forbidden``;
  405 ``MethodNotAllowed``; 408 ``RequestTimeout`` (a body not received within 30 s);
- 404 ``JobNotFound``, ``TaskNotFound``, ``InstanceNotFound``, or ``NotFound`` (no route);
- 409 ``JobNotRetryable``; 413 ``RequestTooLarge`` (body over 1 MiB, refused before it is
  read when its length is declared); 415 ``UnsupportedMediaType`` (a compressed body);
  417 ``ExpectationFailed``; 422 ``SpecError``; 431 ``HeadersTooLarge`` (a request line and
  header lines over 32 KiB together: the connection is closed after it);
- 503 ``RuntimeClosed``: the runtime takes no new work, or the service is shutting down
  (a pending ``wait`` gets this); 507 ``StateDirUnwritable``: the state dir's disk is full
  (or read-only, failing), so no job is accepted until there is space (queries answer);
  500 ``InternalError``, the details in the service's log.

A refused request stores nothing. Streams end cleanly (final chunk) when the service shuts
down, so a watcher sees the end of its stream, not a broken connection.

Peers and requests are bounded (``limits.py``, ``bodies.py``): connections per listener,
the time to send a request's headers and to send the next one, the body's size and time.

The package: ``app`` (the server, its listeners and middlewares), ``auth`` (sessions and
scopes), ``peers`` (a unix peer's uid and groups), ``limits``,
``params`` (query and path parameters), ``bodies``, ``responses``, ``streams`` (long
requests), and the handlers by resource: ``jobs``, ``logs``, ``events``, ``ui``.
"""

from aiobatch.server.app import ControlServer
from aiobatch.server.limits import Limits
from aiobatch.server.responses import RequestError
from aiobatch.server.served import ServedAPI

__all__ = ["ControlServer", "Limits", "RequestError", "ServedAPI"]
