from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aiobatch.errors import SpecError
from aiobatch.spec import JobSpec, TaskSpec, TemplateSpec, json_schema, load_spec, resolve_spec
from aiobatch.units import parse_duration, parse_size


def errors_of(spec: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve_spec(spec, **kwargs)
    return list(info.value.errors)


def test_minimal_spec_gets_defaults() -> None:
    job = resolve_spec({"name": "j", "tasks": [{"name": "a", "command": "true"}]})
    task = job.tasks[0]
    assert (task.instances, task.compute_env, task.retry_limit, task.on_failure) == (
        1,
        "local",
        0,
        "fail_job",
    )
    assert task.timeout_s is None and task.max_parallel is None


def test_every_semantic_error_is_reported_with_its_field_path() -> None:
    spec = {
        "name": "j",
        "tasks": [
            {"name": "a", "command": "true", "instances": 0, "max_parallel": 0},
            {"name": "a", "command": "true"},
            {"name": "c", "command": "true", "depends_on": ["rendr"], "timeout": "10 minutes"},
            {"name": "d", "command": "true", "template": "nope", "compute_env": "gpu"},
        ],
    }
    errors = errors_of(spec)
    assert "$.tasks[0].instances: must be at least 1, got 0" in errors
    assert "$.tasks[0].max_parallel: must be at least 1, got 0" in errors
    assert "$.tasks[1].name: duplicate task name 'a' (first at $.tasks[0])" in errors
    assert "$.tasks[2].depends_on[0]: unknown task 'rendr'" in errors
    assert any(e.startswith("$.tasks[2].timeout: bad duration '10 minutes'") for e in errors)
    assert any(e.startswith("$.tasks[3].template: unknown template 'nope'") for e in errors)
    assert any(e.startswith("$.tasks[3].compute_env: unknown compute env 'gpu'") for e in errors)


def test_cycle_is_spelled_out() -> None:
    spec = {
        "name": "j",
        "tasks": [
            {"name": "a", "command": "true", "depends_on": ["c"]},
            {"name": "b", "command": "true", "depends_on": ["a"]},
            {"name": "c", "command": "true", "depends_on": ["b"]},
        ],
    }
    [error] = errors_of(spec)
    assert error.startswith("$.tasks[")
    assert ": dependency cycle " in error
    path = error.split("dependency cycle ")[1].split(" -> ")
    assert path[0] == path[-1] and sorted(path[:-1]) == ["a", "b", "c"]


def test_type_errors_of_every_task_are_reported() -> None:
    spec = {
        "name": "j",
        "tasks": [
            {"name": "a", "command": "true", "instances": "many"},
            {"name": "b", "command": "true", "colour": "red"},
            {"command": "true"},
        ],
    }
    assert errors_of(spec) == [
        "$.tasks[0].instances: expected `int`, got `str`",
        "$.tasks[1].colour: unknown field",
        "$.tasks[2].name: required field is missing",
    ]


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"inputs": [{"from": "s3://b/k", "path": "/etc/passwd"}]}, "must be relative"),
        ({"inputs": [{"from": "s3://b/k", "path": "a/../../x"}]}, "escapes the instance work dir"),
        ({"outputs": [{"path": "..", "to": "s3://b/k"}]}, "escapes the instance work dir"),
        ({"outputs": [{"path": "o", "to": "http://x/y"}]}, "must start with s3:// or file://"),
        ({"outputs": [{"path": "o", "to": "s3://b/{frame}"}]}, "unknown placeholder {frame}"),
        ({"stdout": "file://relative/x"}, "must be absolute"),
        ({"stderr": "s3:///key"}, "names no bucket"),
    ],
)
def test_mapping_problems(mapping: dict[str, Any], problem: str) -> None:
    spec = {"name": "j", "tasks": [{"name": "a", "command": "true", **mapping}]}
    [error] = errors_of(spec)
    assert error.startswith("$.tasks[0].") and problem in error


def test_placeholders_are_accepted_in_mappings() -> None:
    spec = {
        "name": "j",
        "tasks": [
            {
                "name": "a",
                "command": "true",
                "outputs": [{"path": "out/{index}/", "to": "s3://b/{job_id}/{task}/{attempt}/"}],
                "stdout": "file:///tmp/{job}/",
            }
        ],
    }
    assert resolve_spec(spec).tasks[0].outputs[0].to == "s3://b/{job_id}/{task}/{attempt}/"


def test_templates_merge_env_and_override_other_fields() -> None:
    config_templates = {"base": TemplateSpec(env={"A": "config"}, instances=3)}
    spec = {
        "name": "j",
        "env": {"N": 1, "FLAG": True},
        "templates": {"t": {"env": {"A": "1", "B": "2"}, "retries": 2, "instances": 4}},
        "tasks": [
            {"name": "x", "template": "t", "command": "true", "env": {"B": "x"}, "instances": 5},
            {"name": "y", "template": "base", "command": "true"},
        ],
    }
    job = resolve_spec(spec, templates=config_templates)
    x, y = job.tasks
    assert x.env == {"A": "1", "B": "x"} and x.instances == 5 and x.retry_limit == 2
    assert y.env == {"A": "config"} and y.instances == 3
    assert job.env == {"N": "1", "FLAG": "true"}


def test_retry_policy_forms() -> None:
    spec = {
        "name": "j",
        "tasks": [
            {"name": "a", "command": "true", "retries": 3},
            {"name": "b", "command": "true", "retries": {"limit": 2, "on_exit_codes": [137]}},
        ],
    }
    a, b = resolve_spec(spec).tasks
    assert (a.retry_limit, a.retry_exit_codes) == (3, None)
    assert (b.retry_limit, b.retry_exit_codes) == (2, (137,))


def test_image_task_defaults_to_docker_env() -> None:
    job = resolve_spec({"name": "j", "tasks": [{"name": "a", "image": "busybox"}]})
    assert job.tasks[0].compute_env == "docker" and job.tasks[0].command is None


def test_spec_struct_from_python() -> None:
    spec = JobSpec(name="j", tasks=(TaskSpec(name="a", command=("echo", "hi")),))
    assert resolve_spec(spec).tasks[0].command == ("echo", "hi")


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_files_by_extension(tmp_path: Path, suffix: str) -> None:
    texts = {
        ".yaml": "name: j\ntasks:\n  - name: a\n    command: [echo, hi]\n",
        ".json": json.dumps({"name": "j", "tasks": [{"name": "a", "command": ["echo", "hi"]}]}),
        ".toml": 'name = "j"\n[[tasks]]\nname = "a"\ncommand = ["echo", "hi"]\n',
    }
    path = tmp_path / f"job{suffix}"
    path.write_text(texts[suffix])
    assert load_spec(path).tasks[0].command == ("echo", "hi")


def test_unparseable_and_unknown_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    ini = tmp_path / "job.ini"
    ini.write_text("[job]\n")
    with pytest.raises(SpecError, match="unknown spec format"):
        load_spec(ini)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_json_schema_describes_tasks() -> None:
    schema = json_schema()
    task = schema["$defs"]["TaskSpec"]
    assert "depends_on" in task["properties"] and task["required"] == ["name"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("1h30m", 5400), ("500ms", 0.5), (2, 2.0), ("1d", 86400)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "-1s", "0s", "1x", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1G") == 10**9
    assert parse_size(4096) == 4096
    with pytest.raises(ValueError, match="bad size"):
        parse_size("lots")
