"""Secrets reach the instance's environment, local and in a container, and nothing else.

Each value is unique to its test; a task checks it by its SHA-256 (the command holds the
digest, never the value). Afterwards the value is searched for, as bytes, in every file of
the state dir (the SQLite database, its WAL, records, logs, work dirs), in the service's
log and in every GET answer of /v1 the OpenAPI document lists. Each search is shown able
to fail: a value given as plain ``env`` in the same run is found by it.
"""

from __future__ import annotations

import hashlib
import signal
import tempfile
import uuid
from pathlib import Path

import aiodocker
import aiohttp
import anyio
import pytest
import structlog

from aiobatch import JobState, Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.hooks import HookContext
from tests.integration.conftest import IMAGE, docker_hosts
from tests.integration.service import Service

pytestmark = pytest.mark.anyio


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def checks(name: str, value: str) -> str:
    """A shell test that ``$name`` holds ``value``, by its digest: the value is not in it."""
    digest = hashlib.sha256(value.encode()).hexdigest()
    return f'test "$(printf %s "${name}" | sha256sum | cut -d" " -f1)" = {digest}'


def found_in_files(root: Path, value: str) -> list[Path]:
    needle = value.encode()
    return sorted(
        path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()
    )


class LoggedService(Service):
    """``aiobatch serve`` with its log (stderr) in a file."""

    def __init__(self, root: Path, state_dir: Path, config: str) -> None:
        super().__init__(root, state_dir, config, log=root / "service.log")

    async def stop(self) -> None:
        """A graceful stop (SIGTERM): what it writes on the way out is searched too."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await self.process.wait() == 0
        await self.close()


async def every_get_answer(socket: Path, job_id: str, tasks: list[str]) -> dict[str, bytes]:
    """The body of every GET route of /v1 (from its OpenAPI document), for the job's tasks
    and their instance 0: what the page, the CLI and the clients read."""
    answers: dict[str, bytes] = {}
    connector = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(path: str) -> bytes:
            with anyio.fail_after(30):
                async with session.get(f"http://localhost{path}") as response:
                    assert response.status == 200, (path, response.status)
                    return await response.read()

        async with session.get("http://localhost/v1/openapi.json") as response:
            document = await response.json()
        for template, operations in document["paths"].items():
            if "get" not in operations:
                continue
            declared = {p["name"] for p in operations["get"].get("parameters", [])}
            # The whole job (instances=1), and the events of this job only (else endless).
            query = "&".join(
                f"{name}={value}"
                for name, value in (("instances", "1"), ("job", job_id))
                if name in declared
            )
            for task in tasks:
                for stream in ("stdout", "stderr"):
                    path = template.format(job_id=job_id, task=task, index=0, stream=stream)
                    urls = [f"{path}?{query}"] if query else []
                    if "job" not in declared:  # the stream of every job never ends
                        urls.append(path)
                    for url in urls:
                        if url not in answers:
                            answers[url] = await get(url)
    assert any(path.endswith("/definition") for path in answers)
    assert any(path.endswith("/logs/stderr") for path in answers)
    return answers


def service_config() -> str:
    host = docker_hosts()[0]
    return (
        'kill_grace = "1s"\n[logging]\nformat = "json"\nlevel = "debug"\n'
        "[compute_envs.local]\nslots = 2\n"
        f'[compute_envs.docker]\nkind = "docker"\nhosts = ["{host}"]\nslots = 2\n'
    )


async def test_secrets_reach_local_and_container_tasks_and_nothing_else(
    engine: aiodocker.Docker, state_dir: Path, tmp_path: Path
) -> None:
    from_file, from_env, plain = unique("file-secret"), unique("env-secret"), unique("plain")
    secret_file = tmp_path / "db-password"
    secret_file.write_text(from_file + "\n")
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))  # short: sockets have 107 bytes
    service = LoggedService(root, state_dir, service_config())
    check_both = f"{checks('DB_PASSWORD', from_file)} && {checks('API_TOKEN', from_env)}"
    spec = {
        "name": "secrets",
        "secrets": {"API_TOKEN": "env:RUNTIME_API_TOKEN"},
        "tasks": [
            {
                "name": "local",
                "command": check_both,
                "secrets": {"DB_PASSWORD": f"file:{secret_file}"},
            },
            {
                "name": "boxed",
                "image": IMAGE,
                "command": check_both,
                "secrets": {"DB_PASSWORD": f"file:{secret_file}"},
            },
        ],
    }
    # The control: the same value handed as plain env is stored and shown, and found below.
    control = {
        "name": "plain",
        "env": {"PLAIN": plain},
        "tasks": [{"name": "t", "command": "true"}],
    }
    try:
        await service.start(RUNTIME_API_TOKEN=from_env)
        async with service.client() as client:
            job = await client.submit(spec)
            plain_job = await client.submit(control)
            with anyio.fail_after(60):
                snapshot = await job.wait_for_completion()
                await plain_job.wait_for_success()
        assert snapshot.status == JobState.SUCCEEDED.value, snapshot
        answers = await every_get_answer(service.socket, job.id, ["local", "boxed"])
        plain_answers = await every_get_answer(service.socket, plain_job.id, ["t"])
        await service.stop()
        logged = service.log_text()  # before clean_up removes it with the service's root
    finally:
        await service.close()
        service.clean_up()

    for value in (from_file, from_env):
        assert found_in_files(state_dir, value) == []  # the database (and WAL), logs, records
        assert value.encode() not in logged
        leaked = [path for path, body in answers.items() if value.encode() in body]
        assert leaked == [], f"value in /v1 answers: {leaked}"
    definition = next(body for path, body in answers.items() if path.endswith("/definition"))
    assert f"file:{secret_file}".encode() in definition  # the source is shown, not the value
    assert b"env:RUNTIME_API_TOKEN" in definition
    assert (state_dir / "aiobatch.db").exists()
    assert logged.count(b"\n") > 5  # a debug log: it said things
    # The searches can fail: the plain value is in the database and in the definition.
    assert state_dir / "aiobatch.db" in found_in_files(state_dir, plain)
    assert any(plain.encode() in body for body in plain_answers.values())
    containers = await engine.containers.list(all=True, filters='{"label": ["aiobatch.job"]}')
    assert not [c for c in containers if c["Labels"].get("aiobatch.job") == job.id]


def local_config() -> Config:
    return Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})


async def test_a_missing_or_unreadable_source_fails_the_attempt_by_name_only(
    state_dir: Path, tmp_path: Path
) -> None:
    value = unique("in-a-file-too-big")
    big = tmp_path / "big"
    big.write_text(value * (70_000 // len(value)))  # over 64 KiB
    latin = tmp_path / "latin"
    latin.write_bytes(b"\xe9" + value.encode())
    ran = tmp_path / "ran"
    spec = {
        "name": "unavailable",
        "tasks": [
            {
                "name": name,
                "command": f"touch {ran}-{name}",
                "secrets": {"TOKEN": source},
                "retries": 1,
                "on_failure": "continue",
            }
            for name, source in (
                ("missing", f"file:{tmp_path}/missing"),
                ("unset", "env:AIOBATCH_TEST_UNSET_VARIABLE"),
                ("big", f"file:{big}"),
                ("latin", f"file:{latin}"),
            )
        ],
    }
    with structlog.testing.capture_logs() as logs:
        async with Runtime(state_dir, config=local_config()) as rt:
            job = await rt.submit(spec)
            await job.wait_for_completion()
            results = await job.get_task_results()
    reasons: dict[str, str | None] = {}
    for name, result in results.items():
        [inst] = result.instances or []
        assert (inst.status, inst.attempts) == ("FAILED", 2)  # retried like a failed staging
        reasons[name] = inst.reason
    assert reasons == {
        "missing": f"secret_unavailable: TOKEN: file {tmp_path}/missing: cannot read: "
        "No such file or directory",
        "unset": "secret_unavailable: TOKEN: env:AIOBATCH_TEST_UNSET_VARIABLE: not set in the "
        "runtime's environment",
        "big": f"secret_unavailable: TOKEN: file {big}: larger than 65536 bytes, the limit for "
        f"a secret ({big.stat().st_size} bytes)",
        "latin": f"secret_unavailable: TOKEN: file:{latin}: not UTF-8 text",
    }
    assert ran_markers(tmp_path) == []  # no command ran
    assert found_in_files(state_dir, value) == []
    assert value not in repr(logs)


def ran_markers(root: Path) -> list[str]:
    return [path.name for path in root.iterdir() if path.name.startswith("ran-")]


async def test_hooks_and_log_lines_of_a_local_attempt_see_no_value(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the executor gets the values: the hooks' context (before and after) holds the
    environment without them, and no log line of the runtime holds one."""
    from_file, from_env = unique("file-secret"), unique("env-secret")
    secret_file = tmp_path / "token"
    secret_file.write_text(from_file)
    monkeypatch.setenv("LOCAL_TEST_TOKEN", from_env)
    seen: list[dict[str, str]] = []

    async def record(context: HookContext) -> None:
        seen.append(dict(context.instance.env))

    spec = {
        "name": "local-secrets",
        "secrets": {"TOKEN": "env:LOCAL_TEST_TOKEN"},
        "tasks": [
            {
                "name": "uses",
                "secrets": {"KEY": f"file:{secret_file}"},
                "command": f"{checks('TOKEN', from_env)} && {checks('KEY', from_file)}",
            }
        ],
    }
    with structlog.testing.capture_logs() as logs:
        async with Runtime(state_dir, config=local_config()) as rt:
            rt.hooks.before_start.append(record)
            rt.hooks.after_exit.append(record)
            job = await rt.submit(spec)
            await job.wait_for_success()
    assert len(seen) == 2 and all(env["AIOBATCH_TASK_NAME"] == "uses" for env in seen)
    assert not [env for env in seen if "TOKEN" in env or "KEY" in env]
    assert not [env for env in seen if from_file in env.values()]
    # A local instance inherits the runtime's environment whole, the variable an env: source
    # names included (under its own name): the README says so, and to prefer file: there.
    assert all(env["LOCAL_TEST_TOKEN"] == from_env for env in seen)
    for value in (from_file, from_env):
        assert value not in repr(logs)
        assert found_in_files(state_dir, value) == []
