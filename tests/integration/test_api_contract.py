"""The /v1 contract, checked by machine: schemathesis against a live ``aiobatch serve``.

The service serves its OpenAPI document at /v1/openapi.json. Requests generated from it
(valid ones and invalid ones) go over the control socket to a real service; every answer
must be documented (status, content type, headers, body), none may be a 5xx, and an invalid
request must be refused with a 4xx. Then stateful runs submit valid jobs and follow the
document's links from each to the operations on it (wait, stop, suspend, resume, retry,
tasks, instances, logs, history, events). Last, the service must still be up and healthy.

Jobs that the service accepts run for real, so generated specs are made harmless before
they are sent: a command becomes ``true`` (unless it is one of the few this test itself
writes), fan-out and retries are capped, storage URIs point into this test's own directory,
and the ``docker`` compute env is a local one (no engine is reached, no image pulled).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import msgspec
import pytest
import requests
import schemathesis
from anyio.from_thread import start_blocking_portal
from schemathesis import Case as GenericCase
from schemathesis import DeserializationContext, Response, SerializationContext

from aiobatch import openapi, wire
from tests.integration.service import Service
from tests.integration.unix_http import unix_session

Case = GenericCase[Any]  # of any operation
BASE_URL = "http://localhost"  # any host: the session dials the socket
# Examples per operation and generation mode, and stateful runs: sized for the suite's time
# budget. A deeper search on demand: AIOBATCH_CONTRACT_EXAMPLES=300.
MAX_EXAMPLES = int(os.environ.get("AIOBATCH_CONTRACT_EXAMPLES", "20"))
STATEFUL_RUNS = 4 * MAX_EXAMPLES
TIMEOUT_S = 20.0  # no answer may take longer (waits and streams end with their short jobs)
# The service takes at most MAX_INSTANCES per task (its config); generated counts are capped
# a little above, so that its refusal of more is tested too, but never to a fan-out.
MAX_INSTANCES, INSTANCES_CAP, MAX_RETRIES = 2, 4, 1
# The commands a job of this test may run: one that succeeds, one that fails (to retry), one
# that runs long enough to be suspended or stopped while it runs.
COMMANDS: tuple[str | list[str], ...] = (
    "true",
    ["true"],
    "echo out; echo err >&2; exit 3",
    ["sleep", "0.2"],
)
CONFIG = f"""
kill_grace = "1s"
shutdown_grace = "1s"
max_instances = {MAX_INSTANCES}

[compute_envs.local]
slots = 2

# The built-in `docker` env made a local one: no engine is ever reached, no image pulled.
[compute_envs.docker]
kind = "local"
slots = 2
"""
SANDBOX: list[str] = []  # where generated storage URIs point: this module's own dir
SCHEMATHESIS_CONFIG: dict[str, Any] = {
    "seed": 12,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "checks": {
        "enabled": False,
        "not_a_server_error": {"enabled": True},
        "status_code_conformance": {"enabled": True},
        "content_type_conformance": {"enabled": True},
        "response_headers_conformance": {"enabled": True},
        "response_schema_conformance": {"enabled": True},
        "negative_data_rejection": {"enabled": True},
        "unsupported_method": {"enabled": True},
        "allow_header_conformance": {"enabled": True},
        "missing_required_header": {"enabled": True},
        "ensure_resource_availability": {"enabled": True},
        "use_after_free": {"enabled": True},
    },
}


# -- what the document describes that schemathesis cannot read or write by itself -----------


@schemathesis.deserializer(wire.NDJSON)
def ndjson_lines(ctx: DeserializationContext, response: Response) -> list[Any]:
    """An event stream, read as the array of its lines (how the document describes it)."""
    return [msgspec.json.decode(line) for line in response.content.splitlines() if line]


@schemathesis.serializer("application/toml")
def toml_body(ctx: SerializationContext, value: Any) -> bytes | None:
    try:
        return msgspec.toml.encode(value)
    except (TypeError, msgspec.EncodeError):
        return None  # TOML has no null, nor a top level other than a table: send nothing


# -- generated specs, made harmless ---------------------------------------------------------


def capped(value: Any, cap: int) -> Any:
    """``value`` lowered to ``cap`` if it reads as a larger number (the service converts
    numeric strings too); anything else as it is, to be refused."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return value
    return cap if number > cap or number != number else value


def harmless_task(task: Any, sandbox: str) -> Any:
    if not isinstance(task, dict):
        return task
    task = dict(task)
    command = task.get("command")
    if command in COMMANDS:
        pass
    elif isinstance(command, str) and command.strip():
        task["command"] = "true"
    elif isinstance(command, list) and command:
        task["command"] = ["true"]
    if "instances" in task:
        task["instances"] = capped(task["instances"], INSTANCES_CAP)
    retries = task.get("retries")
    if isinstance(retries, dict) and "limit" in retries:
        task["retries"] = {**retries, "limit": capped(retries["limit"], MAX_RETRIES)}
    elif "retries" in task:
        task["retries"] = capped(retries, MAX_RETRIES)
    for key, field in (("inputs", "from"), ("outputs", "to")):
        mappings = task.get(key)
        if isinstance(mappings, list):
            task[key] = [
                {**m, field: inside(m[field], sandbox)} if isinstance(m, dict) and field in m else m
                for m in mappings
            ]
    for key in ("stdout", "stderr"):
        if key in task:
            task[key] = inside(task[key], sandbox)
    return task


def inside(uri: Any, sandbox: str) -> Any:
    """A storage URI moved into the sandbox: nothing is read or written elsewhere, and no
    S3 endpoint is ever called. What is not a URI stays, to be refused."""
    if isinstance(uri, str) and uri.startswith(("s3:", "file:")):
        return f"file://{sandbox}/{{job_id}}/{{task}}/{{index}}/"
    return uri


def harmless_spec(body: Any, sandbox: str) -> Any:
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if isinstance(body.get("tasks"), list):
        body["tasks"] = [harmless_task(task, sandbox) for task in body["tasks"]]
    if isinstance(body.get("templates"), dict):
        body["templates"] = {k: harmless_task(t, sandbox) for k, t in body["templates"].items()}
    return body


# -- the service and the schema -------------------------------------------------------------


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))  # short: sockets have 107 bytes
    service = Service(root, tmp_path_factory.mktemp("contract") / "state", CONFIG)
    SANDBOX.append(str(tmp_path_factory.mktemp("storage")))
    with start_blocking_portal() as portal:
        try:
            portal.call(service.start)
            yield service
        finally:
            portal.call(service.close)
            service.clean_up()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def session(live_service: Service) -> Iterator[requests.Session]:
    with unix_session(str(live_service.socket)) as session:
        yield session


def contract(*, mode: str) -> Any:
    """The schema of the document, its generated specs made harmless."""
    config = {**SCHEMATHESIS_CONFIG}
    config["generation"] = {**SCHEMATHESIS_CONFIG["generation"], "mode": mode}
    loaded = schemathesis.openapi.from_dict(
        openapi.document(), config=schemathesis.Config.from_dict(config)
    )

    @loaded.hook("map_body")
    def harmless(context: Any, body: Any) -> Any:
        return harmless_spec(body, SANDBOX[-1])

    return loaded


schema = contract(mode="all")
# Valid jobs, so that the links from a submitted job lead somewhere; invalid requests are
# the stateless test's.
stateful = contract(mode="positive")
NAMES = st.from_regex(r"[a-z][a-z0-9_.-]{0,11}", fullmatch=True)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    tasks: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        task: dict[str, Any] = {
            "name": name,
            "command": draw(st.sampled_from(COMMANDS)),
            "instances": draw(st.integers(1, MAX_INSTANCES)),
            "retries": draw(st.integers(0, MAX_RETRIES)),
            "on_failure": draw(st.sampled_from(["fail_job", "continue"])),
        }
        if i:
            task["depends_on"] = draw(st.lists(st.sampled_from(names[:i]), unique=True))
        tasks.append(task)
    job_name = draw(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1))
    return {"name": job_name, "tasks": tasks, "priority": draw(st.integers(-5, 5))}


def mostly_valid_jobs(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
    return st.one_of(valid_specs(), strategy)


stateful.hook("before_generate_body")(mostly_valid_jobs)


def call_kwargs(session: requests.Session) -> dict[str, Any]:
    return {"session": session, "base_url": BASE_URL, "timeout": TIMEOUT_S}


def endless(case: Case) -> bool:
    """``GET /v1/events`` without ``job`` streams until the service stops: not a request
    that can be answered within a test (its start is checked on its own, below)."""
    return case.operation.path == "/v1/events" and "job" not in (case.query or {})


# -- the tests ------------------------------------------------------------------------------


def test_the_service_serves_the_document(session: requests.Session) -> None:
    served = session.get(BASE_URL + openapi.PATH, timeout=TIMEOUT_S)
    assert served.status_code == 200, served.text
    assert served.headers["Content-Type"].startswith("application/json")
    assert served.json() == openapi.document()


each_operation: Callable[[Callable[..., None]], Callable[..., None]] = schema.parametrize()


@each_operation
def test_every_operation_keeps_the_contract(case: Case, session: requests.Session) -> None:
    if endless(case):
        case.query = {**(case.query or {}), "job": "no-such-job"}
    case.call_and_validate(**call_kwargs(session))


def test_sequences_of_calls_on_submitted_jobs_keep_the_contract(
    live_service: Service, session: requests.Session
) -> None:
    submitted: list[str] = []
    failures: list[Exception] = []  # as they happened, whatever Hypothesis makes of them

    class Machine(stateful.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            super().setup()
            self.jobs: list[str] = []  # submitted in this run

        def step(self, input: Any) -> Any:
            try:
                return super().step(input)
            except Exception as exc:
                failures.append(exc)
                raise

        def before_call(self, case: Case) -> None:
            # A suspended job's wait, log follow and event stream end only once it runs
            # again: resume it first, so that they end with its (short) instances.
            job_id = (case.path_parameters or {}).get("job_id") or (case.query or {}).get("job")
            waits = case.operation.path.endswith("/wait") or "follow" in (case.query or {})
            if isinstance(job_id, str) and (waits or case.operation.path == "/v1/events"):
                session.post(f"{BASE_URL}/v1/jobs/{job_id}/resume", timeout=TIMEOUT_S)
            if endless(case):
                case.query = {**(case.query or {}), "job": "no-such-job"}

        def after_call(self, response: Response, case: Case) -> None:
            super().after_call(response, case)
            if case.operation.label == "POST /v1/jobs" and response.status_code == 201:
                self.jobs.append(response.json()["id"])
                submitted.append(self.jobs[-1])

        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return call_kwargs(session)

        def teardown(self) -> None:
            # What a run left running does not queue before the next run's jobs.
            for job_id in self.jobs:
                session.post(f"{BASE_URL}/v1/jobs/{job_id}/stop", timeout=TIMEOUT_S)
            super().teardown()

    try:
        Machine.run(
            settings=hypothesis.settings(
                max_examples=STATEFUL_RUNS,
                stateful_step_count=10,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[hypothesis.Phase.generate],  # no shrinking: the first failure, as found
                suppress_health_check=list(hypothesis.HealthCheck),
            )
        )
    except (hypothesis.errors.Flaky, AssertionError) as exc:
        # The service answers by timing too (a job may end before it is suspended), so
        # Hypothesis cannot always replay a run and says so: that alone is no failure.
        if failures:
            raise failures[0] from exc
        if not isinstance(exc, hypothesis.errors.Flaky) and not replay_went_astray(exc):
            raise
    assert submitted, "no generated job was accepted: the links were never followed"


def replay_went_astray(exc: AssertionError) -> bool:
    """Hypothesis asserts, rather than raising Flaky, when a replay draws past a choice an
    earlier run did not make."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and "hypothesis/internal/conjecture/" in frames[-1].filename


def test_the_event_stream_without_a_job_starts_as_documented(session: requests.Session) -> None:
    with session.get(BASE_URL + "/v1/events", stream=True, timeout=TIMEOUT_S) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(wire.NDJSON)


def test_the_service_is_alive_after_the_contract_run(
    live_service: Service, session: requests.Session
) -> None:
    assert live_service.process is not None and live_service.process.returncode is None
    health = session.get(BASE_URL + "/v1/health", timeout=TIMEOUT_S)
    assert health.status_code == 200
    assert msgspec.json.decode(health.content, type=wire.Health).status == "ok"
