"""Logs are read in bounded chunks: a 200 MB log read whole by five readers at once, and by
``aiobatch logs``, against the real ``aiobatch serve``, with its memory measured; and what a
log answer says of its size (``Content-Length``, ``X-Aiobatch-Log-Size``)."""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from aiobatch.client import Client
from tests.integration.service import AIOBATCH, Service
from tests.integration.test_server import serving

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
LOG_MIB = 200
RSS_GROWTH_LIMIT = 64 * MiB  # what reading the log may add to the service's peak memory


def write_log(path: Path, mib: int) -> tuple[int, str]:
    """``mib`` MiB of distinct lines at ``path``: its size and SHA-256."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for block in range(mib):
            line = b"block %08d " % block
            data = (line + b"x" * (64 - len(line) - 1) + b"\n") * (MiB // 64)
            f.write(data)
            digest.update(data)
    return mib * MiB, digest.hexdigest()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


async def read_all(client: Client, job_id: str) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    async for chunk in client.log_chunks(job_id, "t", 0):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@pytest.mark.slow
async def test_big_log_read_by_five_readers_and_the_cli_keeps_memory_bounded(
    service: Service, tmp_path: Path
) -> None:
    await service.start()
    assert service.process is not None
    pid = service.process.pid
    async with service.client() as client:
        job = await client.submit({"name": "big", "tasks": [{"name": "t", "command": "true"}]})
        await job.wait_for_completion()
        log = service.state_dir / "logs" / job.id / "t" / "0.stdout"
        expected = await anyio.to_thread.run_sync(write_log, log, LOG_MIB)
        assert await client.log_size(job.id, "t", 0) == expected[0]
        baseline = memory(pid)["VmRSS"]
        reset_peak(pid)
        results: list[tuple[int, str]] = []

        async def reader() -> None:
            async with service.client() as own:  # one connection per reader
                results.append(await read_all(own, job.id))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(reader)
        peak_readers = memory(pid)["VmHWM"] - baseline

        # `aiobatch logs` to a file, in a process of its own whose peak memory is measured.
        out = tmp_path / "out"
        measure = (
            "import resource, subprocess, sys\n"
            "with open(sys.argv[1], 'wb') as out:\n"
            "    done = subprocess.run(sys.argv[2:], stdout=out)\n"
            "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        )
        reset_peak(pid)
        command = [str(AIOBATCH), "logs", job.id, "t", "0", "--socket", str(service.socket)]
        done = await anyio.run_process([sys.executable, "-c", measure, str(out), *command])
        peak_cli_service = memory(pid)["VmHWM"] - baseline
        status, cli_peak_kib = map(int, done.stdout.split())
        written = await anyio.to_thread.run_sync(lambda: file_digest(out))
        assert (await client.health())["status"] == "ok"
    assert results == [expected] * 5
    assert peak_readers < RSS_GROWTH_LIMIT, f"service grew by {peak_readers / MiB:.0f} MiB"
    assert status == 0 and written == expected
    assert cli_peak_kib * 1024 < 100 * MiB, f"aiobatch logs peaked at {cli_peak_kib // 1024} MiB"
    assert peak_cli_service < RSS_GROWTH_LIMIT


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


@pytest.fixture
def sock() -> Iterator[Path]:
    """A socket path in a fresh short dir: pytest's tmp_path may pass the 107-byte limit."""
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


async def test_log_answers_say_the_size_and_their_length(state_dir: Path, sock: Path) -> None:
    spec = {"name": "sized", "tasks": [{"name": "t", "command": "printf 0123456789"}]}
    async with serving(state_dir, sock) as (rt, _):
        job = await rt.submit(spec)
        await job.wait_for_completion()
        path = f"http://x/v1/jobs/{job.id}/tasks/t/instances/0/logs/stdout"
        heads = {}
        heads_of = ["", "?offset=3&limit=4", "?offset=8", "?offset=20", "?follow=1&offset=5"]
        heads_of.append(f"?follow=1&offset={2**63 - 1}")
        connector = aiohttp.UnixConnector(path=str(sock))
        async with aiohttp.ClientSession(connector=connector) as session:
            for query in heads_of:
                async with session.get(path + query) as response:
                    body = await response.read()
                    heads[query] = (
                        response.status,
                        response.headers.get("Content-Length"),
                        response.headers.get("X-Aiobatch-Log-Size"),
                        body,
                    )
            async with session.get(path.replace("stdout", "stderr")) as response:
                empty = response.headers.get("X-Aiobatch-Log-Size"), await response.read()
    assert heads == {
        "": (200, "10", "10", b"0123456789"),
        "?offset=3&limit=4": (200, "4", "10", b"3456"),
        "?offset=8": (200, "2", "10", b"89"),
        "?offset=20": (200, "0", "10", b""),
        "?follow=1&offset=5": (200, None, "10", b"56789"),  # chunked: no length
        # Past where a seek may go (the end of what the file system takes): nothing to read.
        f"?follow=1&offset={2**63 - 1}": (200, None, "10", b""),
    }
    assert empty == ("0", b"")
