from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from aiobatch.attempt import AttemptControl, InstanceContext
from aiobatch.config import ComputeEnvConfig
from aiobatch.executors.docker import DockerExecutor
from aiobatch.executors.docker_containers import container_config
from aiobatch.executors.docker_hosts import DockerHosts
from aiobatch.spec import TaskDef


def context(task: TaskDef) -> InstanceContext:
    return InstanceContext(
        job_id="j1",
        job_name="job",
        task=task,
        index=3,
        attempt=2,
        work_dir=Path("/state/work/j1/t/3"),
        stdout_path=Path("/state/logs/j1/t/3.stdout"),
        stderr_path=Path("/state/logs/j1/t/3.stderr"),
        env={"A": "1", "AIOBATCH_INSTANCE_INDEX": "3"},
        kill_grace_s=1.0,
        control=AttemptControl(),
    )


def executor() -> DockerExecutor:
    env = ComputeEnvConfig(kind="docker", hosts=("unix:///a.sock", "unix:///b.sock"), slots=2)
    docker = DockerExecutor("docker", env, lambda: "rid")
    docker.runtime_id = "rid"
    return docker


@pytest.mark.anyio
async def test_container_config_maps_every_task_field() -> None:
    task = TaskDef(
        name="t",
        command="echo hi",
        image="img:1",
        cpus=0.5,
        memory_bytes=64 * 2**20,
        network="none",
        workdir="/job",
        user="nobody",
    )
    config = container_config("rid", context(task))
    assert config["Image"] == "img:1"
    assert config["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert config["Env"] == ["A=1", "AIOBATCH_INSTANCE_INDEX=3"]
    assert config["WorkingDir"] == "/job"
    assert config["User"] == "nobody"
    assert config["HostConfig"] == {
        "Binds": ["/state/work/j1/t/3:/job"],
        "Init": True,
        "NanoCpus": 500_000_000,
        "Memory": 64 * 2**20,
        "NetworkMode": "none",
    }
    assert config["Labels"] == {
        "aiobatch.runtime": "rid",
        "aiobatch.job": "j1",
        "aiobatch.task": "t",
        "aiobatch.index": "3",
        "aiobatch.attempt": "2",
        # The log files do not exist yet: this attempt's output starts at their beginning.
        "aiobatch.stdout_offset": "0",
        "aiobatch.stderr_offset": "0",
    }


@pytest.mark.anyio
async def test_defaults_leave_the_engine_in_charge() -> None:  # CancelScope needs a loop
    config = container_config("rid", context(TaskDef(name="t", command=None, image="img")))
    assert "Cmd" not in config and "User" not in config
    assert config["WorkingDir"] == "/aiobatch"
    assert config["HostConfig"] == {"Binds": ["/state/work/j1/t/3:/aiobatch"], "Init": True}
    argv = container_config("rid", context(TaskDef(name="t", command=("a", "b"), image="i")))
    assert argv["Cmd"] == ("a", "b")


def hosts() -> DockerHosts:
    env = ComputeEnvConfig(kind="docker", hosts=("unix:///a.sock", "unix:///b.sock"), slots=2)
    return DockerHosts("docker", env)


def test_hosts_are_filled_evenly_and_drained_ones_skipped() -> None:
    docker = hosts()
    first = docker.pick()
    docker.in_flight[first] += 1
    second = docker.pick()
    assert {first, second} == {"unix:///a.sock", "unix:///b.sock"}
    docker.in_flight[second] += 1
    docker.drain("unix:///a.sock", "test")
    assert docker.pick() == "unix:///b.sock"


def test_env_slots_are_per_host() -> None:
    env = ComputeEnvConfig(kind="docker", hosts=("unix:///a", "unix:///b", "unix:///c"), slots=2)
    assert env.total_slots == 6


def test_no_tls_for_unix_sockets() -> None:
    assert hosts().ssl_context("unix:///a.sock") is None
    anyio.run(executor().aclose)


def test_an_executor_is_made_before_any_event_loop_runs() -> None:
    """``aiobatch run`` checks a spec, and so makes its executors, before its loop starts."""
    assert executor().leftovers.waiting == {}
