"""The job's own ``timeout``: the duration syntax and bounds of a task's, at ``$.timeout``."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from aiobatch.errors import SpecError
from aiobatch.spec import JobDef, json_schema, load_spec, resolve_spec

TASKS = [{"name": "t", "command": "true"}]


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [("1s", 1.0), (30, 30.0), (0.5, 0.5), ("1h30m", 5400.0), ("365d", 365 * 86400.0)],
)
def test_a_job_timeout_is_a_duration(timeout: object, seconds: float) -> None:
    assert resolve_spec({"name": "j", "timeout": timeout, "tasks": TASKS}).timeout_s == seconds


def test_no_job_timeout_means_no_deadline() -> None:
    assert resolve_spec({"name": "j", "tasks": TASKS}).timeout_s is None


def test_bad_job_timeouts_are_refused_with_their_path(tmp_path: Path) -> None:
    bad = {
        ".nan": "bad duration nan: must be a number of seconds, not NaN",
        ".inf": "bad duration inf: at most 31536000 seconds (365 days)",
        "-.inf": "bad duration -inf: must be greater than zero",
        "0": "bad duration 0: must be greater than zero",
        "-5": "bad duration -5: must be greater than zero",
        "366d": "bad duration '366d': at most 31536000 seconds (365 days)",
        "31536001": "bad duration 31536001: at most 31536000 seconds (365 days)",
        "soon": "bad duration 'soon': expected e.g. '30s', '10m', '1h30m'",
        "true": "expected a duration like '30s', '10m' or '1h30m', got a boolean",
    }
    for text, message in bad.items():
        path = tmp_path / "job.yaml"
        path.write_text(f"name: j\ntimeout: {text}\ntasks: [{{name: t, command: 'true'}}]\n")
        with pytest.raises(SpecError) as info:
            load_spec(path)
        errors = list(info.value.errors)
        assert len(errors) == 1 and errors[0].startswith("$.timeout: "), (text, errors)
        if text != "true":  # a YAML boolean is refused by its type, before the duration check
            assert errors[0] == f"$.timeout: {message}", text


def test_a_stored_job_without_a_timeout_still_loads() -> None:
    """Jobs stored before the field existed have no ``timeout_s`` in their JSON."""
    stored = msgspec.json.encode({"name": "j", "tasks": [{"name": "t", "command": "true"}]})
    assert msgspec.json.decode(stored, type=JobDef).timeout_s is None


def test_the_schema_shows_the_job_timeout() -> None:
    assert "timeout" in json_schema()["$defs"]["JobSpec"]["properties"]
