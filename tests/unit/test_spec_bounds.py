"""Bounds of the job spec, one class of bad input per test: each is refused at validation
with its field path and its limit, all of a spec's errors together."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aiobatch.errors import SpecError
from aiobatch.limits import ARG_MAX, MAX_ARG_STRLEN, MAX_YAML_EXPANDED, SPEC_ARG_BUDGET
from aiobatch.spec import JobSpec, TaskSpec, json_schema, load_spec, resolve_spec
from aiobatch.units import parse_duration, parse_size


def task(**fields: Any) -> dict[str, Any]:
    return {"name": "t", "command": "true", **fields}


def job(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "j", "tasks": list(tasks or [task()]), **fields}


def errors_of(spec: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve_spec(spec, **kwargs)
    return list(info.value.errors)


# -- numbers -----------------------------------------------------------------------------------


def test_priority_fits_sqlite_integer() -> None:
    assert resolve_spec(job(priority=2**63 - 1)).priority == 2**63 - 1
    assert resolve_spec(job(priority=-(2**63))).priority == -(2**63)
    assert errors_of(job(priority=2**63)) == ["$.priority: expected `int` <= 9223372036854775807"]
    assert errors_of(job(priority=-(2**63) - 1)) == [
        "$.priority: expected `int` >= -9223372036854775808"
    ]


def test_a_priority_set_in_python_is_checked_too() -> None:
    spec = JobSpec(name="j", tasks=(TaskSpec(name="t", command="true"),), priority=2**70)
    assert errors_of(spec) == ["$.priority: expected `int` <= 9223372036854775807"]


def test_instances_are_bounded_by_max_instances_per_task_and_per_job() -> None:
    assert errors_of(job(task(instances=10**9))) == [
        "$.tasks[0].instances: at most 1000000 (max_instances), got 1000000000"
    ]
    two = job(task(instances=600_000), task(name="u", instances=600_000))
    assert errors_of(two) == [
        "$.tasks: the job's instances add up to 1200000; at most 1000000 (max_instances) in a job"
    ]
    assert errors_of(job(task(instances=11)), max_instances=10) == [
        "$.tasks[0].instances: at most 10 (max_instances), got 11"
    ]
    assert resolve_spec(job(task(instances=1_000_000))).tasks[0].instances == 1_000_000


def test_a_dag_of_10000_tasks_passes() -> None:
    tasks = [task(name="t0")] + [
        task(name=f"t{i}", depends_on=[f"t{i - 1}"]) for i in range(1, 10_000)
    ]
    assert len(resolve_spec(job(*tasks)).tasks) == 10_000


def test_retries_exit_codes_cpus_and_memory_have_ranges() -> None:
    errors = errors_of(
        job(
            task(retries={"limit": 1001}),
            task(name="u", retries={"on_exit_codes": [256]}, image="i"),
            task(name="v", image="i", resources={"cpus": float("nan"), "memory": 2**63}),
            task(name="w", image="i", resources={"cpus": 1e9, "memory": "9999999TiB"}),
        )
    )
    assert errors == [
        "$.tasks[0].retries.limit: expected `int` <= 1000",
        "$.tasks[1].retries.on_exit_codes[0]: expected `int` <= 255",
        "$.tasks[2].resources.cpus: must be from 0.01 to 4096, got nan",
        "$.tasks[2].resources.memory: bad size 9223372036854775808: "
        "at most 9223372036854775807 bytes (2**63 - 1)",
        "$.tasks[3].resources.cpus: must be from 0.01 to 4096, got 1000000000.0",
        "$.tasks[3].resources.memory: bad size '9999999TiB': "
        "at most 9223372036854775807 bytes (2**63 - 1)",
    ]


def test_a_container_gets_a_cpu_share_the_engine_keeps_and_a_workdir_it_mounts() -> None:
    """0.0000000001 CPU would reach the engine as NanoCpus 0, which means no limit; a
    workdir ``/a:ro`` would mount the work dir read-only at /a and run the program in an
    empty /a:ro."""
    errors = errors_of(
        job(
            task(image="i", resources={"cpus": 1e-10}, workdir="/a:ro"),
            task(name="u", image="i", workdir="relative"),
            task(name="v", image="i", resources={"cpus": 0.01}, workdir="/job"),
        )
    )
    assert errors == [
        "$.tasks[0].resources.cpus: must be from 0.01 to 4096, got 1e-10",
        "$.tasks[0].workdir: must be an absolute path of at most 4096 characters, without ':'"
        " or ',' (it is a bind mount's target), got '/a:ro'",
        "$.tasks[1].workdir: must be an absolute path of at most 4096 characters, without ':'"
        " or ',' (it is a bind mount's target), got 'relative'",
    ]


def test_nan_and_infinite_timeouts_from_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\ntasks:\n"
        "  - {name: a, command: 'true', timeout: .nan}\n"
        "  - {name: b, command: 'true', timeout: .inf}\n"
        "  - {name: c, command: 'true', timeout: -.inf}\n"
        "  - {name: d, command: 'true', timeout: 400d}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert list(info.value.errors) == [
        "$.tasks[0].timeout: bad duration nan: must be a number of seconds, not NaN",
        "$.tasks[1].timeout: bad duration inf: at most 31536000 seconds (365 days)",
        "$.tasks[2].timeout: bad duration -inf: must be greater than zero",
        "$.tasks[3].timeout: bad duration '400d': at most 31536000 seconds (365 days)",
    ]


def test_durations_and_sizes_take_ascii_digits_only() -> None:
    for text in ("\u0661\u0660s", "\uff11s", "1\u0660m"):
        with pytest.raises(ValueError, match="bad duration"):
            parse_duration(text)
    with pytest.raises(ValueError, match="bad size"):
        parse_size("\u0661\u0662MiB")
    with pytest.raises(ValueError, match="at most 31536000"):
        parse_duration(10**400)


# -- strings -----------------------------------------------------------------------------------


def test_nul_is_refused_in_every_string_that_reaches_exec_env_files_or_storage() -> None:
    spec = job(
        task(command="echo a\0b", env={"K\0": "v", "V": "x\0y"}, user="no\0body"),
        task(name="u", command=["echo", "a\0"], image="img\0", workdir="/w\0"),
        task(name="v", outputs=[{"path": "o\0", "to": "s3://b/k\0"}]),
        name="j\0",
    )
    errors = errors_of(spec, switch_user=True)
    for path in (
        "$.name",
        "$.tasks[0].command",
        "$.tasks[0].env.V",
        "$.tasks[0].user",
        "$.tasks[1].command[1]",
        "$.tasks[1].image",
        "$.tasks[1].workdir",
        "$.tasks[2].outputs[0].path",
        "$.tasks[2].outputs[0].to",
    ):
        assert f"{path}: string contains a NUL byte" in errors
    assert "$.tasks[0].env: key 'K\\x00' contains a NUL byte" in errors


def test_lone_surrogates_are_refused() -> None:
    assert errors_of(job(task(env={"A": "\ud800"}))) == [
        "$.tasks[0].env.A: string is not valid Unicode (a lone surrogate)"
    ]


def test_env_keys_need_a_name_without_equals() -> None:
    errors = errors_of(job(task(env={"A=B": "1", "": "x"}), env={"=": "y"}))
    assert errors == [
        "$.env['=']: '=' is not a variable name: it contains '='",
        "$.tasks[0].env['A=B']: 'A=B' is not a variable name: it contains '='",
        "$.tasks[0].env: an environment variable needs a name (got an empty key)",
    ]


def test_job_name_control_characters_and_length() -> None:
    for bad in ("\x1b]0;pwned\x07", "a\x9bb", "del\x7f", "tab\t"):
        [error] = errors_of(job(name=bad))
        assert error.startswith("$.name: control character ")
    errors = errors_of(job(name="x" * 2_000_000))
    assert errors[0] == "$.name: at most 256 characters, got 2000000"
    assert errors[1].startswith("$.tasks[0]: its command and environment take 2001")
    assert resolve_spec(job(name="ünïcode ok " + "x" * 245)).name.startswith("ünïcode")


def test_each_argument_fits_max_arg_strlen_and_all_of_them_arg_max() -> None:
    long = "x" * MAX_ARG_STRLEN
    errors = errors_of(job(task(command=["echo", long], env={"K": long})))
    assert errors == [
        f"$.tasks[0].command[1]: {MAX_ARG_STRLEN + 1} bytes; the system takes at most "
        f"{MAX_ARG_STRLEN} (MAX_ARG_STRLEN) per argument or environment entry",
        f"$.tasks[0].env.K: {MAX_ARG_STRLEN + 3} bytes; the system takes at most "
        f"{MAX_ARG_STRLEN} (MAX_ARG_STRLEN) per argument or environment entry",
    ]
    chunk = "x" * (MAX_ARG_STRLEN // 2)
    many = {f"K{i}": chunk for i in range(SPEC_ARG_BUDGET // len(chunk) + 1)}
    [error] = errors_of(job(env=many))
    assert error.startswith("$.tasks[0]: its command and environment take ")
    assert error.endswith(
        f"at most {SPEC_ARG_BUDGET} fit, half the system's ARG_MAX ({ARG_MAX}): the other "
        "half is kept for the environment the service passes on"
    )


def test_an_unknown_top_level_field_is_reported_with_the_others() -> None:
    errors = errors_of(
        {"name": "j", "tasks": [task(instances=0), {"name": "u"}], "prority": 3, "env": []}
    )
    assert errors == [
        "$.prority: unknown field",
        "$.env: expected `object`, got `array`",
        "$.tasks[0].instances: must be at least 1, got 0",
        "$.tasks[1].command: required (a task without an image needs a command)",
    ]


def test_errors_are_capped() -> None:
    errors = errors_of(job(*[task(name=f"t{i}", instances=0) for i in range(150)]))
    assert len(errors) == 101 and errors[-1] == "$: and 50 more errors"


# -- local tasks honour or refuse --------------------------------------------------------------


def test_container_only_fields_are_refused_on_local_tasks() -> None:
    fields = {
        "workdir": "/w",
        "resources": {"cpus": 1},
        "network": "none",
        "pull": "always",
        "keep_failed": True,
    }
    errors = errors_of(job(task(**fields), task(name="u", image="busybox", compute_env="local")))
    assert errors == [
        f"$.tasks[0].{name}: not supported by compute env 'local' (kind 'local'): "
        "only a container honours it"
        for name in fields
    ] + [
        "$.tasks[1].image: not supported by compute env 'local' (kind 'local'): "
        "only a container honours it"
    ]
    docker = resolve_spec(job(task(image="busybox", **fields)))
    assert docker.tasks[0].workdir == "/w" and docker.tasks[0].compute_env == "docker"
    envs = {"cpu": "local", "docker": "docker"}
    [error] = errors_of(job(task(compute_env="cpu", network="n")), compute_envs=envs)
    assert error.startswith("$.tasks[0].network: not supported by compute env 'cpu'")


def test_user_on_a_local_task_needs_a_runtime_that_may_switch_users() -> None:
    spec = job(task(user="nobody"))
    assert errors_of(spec, switch_user=False) == [
        "$.tasks[0].user: a local task runs as another user only when the runtime is root or "
        "has CAP_SETUID, CAP_SETGID and CAP_CHOWN; this one has not"
    ]
    for user in ("nobody", "65534", "nobody:0", "65534:65534", "0:0"):
        assert resolve_spec(job(task(user=user)), switch_user=True).tasks[0].user == user
    errors = errors_of(
        job(
            task(user="no-such-user"),
            task(name="u", user="nobody:no-such-group"),
            task(name="v", user="nobody:"),
            task(name="w", user="4294967295:0"),
        ),
        switch_user=True,
    )
    assert errors == [
        "$.tasks[0].user: no user 'no-such-user' on this host",
        "$.tasks[1].user: no group 'no-such-group' on this host",
        "$.tasks[2].user: 'nobody:' is not USER, UID, USER:GROUP or UID:GID",
        "$.tasks[3].user: 4294967295 is beyond the largest id (4294967294)",
    ]
    # A container's user is the image's business: not looked up here.
    assert resolve_spec(job(task(image="i", user="ghost")), switch_user=False).tasks[0].user


# -- files -------------------------------------------------------------------------------------


def test_dev_zero_a_fifo_and_a_big_file_are_refused_before_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading it would wait forever
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    started = time.monotonic()
    for path, problem in (
        ("/dev/zero", "/dev/zero: is a character device, not a regular file"),
        (fifo, f"{fifo}: is a FIFO, not a regular file"),
        (big, f"{big}: larger than 1048576 bytes, the limit for a spec (1048577 bytes)"),
        (tmp_path, f"{tmp_path}: is a directory, not a regular file"),
    ):
        with pytest.raises(SpecError) as info:
            load_spec(path)
        [error] = info.value.errors
        assert error.startswith(problem)
    assert time.monotonic() - started < 0.5


def test_validate_dev_zero_exits_2_at_once() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "aiobatch", "validate", "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "/dev/zero: is a character device, not a regular file" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 2
    assert time.monotonic() - started < 5  # the interpreter's start; the check itself is instant


def test_billion_laughs_yaml_is_refused_fast(tmp_path: Path) -> None:
    lines = ["name: j", 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines.append("tasks: [{name: a, command: 'true'}]")
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("\n".join(lines))
    merges = ["m0: &m0 {x: 1}"]
    merges += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, 64)]
    merged = tmp_path / "merges.yaml"
    merged.write_text("\n".join(merges))
    looped = tmp_path / "loop.yaml"
    looped.write_text("name: &n [*n]\ntasks: []\n")
    started = time.monotonic()
    for path in (laughs, merged):
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert list(info.value.errors) == [
            f"{path}: its aliases expanded, the document would exceed {MAX_YAML_EXPANDED} "
            "nodes and characters (anchors and aliases that multiply: refused)"
        ]
    with pytest.raises(SpecError, match="an alias refers to a node that contains it"):
        load_spec(looped)
    assert time.monotonic() - started < 1


def test_aliases_that_do_not_multiply_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: j\nx-env: &env {A: '1'}\n"
        "tasks:\n  - {name: a, command: 'true', env: *env}\n"
        "  - {name: b, command: 'true', env: *env}\n"
    )
    with pytest.raises(SpecError, match=r"\$\.x-env: unknown field"):
        load_spec(path)  # no extension fields at the top level: the alias itself was fine
    path.write_text(
        "name: j\ntemplates: {t: &t {command: 'true', env: {A: '1'}}}\n"
        "tasks:\n  - {name: a, template: t}\n  - {name: b, env: {B: '2'}, <<: *t}\n"
    )
    # A merge key's values under the task's own: b's env is its own, as YAML says.
    assert [t.env for t in load_spec(path).tasks] == [{"A": "1"}, {"B": "2"}]


def test_json_schema_shows_the_bounds() -> None:
    schema = json_schema()
    assert schema["$defs"]["JobSpec"]["properties"]["priority"]["maximum"] == 2**63 - 1
    codes = schema["$defs"]["RetryPolicy"]["properties"]["on_exit_codes"]["anyOf"][0]
    assert codes["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
