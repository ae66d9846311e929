"""Property tests of the spec and config decoders over generated documents: hostile values in
every field (non-finite floats, huge integers, NUL, control characters, lone surrogates,
unknown fields, wrong types). Validation accepts, or raises SpecError / ConfigError whose
every message names a field path; never any other exception. And what it accepts runs: no
instance fails for a reason validation could have caught."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import yaml
from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aiobatch import JobFailed, Runtime
from aiobatch.config import load_config
from aiobatch.errors import ConfigError, SpecError
from aiobatch.limits import MAX_CONFIG_BYTES
from aiobatch.spec import JobDef, load_spec, resolve_spec
from aiobatch.spec_checks import printable
from tests.helpers import kill_leftovers

FIELD_PATH = re.compile(r"\$(\.|\[|:)")  # $.tasks[0].env.K, $['bad key'], "$: not a mapping"

HOSTILE_TEXT = st.sampled_from(
    ["", " ", "\0", "a\0b", "\x1b]0;x\x07", "\x1b[2J", "\x9b", "\x7f", "\ud800", "=", "A=B",
     "10m", "1h30m", ".nan", "s3://b/k", "file:///x", "nobody", "root:0", "65534:65534",
     "../up", "/abs", "{job_id}", "{nope}", "x" * 140_000]
)  # fmt: skip
TEXT = st.one_of(st.text(max_size=12), HOSTILE_TEXT)
INTS = st.one_of(
    st.integers(-2, 4),
    st.integers(),
    st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63) - 1, 10**9, 2**70, 10**30]),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
ANYTHING = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
ENV = st.dictionaries(TEXT, st.one_of(TEXT, INTS, FLOATS, st.booleans()), max_size=3)
MAPPING = st.fixed_dictionaries({"path": TEXT}, optional={"from": TEXT, "to": TEXT})


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the field's own kind of value, sometimes anything at all."""
    return st.one_of(strategy, strategy, ANYTHING)


TASK_FIELDS = {
    "command": maybe(st.one_of(TEXT, st.lists(TEXT, max_size=3))),
    "image": maybe(TEXT),
    "instances": maybe(INTS),
    "env": maybe(ENV),
    "inputs": maybe(st.lists(MAPPING, max_size=2)),
    "outputs": maybe(st.lists(MAPPING, max_size=2)),
    "stdout": maybe(TEXT),
    "max_parallel": maybe(INTS),
    "timeout": maybe(st.one_of(TEXT, INTS, FLOATS)),
    "retries": maybe(
        st.one_of(
            INTS,
            st.fixed_dictionaries(
                {}, optional={"limit": INTS, "on_exit_codes": st.lists(INTS, max_size=3)}
            ),
        )
    ),
    "on_failure": maybe(st.sampled_from(["fail_job", "continue", "explode"])),
    "compute_env": maybe(st.sampled_from(["local", "docker", "gpu"])),
    "resources": maybe(
        st.fixed_dictionaries(
            {}, optional={"cpus": st.one_of(FLOATS, INTS), "memory": st.one_of(TEXT, INTS)}
        )
    ),
    "workdir": maybe(TEXT),
    "user": maybe(TEXT),
    "network": maybe(TEXT),
    "pull": maybe(st.sampled_from(["always", "never"])),
    "keep_failed": maybe(st.booleans()),
    "unknown_field": ANYTHING,
}
TASK = st.fixed_dictionaries(
    {"name": maybe(st.sampled_from(["a", "b", "c"]))},
    optional={
        **TASK_FIELDS,
        "template": maybe(st.sampled_from(["t", "nope"])),
        "depends_on": maybe(st.lists(st.sampled_from(["a", "b", "c", "z"]), max_size=2)),
    },
)
DOCUMENT = st.one_of(
    st.fixed_dictionaries(
        {"name": maybe(TEXT), "tasks": maybe(st.lists(TASK, max_size=3))},
        optional={
            "priority": maybe(INTS),
            "env": maybe(ENV),
            "templates": maybe(
                st.dictionaries(TEXT, st.fixed_dictionaries({}, optional=TASK_FIELDS), max_size=2)
            ),
            "prority": ANYTHING,
        },
    ),
    ANYTHING,
)
PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_field_paths(errors: tuple[str, ...] | list[str]) -> None:
    assert errors
    for error in errors:
        assert FIELD_PATH.match(error), error
        assert printable(error) == error, error  # one line, nothing for a terminal to act on


@PROPERTIES
@given(DOCUMENT, st.booleans())
def test_a_document_is_accepted_or_refused_with_field_paths(doc: Any, switch: bool) -> None:
    try:
        resolve_spec(doc, switch_user=switch)
    except SpecError as exc:
        assert_field_paths(exc.errors)


@settings(PROPERTIES, max_examples=100)
@given(DOCUMENT)
def test_a_yaml_file_is_accepted_or_refused_with_field_paths(doc: Any) -> None:
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, UnicodeEncodeError):
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yaml"
        path.write_text(text, errors="surrogatepass")
        try:
            load_spec(path, switch_user=False)
        except SpecError as exc:
            if not exc.errors[0].startswith(f"{path}: "):  # not the file's: its fields'
                assert_field_paths(exc.errors)


CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "state_dir": maybe(TEXT),
        "kill_grace": maybe(st.one_of(TEXT, INTS, FLOATS)),
        "shutdown_grace": maybe(st.one_of(TEXT, INTS, FLOATS)),
        "lost_limit": maybe(INTS),
        "max_instances": maybe(INTS),
        "detach_on_shutdown": maybe(st.booleans()),
        "compute_envs": maybe(
            st.dictionaries(
                st.sampled_from(["gpu", "d"]),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "kind": maybe(st.sampled_from(["local", "docker"])),
                        "slots": maybe(INTS),
                        "hosts": maybe(st.lists(TEXT, max_size=2)),
                        "engine_retry": maybe(st.one_of(TEXT, FLOATS)),
                    },
                ),
                max_size=2,
            )
        ),
        "templates": maybe(
            st.dictionaries(TEXT, st.fixed_dictionaries({}, optional=TASK_FIELDS), max_size=2)
        ),
        "storage": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "s3": st.fixed_dictionaries(
                        {}, optional={"max_transfers": maybe(INTS), "max_attempts": maybe(INTS)}
                    )
                },
            )
        ),
        "server": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "allowed_uids": maybe(st.lists(INTS, max_size=2)),
                    "http": maybe(TEXT),
                    "token": maybe(TEXT),
                },
            )
        ),
        "bogus": ANYTHING,
    },
)


def drop_none(value: Any) -> Any:
    """TOML has no null."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value if v is not None]
    return value


@settings(PROPERTIES, max_examples=200)
@given(CONFIG)
def test_a_config_file_is_accepted_or_refused_with_field_paths(doc: dict[str, Any]) -> None:
    try:
        data = msgspec.toml.encode(drop_none(doc))
    except (TypeError, ValueError, OverflowError):
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aiobatch.toml"
        path.write_bytes(data)
        try:
            load_config(path)
        except ConfigError as exc:
            lines = str(exc).splitlines()
            if len(data) > MAX_CONFIG_BYTES:  # refused before it is read: one line says so
                assert lines == [
                    f"{path}: larger than {MAX_CONFIG_BYTES} bytes, the limit for a config "
                    f"file ({len(data)} bytes)"
                ]
            elif not lines[0].startswith(f"{path}: not valid TOML"):
                assert lines and all(line.startswith(f"{path}: $") for line in lines), lines
        else:
            assert len(data) <= MAX_CONFIG_BYTES


# -- what is accepted runs -------------------------------------------------------------------

# Hostile strings more often than TEXT has them: what validation lets through must run.
LOCAL_TEXT = st.one_of(HOSTILE_TEXT, HOSTILE_TEXT, st.text(max_size=8))
LOCAL_ENV = st.dictionaries(LOCAL_TEXT, st.one_of(LOCAL_TEXT, INTS, FLOATS), max_size=3)
LOCAL_TASK = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "b"]), "command": st.sampled_from(["true", ("true",), ": ok"])},
    optional={
        "instances": st.one_of(st.integers(1, 2), INTS),
        "env": LOCAL_ENV,
        "max_parallel": INTS,
        "timeout": st.one_of(FLOATS, INTS, TEXT),
        "retries": st.one_of(
            INTS, st.fixed_dictionaries({"on_exit_codes": st.lists(INTS, max_size=2)})
        ),
        "on_failure": st.sampled_from(["fail_job", "continue"]),
    },
)
LOCAL_JOB = st.fixed_dictionaries(
    {"name": LOCAL_TEXT, "tasks": st.lists(LOCAL_TASK, min_size=1, max_size=2)},
    optional={"priority": INTS, "env": LOCAL_ENV},
)
# Reasons an instance of `true` may fail for that validation could have known: none may
# appear (a spawner that crashed on what it was given makes its attempts lost).
CAUGHT_AT_VALIDATION = re.compile(
    r"^(executor_error|spawn_failed|exec_failed|runtime_lost)|Argument list too long|null"
)


@pytest.fixture(scope="module")
def portal_runtime(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BlockingPortal, Runtime]]:
    state_dir = tmp_path_factory.mktemp("accepted") / "state"
    try:
        with anyio.from_thread.start_blocking_portal() as portal:
            with portal.wrap_async_context_manager(Runtime(state_dir)) as runtime:
                yield portal, runtime
    finally:
        kill_leftovers(state_dir)


async def run_to_end(runtime: Runtime, defn: JobDef) -> list[str]:
    job = await runtime.submit(defn)
    with anyio.fail_after(30):
        try:
            await job.wait_for_success()
        except JobFailed:
            pass
    reasons = []
    for task in defn.tasks:
        result = await job.get_task_result(task.name)
        reasons += [i.reason or "" for i in result.instances or []]
    return reasons


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
@given(LOCAL_JOB)
def test_what_validation_accepts_runs_without_an_error_it_could_have_caught(
    portal_runtime: tuple[BlockingPortal, Runtime], doc: dict[str, Any]
) -> None:
    portal, runtime = portal_runtime
    try:
        defn = runtime.resolve(doc)
    except SpecError:
        assume(False)
        return
    assume(sum(task.instances for task in defn.tasks) <= 4)
    reasons = portal.call(run_to_end, runtime, defn)
    assert not [r for r in reasons if CAUGHT_AT_VALIDATION.search(r)], reasons
