"""Spec checks of dependency conditions, by-index edges and retry policies."""

from __future__ import annotations

from typing import Any

import pytest

from aiobatch.errors import SpecError
from aiobatch.spec import json_schema, resolve_spec
from aiobatch.spec_types import BackoffDef


def job(*tasks: dict[str, Any]) -> dict[str, Any]:
    return {"name": "j", "tasks": list(tasks)}


def errors_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        resolve_spec(spec)
    return list(caught.value.errors)


def test_conditions_and_by_index_are_resolved() -> None:
    resolved = resolve_spec(
        job(
            {"name": "a", "command": "true", "instances": 4},
            {"name": "b", "command": "true", "instances": 4,
             "depends_on": [{"task": "a", "by_index": True}]},
            {"name": "c", "command": "true",
             "depends_on": ["a", {"task": "b", "when": "finished"}]},
        )
    )  # fmt: skip
    a, b, c = resolved.tasks
    assert (b.depends_on, b.by_index, b.conditions) == (("a",), ("a",), {})
    assert (c.depends_on, c.by_index, c.conditions) == (("a", "b"), (), {"b": "finished"})
    # b is waited on with `finished`: its failure never stops the job.
    assert (a.on_failure, b.on_failure, c.on_failure) == ("fail_job", "continue", "fail_job")


def test_dependency_mistakes_name_the_entry() -> None:
    errors = errors_of(
        job(
            {"name": "a", "command": "true", "instances": 3},
            {"name": "b", "command": "true", "instances": 2,
             "depends_on": [{"task": "a", "by_index": True}, {"task": "a", "when": "finished"}]},
            {"name": "c", "command": "true", "instances": 3,
             "depends_on": [{"task": "a", "by_index": True, "when": "finished"}]},
        )
    )  # fmt: skip
    assert list(errors) == [
        "$.tasks[1].depends_on[1]: task 'a' is listed twice with different conditions",
        "$.tasks[2].depends_on[0].when: 'finished' does not go with by_index: one instance "
        "starts once its counterpart SUCCEEDED (use when: succeeded)",
        "$.tasks[1].depends_on[0].by_index: 'b' has 2 instances and 'a' 3: by_index joins "
        "tasks of the same instance count",
    ]


def test_an_unknown_condition_names_the_choices() -> None:
    (error,) = errors_of(
        job({"name": "a", "command": "true"},
            {"name": "b", "command": "true", "depends_on": [{"task": "a", "when": "always"}]})
    )  # fmt: skip
    assert error.startswith("$.tasks[1].depends_on[0].when: ")
    assert "'succeeded', 'finished', 'partly_succeeded'" in error


def test_retry_policy_with_reasons_and_backoff() -> None:
    retries = {"limit": 3, "on_reasons": ["timeout", "oom"],
               "backoff": {"delay": "2s", "factor": 3, "max_delay": "1m"}}  # fmt: skip
    (task,) = resolve_spec(job({"name": "a", "command": "true", "retries": retries})).tasks
    assert task.retry_reasons == ("timeout", "oom")
    assert task.retry_backoff == BackoffDef(delay_s=2.0, factor=3.0, max_delay_s=60.0)
    assert [task.retry_backoff.wait_s(n) for n in (1, 2, 3, 4)] == [2.0, 6.0, 18.0, 54.0]
    assert task.retry_backoff.wait_s(5) == 60.0


@pytest.mark.parametrize(
    ("backoff", "error"),
    [
        ({"delay": "0s"}, "$.tasks[0].retries.backoff.delay: bad duration '0s': must be greater"),
        ({"delay": 1, "factor": 0.5}, "$.tasks[0].retries.backoff.factor: must be at least 1 "
         "and at most 100, got 0.5"),
        ({"delay": 1, "factor": float("nan")}, "$.tasks[0].retries.backoff.factor: must be"),
        ({"delay": 1, "max_delay": "400d"}, "$.tasks[0].retries.backoff.max_delay: bad duration"),
    ],
)  # fmt: skip
def test_backoff_bounds(backoff: dict[str, Any], error: str) -> None:
    errors = errors_of(job({"name": "a", "command": "true", "retries": {"backoff": backoff}}))
    assert len(errors) == 1 and errors[0].startswith(error)


def test_the_longest_backoff_never_overflows() -> None:
    backoff = BackoffDef(delay_s=365 * 86400.0, factor=100.0)
    assert backoff.wait_s(1000) == 365 * 86400.0


def test_an_unknown_retry_reason_is_refused() -> None:
    (error,) = errors_of(
        job({"name": "a", "command": "true", "retries": {"on_reasons": ["because"]}})
    )
    assert error.startswith("$.tasks[0].retries.on_reasons[0]: invalid enum value 'because'")
    assert "'timeout', 'oom'" in error


def test_json_schema_has_conditions_by_index_and_backoff() -> None:
    defs = json_schema()["$defs"]
    entry = defs["TaskSpec"]["properties"]["depends_on"]["items"]
    assert {"type": "string"} in entry["anyOf"]
    dependency = defs["Dependency"]["properties"]
    assert sorted(dependency["when"]["enum"]) == ["finished", "partly_succeeded", "succeeded"]
    assert dependency["by_index"]["type"] == "boolean"
    policy = defs["RetryPolicy"]["properties"]
    assert "timeout" in policy["on_reasons"]["anyOf"][0]["items"]["enum"]
    assert set(defs["Backoff"]["properties"]) == {"delay", "factor", "max_delay"}
