"""Compute envs changed at runtime: slots, Docker engines drained, the change kept across a
restart, SIGHUP, the command line. Real runtimes, processes, containers and signals."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import aiodocker
import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.errors import EnvNotFound, SpecError
from aiobatch.wire import EnvChange, EnvInfo
from tests.helpers import Gates, instance_is, until, until_each
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.service import AIOBATCH, Service

pytestmark = pytest.mark.anyio


def local(slots: int) -> Config:
    return Config(kill_grace="1s", compute_envs={"local": ComputeEnvConfig(slots=slots)})


def env_of(envs: list[EnvInfo], name: str) -> EnvInfo:
    return next(info for info in envs if info.name == name)


async def cli(*args: str, socket: Path) -> tuple[int, str, str]:
    result = await anyio.run_process([str(AIOBATCH), *args, "--socket", str(socket)], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_slots_change_while_a_job_runs_and_the_change_is_kept(
    state_dir: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 8)
    spec = {"name": "eight", "tasks": [{"name": "t", "instances": 8, "command": gates.command}]}
    async with Runtime(state_dir, config=local(4)) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until_each(events, "t", "RUNNING", range(4))
            info = await rt.update_env("local", EnvChange(slots=2))
            assert (info.slots, info.used, info.queued) == (2, 4, 4)
            # Fewer slots let the running finish: three end, one more starts (2 in all).
            for index in range(3):
                await gates.release(index)
                await until(events, instance_is("t", "SUCCEEDED", index))
            await until(events, instance_is("t", "RUNNING", 4))
            snapshot = await rt.job_snapshot(job.id, instances=True)
            states = [i.status for i in snapshot.tasks["t"].instances or ()]
            assert states[3:6] == ["RUNNING", "RUNNING", "PENDING"], states
            assert env_of(await rt.list_envs(), "local").used == 2
            # More slots dispatch at once.
            info = await rt.update_env("local", EnvChange(slots=6))
            await until_each(events, "t", "RUNNING", (5, 6, 7))
            assert env_of(await rt.list_envs(), "local").used == 5
        for index in range(3, 8):
            await gates.release(index)
        await job.wait_for_success()
    stored = json.loads((state_dir / "envs.json").read_text())
    assert stored == {"local": {"slots": 6}}
    async with Runtime(state_dir, config=local(4)) as rt:  # the config says 4: the change wins
        assert env_of(await rt.list_envs(), "local").slots == 6


async def test_refused_changes_name_the_field(state_dir: Path) -> None:
    async with Runtime(state_dir, config=local(2)) as rt:
        with pytest.raises(EnvNotFound, match="no compute env named 'nope'"):
            await rt.update_env("nope", EnvChange(slots=3))
        with pytest.raises(SpecError) as refused:
            await rt.update_env("local", EnvChange(add_hosts=["tcp://x:2375"]))
        assert list(refused.value.errors) == ["$.hosts: 'local' is a local env: it has no hosts"]
        with pytest.raises(SpecError) as refused:
            await rt.update_env("docker", EnvChange(add_hosts=["ftp://x"], drain_hosts=["y"]))
        assert list(refused.value.errors) == [
            "$.add_hosts[0]: 'ftp://x' is not a Docker endpoint (unix:///path/docker.sock or "
            "tcp://host:port, at most 2048 characters)",
            "$.drain_hosts[0]: 'y' is not a host of 'docker'",
        ]
        with pytest.raises(SpecError) as refused:
            await rt.update_env("docker", EnvChange(add_hosts=["tcp://a b:1", "unix:///x\x00"]))
        assert [e.split(":", 1)[0] for e in refused.value.errors] == [
            "$.add_hosts[0]",
            "$.add_hosts[1]",
        ]
        assert env_of(await rt.list_envs(), "local").slots == 2  # nothing of it applied
    assert not (state_dir / "envs.json").exists()


async def test_a_drained_engine_gets_no_new_attempt(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    hosts = docker_hosts()
    if len(hosts) < 2:
        message = "a second engine is needed (scripts/docker-engine up starts one)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    first, second = hosts[:2]
    env = ComputeEnvConfig(kind="docker", hosts=(first, second), slots=2)
    config = Config(kill_grace="1s", compute_envs={"docker": env})
    spec = {
        "name": "placed",
        "tasks": [
            {"name": "t", "image": IMAGE, "instances": 4, "network": "none", "command": "sleep 60"}
        ],
    }
    async with Runtime(state_dir, config=config) as rt:
        info = await rt.update_env("docker", EnvChange(drain_hosts=[first]))
        assert info.slots == 2 and info.slots_per_host == 2  # one engine takes attempts
        assert [(h.url, h.drained) for h in info.hosts or ()] == [(first, True), (second, False)]
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            for _ in range(2):
                await until(events, instance_is("t", "RUNNING"))
        info = env_of(await rt.list_envs(), "docker")
        attempts = {h.url: h.attempts for h in info.hosts or ()}
        assert attempts == {first: 0, second: 2} and info.queued == 2
        # Removing the busy engine: drained at once, dropped once its attempts have ended.
        info = await rt.update_env("docker", EnvChange(remove_hosts=[second], add_hosts=[first]))
        assert [(h.url, h.drained, h.removing) for h in info.hosts or ()] == [
            (first, False, False),
            (second, True, True),
        ]
        await job.stop()
        await job.wait_for_completion()
        info = env_of(await rt.list_envs(), "docker")
        assert [h.url for h in info.hosts or ()] == [first] and info.slots == 2
    stored = json.loads((state_dir / "envs.json").read_text())
    assert stored["docker"] == {"slots": 2, "hosts": [first], "held": [], "removing": []}


async def test_sighup_applies_an_edited_config_and_the_cli_changes_envs(
    service: Service,
) -> None:
    service.config.write_text('[compute_envs.local]\nkind = "local"\nslots = 1\n')
    await service.start()
    async with service.client() as client:
        assert env_of(await client.list_envs(), "local").slots == 1
        service.config.write_text('[compute_envs.local]\nkind = "local"\nslots = 3\n')
        assert service.process is not None
        service.process.send_signal(signal.SIGHUP)
        with anyio.fail_after(10):  # the reload publishes no event: ask until it shows
            while env_of(await client.list_envs(), "local").slots != 3:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        code, out, err = await cli("env", "set", "local", "--slots", "5", socket=service.socket)
        assert (code, err) == (0, "") and out.startswith("local  local  slots=5 used=0")
        code, out, _ = await cli("envs", "--json", socket=service.socket)
        assert code == 0
        assert {e["name"]: e["slots"] for e in json.loads(out)}["local"] == 5
        code, _, err = await cli("env", "set", "nope", "--slots", "2", socket=service.socket)
        assert (code, err) == (2, "aiobatch: no compute env named 'nope'\n")
        code, _, err = await cli(
            "env", "set", "local", "--add-host", "tcp://x:1", socket=service.socket
        )
        assert code == 2 and "$.hosts: 'local' is a local env: it has no hosts" in err
        code, _, err = await cli("env", "set", "local", "--slots", "0", socket=service.socket)
        assert code == 2 and "--slots" in err and "Traceback" not in err
