"""Docker compute envs against a real engine (started by ``scripts/docker-engine up``).

The engines come from ``$AIOBATCH_TEST_DOCKER_HOSTS`` (space separated), else the default
socket. Without an engine these tests skip, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import msgspec
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from aiobatch import JobState, Runtime
from aiobatch.api import InstanceResult
from aiobatch.config import ComputeEnvConfig, Config, StorageConfig
from aiobatch.events import InstanceStateChanged
from aiobatch.executors import docker as docker_module
from aiobatch.executors.docker import DockerExecutor
from aiobatch.executors.docker_hosts import NO_CONNECTION
from aiobatch.layout import StateLayout
from tests.helpers import instance_is, stored, until
from tests.integration.conftest import BUCKET, IMAGE, docker_hosts, read, settings

pytestmark = pytest.mark.anyio


def docker_config(
    hosts: list[str] | None = None, slots: int = 4, engine_retry: str = "30s"
) -> Config:
    env = ComputeEnvConfig(
        kind="docker",
        hosts=tuple(hosts or docker_hosts()[:1]),
        slots=slots,
        engine_retry=engine_retry,
    )
    return Config(kill_grace="1s", compute_envs={"docker": env})


async def only_instance(state_dir: Path, spec: dict[str, Any]) -> InstanceResult:
    """Run a job of one container task ``t`` of one instance to its end; that instance."""
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    return inst


async def leftovers(client: aiodocker.Docker, state_dir: Path) -> list[Any]:
    runtime_id = StateLayout(state_dir).runtime_id()
    filters = json.dumps({"label": [f"aiobatch.runtime={runtime_id}"]})
    return await client.containers.list(all=True, filters=filters)


async def test_container_runs_with_env_workdir_and_logs(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    spec = {
        "name": "boxed",
        "env": {"GREETING": "hello"},
        "tasks": [
            {
                "name": "box",
                "image": IMAGE,
                "instances": 2,
                "command": "echo $GREETING $AIOBATCH_INSTANCE_INDEX; echo oops >&2; "
                "pwd > where.txt",
            }
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    logs = state_dir / "logs" / job.id / "box"
    for index in (0, 1):
        assert (logs / f"{index}.stdout").read_text() == f"hello {index}\n"
        assert (logs / f"{index}.stderr").read_text() == "oops\n"
        work = state_dir / "work" / job.id / "box" / str(index)
        assert (work / "where.txt").read_text() == "/aiobatch\n"
    assert await leftovers(engine, state_dir) == []


async def test_exit_code_fails_the_instance_and_removes_the_container(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    spec = {
        "name": "bad",
        "tasks": [{"name": "t", "image": IMAGE, "command": ["sh", "-c", "exit 3"]}],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    assert snapshot.status == "FAILED"
    assert (inst.reason, inst.exit_code) == ("exit_code: 3", 3)
    assert await leftovers(engine, state_dir) == []


async def test_timeout_stops_the_container(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "slow",
        "tasks": [{"name": "t", "image": IMAGE, "command": "sleep 60", "timeout": "1s"}],
    }
    inst = await only_instance(state_dir, spec)
    assert inst.reason == "timeout"
    assert inst.duration_s is not None and inst.duration_s < 10
    assert await leftovers(engine, state_dir) == []


async def test_stop_job_stops_running_containers(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {"name": "stopme", "tasks": [{"name": "t", "image": IMAGE, "command": "sleep 60"}]}
    async with Runtime(state_dir, config=docker_config()) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
            assert len(await leftovers(engine, state_dir)) == 1
            await job.stop()
        snapshot = await job.wait_for_completion()
    assert snapshot.status == "CANCELLED"
    assert await leftovers(engine, state_dir) == []


async def test_missing_image_fails_at_once(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "noimage",
        "tasks": [
            {"name": "t", "image": "aiobatch-test:missing", "pull": "never", "command": "true"}
        ],
    }
    inst = await only_instance(state_dir, spec)
    assert (inst.status, inst.reason) == ("FAILED", "image_unavailable: aiobatch-test:missing")


async def test_out_of_memory_is_reported(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "hungry",
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "resources": {"memory": "16MiB"},
                # dd holds one 256 MiB block in memory: far over the limit.
                "command": "dd if=/dev/zero of=/dev/null bs=256M count=1",
            }
        ],
    }
    inst = await only_instance(state_dir, spec)
    assert (inst.status, inst.reason) == ("FAILED", "oom")


async def test_keep_failed_leaves_the_container(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "debugme",
        "tasks": [{"name": "t", "image": IMAGE, "command": "exit 1", "keep_failed": True}],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
    [kept] = await leftovers(engine, state_dir)
    info = await kept.show()
    assert info["Config"]["Labels"]["aiobatch.task"] == "t"
    assert info["Config"]["Labels"]["aiobatch.attempt"] == "1"
    await kept.delete(force=True)


async def test_mixed_local_and_docker_job(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "mixed",
        "tasks": [
            {"name": "local", "command": "echo from-host > ../../../shared.txt"},
            {
                "name": "boxed",
                "image": IMAGE,
                "depends_on": ["local"],
                "command": "echo in-container $AIOBATCH_TASK_NAME",
            },
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            started = await until(events, instance_is("boxed", "RUNNING"))
        snapshot = await job.wait_for_success()
    assert isinstance(started, InstanceStateChanged) and started.pid is None
    assert snapshot.status == JobState.SUCCEEDED
    out = state_dir / "logs" / job.id / "boxed" / "0.stdout"
    assert out.read_text() == "in-container boxed\n"


async def test_instances_spread_over_two_engines(engine: aiodocker.Docker, state_dir: Path) -> None:
    hosts = docker_hosts()
    if len(hosts) < 2:
        message = "a second engine is needed (scripts/docker-engine up starts one)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    spec = {
        "name": "spread",
        # Each container holds its slot until the test drops a file into its work dir.
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "instances": 2,
                "network": "none",
                "command": "while [ ! -e go ]; do sleep 0.05; done",
            }
        ],
    }
    clients = [aiodocker.Docker(url=host) for host in hosts[:2]]
    try:
        async with Runtime(state_dir, config=docker_config(hosts[:2], slots=1)) as rt:
            async with rt.subscribe() as events:
                job = await rt.submit(spec)
                running: set[int] = set()
                while len(running) < 2:  # in either order
                    event = await until(events, instance_is("t", "RUNNING"))
                    assert isinstance(event, InstanceStateChanged)
                    running.add(event.index)
            per_engine = [len(await leftovers(client, state_dir)) for client in clients]
            for index in (0, 1):
                (state_dir / "work" / job.id / "t" / str(index) / "go").touch()
            await job.wait_for_success()
        assert per_engine == [1, 1]
        assert [await leftovers(client, state_dir) for client in clients] == [[], []]
    finally:
        for client in clients:
            await client.close()


async def test_runtime_exit_leaves_no_container(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {"name": "abrupt", "tasks": [{"name": "t", "image": IMAGE, "command": "sleep 60"}]}
    async with Runtime(state_dir, config=docker_config()) as rt:
        async with rt.subscribe() as events:
            await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
        assert len(await leftovers(engine, state_dir)) == 1
    # Leaving the runtime interrupts the attempt: the container is stopped and removed.
    assert await leftovers(engine, state_dir) == []


async def test_unreachable_engine_is_named(state_dir: Path, tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/nothing.sock"
    spec = {"name": "nowhere", "tasks": [{"name": "t", "image": IMAGE, "command": "true"}]}
    async with Runtime(state_dir, config=docker_config([host], engine_retry="1s")) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
        history = [e for _, e in await stored(rt, job.id)]
    assert inst.status == "FAILED"
    # Retried for about engine_retry (backoff 0.1 s, 0.2 s, 0.4 s, ...), then failed.
    staged = next(e for e in history if isinstance(e, InstanceStateChanged))
    failed = [e for e in history if isinstance(e, InstanceStateChanged)][-1]
    assert 0.9 < failed.ts - staged.ts < 5
    assert inst.reason is not None and inst.reason.startswith(f"engine_error: {host}: ")


async def test_ctrl_c_of_aiobatch_run_leaves_no_container(
    engine: aiodocker.Docker, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    StateLayout(state).runtime_id()  # made now, so this test knows the containers' label
    config = tmp_path / "c.toml"
    config.write_text(
        f'kill_grace = "1s"\n[logging]\nlevel = "debug"\n'
        f'[compute_envs.docker]\nkind = "docker"\nhosts = ["{docker_hosts()[0]}"]\n'
    )
    spec = tmp_path / "j.yaml"
    spec.write_text(f"name: j\ntasks:\n  - {{name: t, image: '{IMAGE}', command: sleep 60}}\n")
    command = [sys.executable, "-m", "aiobatch", "run", str(spec), "--verbose"]
    async with await anyio.open_process(
        [*command, "--config", str(config), "--state-dir", str(state)]
    ) as run:
        assert run.stderr is not None
        lines = BufferedByteReceiveStream(run.stderr)
        with anyio.fail_after(60):
            while b"instance_started" not in await lines.receive_until(b"\n", 1 << 20):
                pass
        assert len(await leftovers(engine, state)) == 1
        run.send_signal(signal.SIGINT)
        with anyio.fail_after(60):
            assert await run.wait() == 130
    assert await leftovers(engine, state) == []


async def test_a_host_that_does_not_answer_is_drained(
    engine: aiodocker.Docker, state_dir: Path, tmp_path: Path
) -> None:
    dead = f"unix://{tmp_path}/dead.sock"
    spec = {
        "name": "drained",
        "tasks": [{"name": "t", "image": IMAGE, "instances": 3, "command": "true"}],
    }
    config = docker_config([dead, docker_hosts()[0]], slots=1, engine_retry="30s")
    async with Runtime(state_dir, config=config) as rt:
        with anyio.fail_after(20):  # far less than engine_retry: nothing waited on the dead one
            snapshot = await (await rt.submit(spec)).wait_for_success()
    assert snapshot.tasks["t"].succeeded == 3
    assert await leftovers(engine, state_dir) == []


async def test_failing_sibling_cancels_running_container(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    spec = {
        "name": "cancelled",
        "tasks": [
            {"name": "boxed", "image": IMAGE, "command": "sleep 60"},
            {"name": "bad", "depends_on": [], "command": "exit 1"},
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        snapshot = await (await rt.submit(spec)).wait_for_completion()
    assert snapshot.status == "FAILED"
    assert snapshot.tasks["boxed"].status == "CANCELLED"
    assert await leftovers(engine, state_dir) == []


async def test_output_reaches_the_log_file_while_the_container_runs(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    spec = {
        "name": "live",
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "network": "none",
                "command": "echo first; echo warn >&2; while [ ! -e go ]; do sleep 0.05; done; "
                "echo last",
            }
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
        logs = state_dir / "logs" / job.id / "t"
        # No event tells when bytes land in a file: look until they do (bounded).
        with anyio.fail_after(20):
            while (logs / "0.stdout").read_text() != "first\n" or (  # noqa: ASYNC110
                logs / "0.stderr"
            ).read_text() != "warn\n":
                await anyio.sleep(0.05)
        assert job.state is JobState.RUNNING  # the container is still waiting for "go"
        (state_dir / "work" / job.id / "t" / "0" / "go").touch()
        await job.wait_for_success()
    assert (logs / "0.stdout").read_text() == "first\nlast\n"


async def test_failing_pull_is_image_unavailable(engine: aiodocker.Docker, state_dir: Path) -> None:
    # A registry on loopback where nothing listens: the pull fails at once, nothing leaves.
    image = "127.0.0.1:9/aiobatch/missing:1"
    spec = {"name": "nopull", "tasks": [{"name": "t", "image": image, "command": "true"}]}
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        with anyio.fail_after(20):
            await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    assert (inst.status, inst.reason) == ("FAILED", f"image_unavailable: {image}")


async def test_user_and_workdir(engine: aiodocker.Docker, state_dir: Path) -> None:
    spec = {
        "name": "who",
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "user": "nobody",
                "workdir": "/job",
                "command": "id -u; pwd; touch made-here",
            }
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_completion()
    out = (state_dir / "logs" / job.id / "t" / "0.stdout").read_text().split()
    work = state_dir / "work" / job.id / "t" / "0"
    # The work dir belongs to root here and nobody cannot write to it: the touch fails.
    assert out == ["65534", "/job"]
    assert not (work / "made-here").exists()
    assert snapshot.status == "FAILED"


async def test_tcp_host_with_tls_client_certificates(state_dir: Path) -> None:
    host = os.environ.get("AIOBATCH_TEST_DOCKER_TLS_HOST")
    certs = Path(os.environ.get("AIOBATCH_TEST_DOCKER_TLS_DIR", "/nonexistent"))
    if host is None:
        message = "no TLS engine (scripts/docker-engine up gives engine 2 a TLS listener)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    env = ComputeEnvConfig(
        kind="docker",
        hosts=(host,),
        tls_ca_cert=str(certs / "ca.pem"),
        tls_cert=str(certs / "cert.pem"),
        tls_key=str(certs / "key.pem"),
        engine_retry="2s",
    )
    spec = {"name": "tls", "tasks": [{"name": "t", "image": IMAGE, "command": "echo over tls"}]}
    async with Runtime(state_dir, config=Config(compute_envs={"docker": env})) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    assert (state_dir / "logs" / job.id / "t" / "0.stdout").read_text() == "over tls\n"


async def test_file_mappings_for_containers(
    engine: aiodocker.Docker, state_dir: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "in.txt").write_text("seed")
    spec = {
        "name": "mapped",
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "network": "none",
                "inputs": [{"from": f"file://{remote}/in.txt", "path": "in/in.txt"}],
                "outputs": [{"path": "out.txt", "to": f"file://{remote}/results/{{index}}.txt"}],
                "stdout": f"file://{remote}/logs/",
                "command": "cat in/in.txt > out.txt; echo grown >> out.txt; echo done",
            }
        ],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        await (await rt.submit(spec)).wait_for_success()
    assert (remote / "results" / "0.txt").read_text() == "seedgrown\n"
    assert (remote / "logs" / "t.0.stdout").read_text() == "done\n"
    assert await leftovers(engine, state_dir) == []


async def test_s3_mappings_for_containers(
    engine: aiodocker.Docker, s3: Any, s3_endpoint: str, state_dir: Path
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="docker-in/parts.txt", Body=b"0\n1\n")
    spec = {
        "name": "boxed-s3",
        "tasks": [
            {
                "name": "render",
                "image": IMAGE,
                "network": "none",
                "instances": 2,
                "inputs": [{"from": "s3://bkt/docker-in/parts.txt", "path": "in/parts.txt"}],
                "outputs": [{"path": "out/", "to": "s3://bkt/{job_id}/frames/{index}/"}],
                "stdout": "s3://bkt/{job_id}/logs/",
                "command": "mkdir out; sed -n $((AIOBATCH_INSTANCE_INDEX + 1))p in/parts.txt "
                "> out/frame.txt; echo boxed",
            }
        ],
    }
    env = docker_config().compute_envs
    config = Config(compute_envs=env, storage=StorageConfig(s3=settings(s3_endpoint)))
    async with Runtime(state_dir, config=config) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    for index in (0, 1):
        assert await read(s3, f"{job.id}/frames/{index}/frame.txt") == f"{index}\n".encode()
        assert await read(s3, f"{job.id}/logs/render.{index}.stdout") == b"boxed\n"
    assert await leftovers(engine, state_dir) == []


# Detaching cancels the log and wait requests of running containers mid-response; aiodocker's
# `_query` leaves releasing a response to its caller, so aiohttp warns about those
# connections when they are collected (after the client closed them).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <function Connection.__del__"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_detached_containers_are_readopted_and_orphans_removed(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    # Each container prints, then waits for a file in its work dir, then prints again.
    spec = {
        "name": "outlives",
        "tasks": [
            {
                "name": "t",
                "image": IMAGE,
                "instances": 2,
                "command": "echo before; while [ ! -e go ]; do sleep 0.05; done; echo after",
            }
        ],
    }
    detaching = msgspec.structs.replace(docker_config(), detach_on_shutdown=True)
    async with Runtime(state_dir, config=detaching) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
            await until(events, instance_is("t", "RUNNING"))

    # Left running, and stored as RUNNING: nothing was interrupted.
    running = await leftovers(engine, state_dir)
    assert sorted(c["State"] for c in running) == ["running", "running"]
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        rows = db.execute("SELECT state, attempt FROM instances WHERE job_id = ?", (job.id,))
        assert rows.fetchall() == [("RUNNING", 1), ("RUNNING", 1)]
    # A container of an attempt no instance claims: removed at the next start.
    labels = {
        "aiobatch.runtime": StateLayout(state_dir).runtime_id(),
        **{f"aiobatch.{k}": v for k, v in (("job", job.id), ("task", "t"), ("index", "0"))},
        "aiobatch.attempt": "7",
    }
    orphan = await engine.containers.create({"Image": IMAGE, "Cmd": ["true"], "Labels": labels})
    for index in (0, 1):
        (state_dir / "work" / job.id / "t" / str(index) / "go").touch()

    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.get_job(job.id)
        await job.wait_for_success()
        result = await job.get_task_result("t")
        history = await stored(rt, job.id)
        executor = rt.executors["docker"]
        assert isinstance(executor, DockerExecutor)
        with anyio.fail_after(30):
            await executor.leftovers.none_left()  # the orphan is removed in the background

    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)] * 2
    staged = [e for _, e in history if isinstance(e, InstanceStateChanged) and e.state == "STAGING"]
    assert len(staged) == 2, "an adopted attempt is not started again"
    logs = state_dir / "logs" / job.id / "t"
    for index in (0, 1):  # rewritten from the attempt's start: nothing lost, nothing twice
        assert (logs / f"{index}.stdout").read_text() == "before\nafter\n"
    assert orphan.id not in {c.id for c in await leftovers(engine, state_dir)}
    assert await leftovers(engine, state_dir) == []
    gc.collect()  # the warnings above surface here, not in whichever test runs next


async def test_a_stop_reaches_the_program_within_the_grace(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    """A shell that runs the program (no exec: two commands) is not the container's first
    process, which would ignore TERM: the stop ends it with TERM, long before the KILL."""
    spec = {"name": "term", "tasks": [{"name": "t", "image": IMAGE, "command": "sleep 60; true"}]}
    config = msgspec.structs.replace(docker_config(), kill_grace="30s")
    async with Runtime(state_dir, config=config) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
            stopped = anyio.current_time()
            await job.stop()
        await job.wait_for_completion()
        took = anyio.current_time() - stopped
    assert took < 10, took  # not the 30 s grace, then KILL
    assert await leftovers(engine, state_dir) == []


async def test_a_job_stopped_while_its_image_is_readied_starts_nothing(
    engine: aiodocker.Docker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull that does not end (a registry that trickles) is ended by a stop, and no
    container is made or started for the stopped attempt."""
    readying = anyio.Event()

    async def never_ready(self: DockerExecutor, *args: Any) -> bool:
        readying.set()
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    monkeypatch.setattr(DockerExecutor, "_image_ready", never_ready)
    spec = {"name": "pulling", "tasks": [{"name": "t", "image": IMAGE, "command": "true"}]}
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await readying.wait()
        await job.stop()
        with anyio.fail_after(10):
            snapshot = await job.wait_for_completion()
    assert snapshot.status == "CANCELLED"
    assert await leftovers(engine, state_dir) == []


async def test_a_restart_is_not_held_by_an_engine_that_never_answers(
    engine: aiodocker.Docker, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart, our containers are listed on each engine: one that takes the
    connection and answers nothing is given up on, and the runtime opens."""
    spec = {"name": "left", "tasks": [{"name": "t", "image": IMAGE, "command": "sleep 60"}]}
    leaving = msgspec.structs.replace(docker_config(), detach_on_shutdown=True)
    async with Runtime(state_dir, config=leaving) as rt:
        async with rt.subscribe() as events:
            await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
    silent_path = tmp_path / "silent.sock"
    monkeypatch.setattr(docker_module, "LIST_LIMIT_S", 0.5)
    try:
        async with await anyio.create_unix_listener(silent_path) as silent:
            held: list[Any] = []

            async def take(stream: Any) -> None:
                held.append(stream)  # accepted, never answered
                await anyio.sleep_forever()

            async with anyio.create_task_group() as tg:
                tg.start_soon(silent.serve, take)
                config = docker_config([f"unix://{silent_path}"], engine_retry="1s")
                with anyio.fail_after(30):
                    async with Runtime(state_dir, config=config):
                        pass
                tg.cancel_scope.cancel()
            for stream in held:
                await stream.aclose()
    finally:
        for container in await leftovers(engine, state_dir):
            await container.delete(force=True)


async def test_a_program_the_engine_cannot_start_fails_the_attempt_as_such(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    spec = {
        "name": "nouser",
        "tasks": [{"name": "t", "image": IMAGE, "command": "true", "user": "nosuchuser"}],
    }
    inst = await only_instance(state_dir, spec)
    assert inst.status == "FAILED" and inst.reason is not None
    assert inst.reason.startswith("exec_failed: ") and "nosuchuser" in inst.reason
    assert await leftovers(engine, state_dir) == []


async def test_a_chatty_containers_log_is_copied_whole(
    engine: aiodocker.Docker, state_dir: Path
) -> None:
    """300,000 short lines, most of them still on their way when the container ends: all
    of them reach the log (the copy goes on while the engine sends)."""
    spec = {
        "name": "chatty",
        "tasks": [{"name": "t", "image": IMAGE, "command": "seq 1 300000; echo END"}],
    }
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    lines = (state_dir / "logs" / job.id / "t" / "0.stdout").read_text().splitlines()
    assert len(lines) == 300_001 and lines[0] == "1" and lines[-1] == "END"
    assert await leftovers(engine, state_dir) == []


async def test_a_create_whose_answer_was_lost_is_not_made_twice(
    engine: aiodocker.Docker, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine makes the container, its answer is lost (the connection drops), and the
    create is tried again: the attempt's container is found by its name, not made again,
    and the program runs once."""
    create = aiodocker.containers.DockerContainers.create
    made: list[str] = []

    async def answer_lost_once(self: Any, config: Any, *, name: str | None = None) -> Any:
        container = await create(self, config, name=name)
        made.append(container.id)
        if len(made) == 1:
            raise aiodocker.DockerError(NO_CONNECTION, "server disconnected")
        return container

    monkeypatch.setattr(aiodocker.containers.DockerContainers, "create", answer_lost_once)
    spec = {"name": "once", "tasks": [{"name": "t", "image": IMAGE, "command": "echo ran >> ran"}]}
    async with Runtime(state_dir, config=docker_config()) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    assert len(made) == 1  # the second try found it: the engine refused a second of its name
    assert (state_dir / "work" / job.id / "t" / "0" / "ran").read_text() == "ran\n"
    assert await leftovers(engine, state_dir) == []
