"""Fixtures shared by integration tests: an S3-compatible endpoint on loopback, and a
Docker engine (started by ``scripts/docker-engine up``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from aiobatch.config import S3Settings
from aiobatch.executors.slurm_commands import parse_config
from aiobatch.storage.s3 import create_client
from tests.integration.service import Service

BUCKET = "bkt"  # shared by the tests of a session; their keys do not overlap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:  # werkzeug says when it listens
        if "Running on" in line:
            break
    else:
        pytest.fail(f"the S3 endpoint did not start (exit {server.wait()})")
    # Keep reading its request log, or a full pipe would stall it.
    reader = threading.Thread(target=server.stderr.read, daemon=True)
    reader.start()
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)
    reader.join(timeout=10)
    server.stderr.close()


def settings(endpoint: str) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint,
        region="us-east-1",
        addressing_style="path",
        access_key_id="test",
        secret_access_key="test",
    )


@pytest.fixture
async def s3(s3_endpoint: str) -> AsyncIterator[Any]:
    s = settings(s3_endpoint)
    async with create_client(s) as client:
        await client.create_bucket(Bucket=BUCKET)
        yield client


async def read(client: Any, key: str) -> bytes:
    response = await client.get_object(Bucket=BUCKET, Key=key)
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


IMAGE = "aiobatch-test:busybox"


def docker_hosts() -> list[str]:
    return os.environ.get("AIOBATCH_TEST_DOCKER_HOSTS", "unix:///var/run/docker.sock").split()


@pytest.fixture
async def engine() -> AsyncIterator[aiodocker.Docker]:
    host = docker_hosts()[0]
    client = aiodocker.Docker(url=host)
    try:
        await client.version()
        await client.images.inspect(IMAGE)
    except Exception as exc:  # any failure means: no usable engine here
        await client.close()
        message = f"no Docker engine with {IMAGE} at {host}: {exc} (run scripts/docker-engine up)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    await client.close()


@pytest.fixture
async def service(state_dir: Path) -> AsyncIterator[Service]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))  # short: sockets have 107 bytes
    service = Service(root, state_dir)
    try:
        yield service
    finally:
        await service.close()
        service.clean_up()


def need_slurm() -> None:
    """The Slurm tests run against `scripts/slurm-cluster`: without it they skip, except
    under CI=true, where they fail."""
    if not os.environ.get("SLURM_CONF"):
        message = 'no Slurm cluster: run `eval "$(scripts/slurm-cluster up)"` first'
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def jobcomp() -> Path:
    """Where the cluster's jobcomp/filetxt writes each finished job's final state."""
    need_slurm()
    done = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Path(parse_config(done.stdout)["JobCompLoc"])
