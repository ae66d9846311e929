"""Secrets in the spec (names and sources checked, templates merged, never both env and
secret) and their reading when an attempt starts (values, bounds, messages without them)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import rich.pretty
import structlog

from aiobatch.attempt import AttemptControl, InstanceContext
from aiobatch.errors import SpecError
from aiobatch.limits import MAX_SECRET_BYTES, MAX_SECRETS
from aiobatch.logging import configure_logging
from aiobatch.secret_sources import SecretUnavailable, read_secret, read_secrets
from aiobatch.spec import resolve_spec

VALUE = "s3cr3t-value-4bd1e0"


def errors_of(spec: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve_spec(spec)
    return list(info.value.errors)


def job(**task: Any) -> dict[str, Any]:
    return {"name": "j", "tasks": [{"name": "a", "command": "true", **task}]}


def test_sources_are_resolved_and_stored_as_written_with_templates_merged() -> None:
    spec = {
        "name": "j",
        "secrets": {"JOB_KEY": "env:RUNTIME_KEY"},
        "templates": {"t": {"secrets": {"A": "file:/run/a", "B": "env:B_FROM_TEMPLATE"}}},
        "tasks": [{"name": "a", "command": "true", "template": "t", "secrets": {"B": "env:B2"}}],
    }
    defn = resolve_spec(spec)
    assert defn.secrets == {"JOB_KEY": "env:RUNTIME_KEY"}
    assert defn.tasks[0].secrets == {"A": "file:/run/a", "B": "env:B2"}  # the task's win
    assert defn.tasks[0].env == {}  # a secret is never plain data
    stored = msgspec.json.decode(msgspec.json.encode(defn))
    assert stored["tasks"][0]["secrets"] == {"A": "file:/run/a", "B": "env:B2"}


def test_names_and_sources_are_checked_with_their_paths() -> None:
    secrets = {
        "": "env:X",
        "B=C": "env:X",
        "AIOBATCH_JOB_ID": "env:X",
        "REL": "file:relative/path",
        "NOVAR": "env:",
        "EQ": "env:A=B",
        "LONG": "file:/" + "p" * 5000,
        "GOOD": "file:/run/secrets/good",
    }
    errors = errors_of(job(secrets=secrets))
    assert errors == [
        "$.tasks[0].secrets: a secret needs a variable name (got an empty key)",
        "$.tasks[0].secrets['B=C']: 'B=C' is not a variable name: it contains '='",
        "$.tasks[0].secrets.AIOBATCH_JOB_ID: names starting with AIOBATCH_ are the runtime's",
        "$.tasks[0].secrets.REL: a file: source needs an absolute path (file:/abs/path)",
        "$.tasks[0].secrets.NOVAR: an env: source needs a variable name, without '='",
        "$.tasks[0].secrets.EQ: an env: source needs a variable name, without '='",
        "$.tasks[0].secrets.LONG: path longer than 4095 bytes (PATH_MAX)",
    ]


def test_a_value_written_where_its_source_belongs_is_not_quoted() -> None:
    literal = {"TOKEN": VALUE}
    templated = {**job(template="t"), "templates": {"t": {"secrets": literal}}}
    for where, spec in (
        ("$.secrets.TOKEN", {**job(), "secrets": literal}),
        ("$.tasks[0].secrets.TOKEN", job(secrets=literal)),
        ("$.templates.t.secrets.TOKEN", templated),
    ):
        [error] = errors_of(spec)
        assert error.startswith(f"{where}: not a secret source (not shown")
        assert VALUE not in error


def test_a_name_is_env_or_secret_never_both() -> None:
    # In the task itself, between the job and the task (both ways), and in the job itself.
    assert errors_of(job(env={"A": "x"}, secrets={"A": "env:A"})) == [
        "$.tasks[0].secrets.A: also set in $.tasks[0].env.A: a variable is either plain data "
        "(env) or a secret, not both"
    ]
    spec = {**job(secrets={"A": "env:A"}), "env": {"A": "x"}}
    assert errors_of(spec)[0].startswith("$.tasks[0].secrets.A: also set in $.env.A:")
    spec = {**job(env={"A": "x"}), "secrets": {"A": "env:A"}}
    assert errors_of(spec)[0].startswith("$.secrets.A: also set in $.tasks[0].env.A:")
    two_tasks = {
        "name": "j",
        "env": {"A": "x"},
        "secrets": {"A": "env:A"},
        "tasks": [{"name": "a", "command": "true"}, {"name": "b", "command": "true"}],
    }
    assert errors_of(two_tasks) == [  # once for the job, not once per task
        "$.secrets.A: also set in $.env.A: a variable is either plain data (env) or a secret, "
        "not both"
    ]


def test_too_many_secrets_are_refused() -> None:
    many = {f"S{i}": "env:X" for i in range(MAX_SECRETS + 1)}
    assert errors_of(job(secrets=many)) == [
        f"$.tasks[0].secrets: at most {MAX_SECRETS} secrets, got {MAX_SECRETS + 1}"
    ]
    assert resolve_spec(job(secrets=dict(list(many.items())[:MAX_SECRETS]))).tasks[0].secrets


def test_the_schema_shows_secrets() -> None:
    from aiobatch.spec import json_schema

    defs = json_schema()["$defs"]
    assert defs["JobSpec"]["properties"]["secrets"]["additionalProperties"] == {"type": "string"}
    assert "secrets" in defs["TaskSpec"]["properties"]


# -- reading at the start of an attempt --------------------------------------------------------


def test_values_are_read_from_files_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(VALUE + "\n")  # as `echo VALUE > token` writes it
    environ = {"RUNTIME_KEY": "from-env"}
    values = read_secrets({"JOB": "env:RUNTIME_KEY"}, {"TOKEN": f"file:{path}"}, environ)
    assert values == {"JOB": "from-env", "TOKEN": VALUE}
    # The task's source wins over the job's for the same name.
    assert read_secrets({"T": "env:RUNTIME_KEY"}, {"T": f"file:{path}"}, environ) == {"T": VALUE}


def unavailable(name: str, source: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(SecretUnavailable) as info:
        read_secret(name, source, environ or {})
    assert info.value.name == name
    return str(info.value)


def test_an_unreadable_source_names_the_secret_and_why_never_the_content(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert unavailable("T", f"file:{missing}") == (
        f"T: file {missing}: cannot read: No such file or directory"
    )
    assert unavailable("T", "env:NOT_SET") == "T: env:NOT_SET: not set in the runtime's environment"
    assert unavailable("T", f"file:{tmp_path}").startswith(f"T: file {tmp_path}: is a directory")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: it must not wait for one
    assert "not a regular file" in unavailable("T", f"file:{fifo}")
    big = tmp_path / "big"
    big.write_text(VALUE * (MAX_SECRET_BYTES // len(VALUE) + 1))
    assert "larger than 65536 bytes" in unavailable("T", f"file:{big}")
    assert "longer than 65536 bytes" in unavailable("T", "env:BIG", {"BIG": "x" * 65537})
    latin = tmp_path / "latin"
    latin.write_bytes(b"caf\xe9-" + VALUE.encode())
    message = unavailable("T", f"file:{latin}")
    assert message == f"T: file:{latin}: not UTF-8 text"  # the decoder would quote 0xe9
    nul = tmp_path / "nul"
    nul.write_bytes(VALUE.encode() + b"\0")
    assert unavailable("T", f"file:{nul}") == (
        f"T: file:{nul}: holds a NUL byte, which no variable can"
    )
    assert "not UTF-8" in unavailable("T", "env:RAW", {"RAW": "caf\udce9"})
    assert unavailable("T", VALUE) == "T: not a secret source (file:/abs/path or env:VAR)"
    with pytest.raises(SecretUnavailable, match="AIOBATCH_X: names starting with AIOBATCH_"):
        read_secrets({}, {"AIOBATCH_X": "env:X"}, {"X": "y"})  # a JobDef made in Python


def test_a_console_traceback_shows_no_local_values() -> None:
    """An executor's failure is logged with its traceback; on a terminal, rich would print
    each frame's locals (an instance's environment) unless told not to."""
    stream = io.StringIO()
    configure_logging("console", "info", stream)

    def start(env: dict[str, str]) -> None:
        raise RuntimeError("engine refused")

    try:
        try:
            start({"TOKEN": VALUE})
        except RuntimeError:
            structlog.get_logger("t").exception("executor_failed")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "engine refused" in text and "executor_failed" in text
    assert VALUE not in text


@pytest.mark.anyio
async def test_an_attempts_context_shows_no_environment_in_its_repr(tmp_path: Path) -> None:
    """The executor's context holds the values: a log line or a traceback that prints it
    must not print them."""
    defn = resolve_spec(job(secrets={"TOKEN": "env:TOKEN"})).tasks[0]
    ctx = InstanceContext(
        job_id="j1",
        job_name="j",
        task=defn,
        index=0,
        attempt=1,
        work_dir=tmp_path,
        stdout_path=tmp_path / "0.stdout",
        stderr_path=tmp_path / "0.stderr",
        env={"TOKEN": VALUE},
        kill_grace_s=1.0,
        control=AttemptControl(),
    )
    assert "env:TOKEN" in repr(ctx) and VALUE not in repr(ctx)
    shown = rich.pretty.pretty_repr(ctx)  # rich asks for its fields, not for its repr
    assert "env:TOKEN" in shown and VALUE not in shown
