"""Bounds of the config file: every number has its range, every duration is finite, strings
take no NUL, the file is read only if it is a regular file of at most 1 MiB; every problem is
reported at once, each prefixed with the file's path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiobatch import Runtime
from aiobatch.config import load_config
from aiobatch.errors import ConfigError, SpecError


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "aiobatch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert all(line.startswith(f"{path}: $") for line in lines), lines
    return [line.removeprefix(f"{path}: ") for line in lines]


def test_kill_grace_nan_and_other_bad_durations(tmp_path: Path) -> None:
    assert problems(tmp_path, "kill_grace = nan\n") == [
        "$.kill_grace: bad duration nan: must be a number of seconds, not NaN"
    ]
    assert problems(
        tmp_path,
        'shutdown_grace = inf\n[compute_envs.d]\nkind = "docker"\nengine_retry = -1\n',
    ) == [
        "$.compute_envs.d.engine_retry: bad duration -1: must be greater than zero",
        "$.shutdown_grace: bad duration inf: at most 31536000 seconds (365 days)",
    ]


def test_max_instances_defaults_to_a_million_and_is_bounded(tmp_path: Path) -> None:
    assert load_config(None).max_instances == 1_000_000
    path = tmp_path / "ok.toml"
    path.write_text("max_instances = 50\n")
    assert load_config(path).max_instances == 50
    assert problems(tmp_path, "max_instances = 0\n") == ["$.max_instances: expected `int` >= 1"]
    assert problems(tmp_path, "max_instances = 100_000_000\n") == [
        "$.max_instances: expected `int` <= 10000000"
    ]


def test_every_number_has_its_range_and_all_are_reported(tmp_path: Path) -> None:
    text = (
        "lost_limit = 5000\n"
        "[compute_envs.x]\nslots = 0\n"
        "[storage.s3]\nmax_transfers = 0\nmax_attempts = 1000\n"
        "[server]\nallowed_uids = [4294967295]\n"
    )
    assert problems(tmp_path, text) == [
        "$.compute_envs.x.slots: expected `int` >= 1",
        "$.lost_limit: expected `int` <= 1000",
        "$.storage.s3.max_transfers: expected `int` >= 1",
        "$.server.allowed_uids[0]: expected `int` <= 4294967294",
    ]


def test_http_port_takes_ascii_digits_only(tmp_path: Path) -> None:
    text = '[server]\nhttp = "127.0.0.1:\u0668\u0660"\ntoken = "t"\n'
    assert problems(tmp_path, text) == ["$.server.http: '127.0.0.1:٨٠' is not HOST:PORT"]
    text = '[server]\nhttp = "127.0.0.1:65536"\ntoken = "t"\n'
    assert problems(tmp_path, text) == ["$.server.http: port 65536 is not between 0 and 65535"]
    path = tmp_path / "ok.toml"
    path.write_text('[server]\nhttp = "127.0.0.1:8080"\ntoken = "t"\n')
    assert load_config(path).server.http == "127.0.0.1:8080"


def test_nul_in_strings_and_unknown_fields(tmp_path: Path) -> None:
    text = 'state_dir = "/a\\u0000b"\nbogus = 1\n[server]\ntoken = "t\\u0000"\n'
    assert problems(tmp_path, text) == [
        "$.server.token: string contains a NUL byte",
        "$.state_dir: string contains a NUL byte",
        "$.bogus: unknown field",
    ]


def test_templates_are_checked_like_the_spec_s(tmp_path: Path) -> None:
    text = '[templates.t]\ntimeout = nan\nenv = {"A=B" = "1"}\ninstances = 0\n'
    assert problems(tmp_path, text) == [
        "$.templates.t.instances: must be at least 1, got 0",
        "$.templates.t.env['A=B']: 'A=B' is not a variable name: it contains '='",
        "$.templates.t.timeout: bad duration nan: must be a number of seconds, not NaN",
    ]


def test_only_a_regular_file_within_1_mib_is_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    started = time.monotonic()
    for path, problem in (
        ("/dev/zero", "/dev/zero: is a character device, not a regular file"),
        (fifo, f"{fifo}: is a FIFO, not a regular file"),
        (big, f"{big}: larger than 1048576 bytes, the limit for a config file"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(problem)
    assert time.monotonic() - started < 0.5


def test_max_instances_applies_to_the_runtime_and_to_validate(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text("max_instances = 5\n")
    spec = {"name": "j", "tasks": [{"name": "t", "command": "true", "instances": 6}]}
    runtime = Runtime(tmp_path / "state", config=load_config(path))
    with pytest.raises(SpecError) as info:
        runtime.resolve(spec)
    assert list(info.value.errors) == ["$.tasks[0].instances: at most 5 (max_instances), got 6"]
    spec_path = tmp_path / "job.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "aiobatch", "validate", "--config", str(path), str(spec_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "$.tasks[0].instances: at most 5 (max_instances), got 6" in done.stderr


def test_retention_ages_by_state(tmp_path: Path) -> None:
    path = tmp_path / "keep.toml"
    path.write_text('[retention]\nsucceeded = "7d"\ncancelled = 3600\n')
    assert load_config(path).retention.ages_s() == {"SUCCEEDED": 604800.0, "CANCELLED": 3600.0}
    assert load_config(None).retention.ages_s() == {}  # kept forever
    assert problems(tmp_path, '[retention]\nrunning = "1d"\n') == [
        "$.retention.running: unknown field"
    ]
    assert problems(tmp_path, '[retention]\nfailed = "forever"\n') == [
        "$.retention.failed: bad duration 'forever': expected e.g. '30s', '10m', '1h30m'"
    ]
    assert problems(tmp_path, "[retention]\nsucceeded = 0\n") == [
        "$.retention.succeeded: bad duration 0: must be greater than zero"
    ]


def test_a_slurm_env_and_what_it_refuses(tmp_path: Path) -> None:
    path = tmp_path / "hpc.toml"
    path.write_text(
        '[compute_envs.hpc]\nkind = "slurm"\npartition = "batch"\n'
        'sbatch_options = ["--constraint=avx2"]\npoll = "2s"\n'
    )
    env = load_config(path).effective_envs()["hpc"]
    assert (env.kind, env.slots, env.partition, env.chunk) == ("slurm", 1000, "batch", 1000)
    assert load_config(path).env_slots()["hpc"] == 1000
    assert problems(
        tmp_path,
        '[compute_envs.hpc]\nkind = "slurm"\npartition = "a b"\n'
        'sbatch_options = ["--array=0-3", ""]\npoll = "5ms"\n'
        '[compute_envs.box]\nkind = "docker"\npartition = "batch"\n',
    ) == [
        "$.compute_envs.hpc.partition: 'a b' is not a Slurm name",
        "$.compute_envs.hpc.sbatch_options[0]: '--array=0-3' is set by aiobatch itself",
        "$.compute_envs.hpc.sbatch_options[1]: must be a non-empty argument",
        "$.compute_envs.hpc.poll: between 0.1 s and 3600 s",
        '$.compute_envs.box.partition: only for kind = "slurm"',
    ]
