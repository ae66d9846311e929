"""GET /v1/jobs answers a bounded page (DEFAULT_JOBS_PAGE without ``limit``, ``limit`` at most
MAX_JOBS_PAGE); the Client lists any number of jobs page by page, each once and newest
first, while jobs are submitted and change status between its pages. A real Runtime and
ControlServer over the unix socket; the jobs wait behind one that holds the only slot."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from aiobatch import Runtime, wire
from aiobatch.api import JobSummary
from aiobatch.client import Client
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.server import ControlServer
from aiobatch.states import JobState

pytestmark = pytest.mark.anyio

STORED = 2_500  # more than a default page, fewer than a largest one
CHURNED = 10  # pages read while jobs come and go


def waiting(name: str) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": "t", "command": "true"}]}


@pytest.fixture
def sock_path() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    yield root / "ctl.sock"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def served(state_dir: Path, sock_path: Path) -> AsyncIterator[Runtime]:
    """A service whose one slot is held by a long job: every later job waits (RUNNING, no
    instance started)."""
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=1)})
    async with (
        Runtime(state_dir, config=config) as rt,
        ControlServer(rt, socket=sock_path),
    ):
        holder = await rt.submit(
            {"name": "holder", "tasks": [{"name": "t", "command": "sleep 600"}]}
        )
        yield rt
        await rt.stop_job(holder.id)


async def get_jobs(sock: Path, query: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session,
        session.get("http://aiobatch/v1/jobs" + query) as response,
    ):
        return response.status, msgspec.json.decode(await response.read())


async def test_a_page_is_bounded_and_the_client_lists_every_job(
    served: Runtime, sock_path: Path
) -> None:
    for n in range(STORED - 1):
        await served.submit(waiting(f"j{n}"))
    everything = [job.id for job in await served.list_jobs()]  # in-process: no page
    assert len(everything) == STORED

    status, default = await get_jobs(sock_path, "")
    assert status == 200 and [job["id"] for job in default] == everything[: wire.DEFAULT_JOBS_PAGE]
    status, largest = await get_jobs(sock_path, f"?limit={wire.MAX_JOBS_PAGE}")
    assert status == 200 and [job["id"] for job in largest] == everything
    status, error = await get_jobs(sock_path, f"?limit={wire.MAX_JOBS_PAGE + 1}")
    assert status == 400 and error["error"]["type"] == "BadRequest"
    assert f"limit: expected an integer from 1 to {wire.MAX_JOBS_PAGE}" in error["error"]["message"]

    async with Client(sock_path) as client:
        client.jobs_page = wire.DEFAULT_JOBS_PAGE  # three pages
        listed = [job.id for job in await client.list_jobs()]
        some = [job.id for job in await client.list_jobs(limit=2_100, offset=7)]
        running = await client.list_jobs(status=JobState.RUNNING)
        succeeded = await client.list_jobs(status=JobState.SUCCEEDED)
    assert listed == everything
    assert some == everything[7:2_107]
    assert [job.id for job in running] == everything and succeeded == []


class ChurningClient(Client):
    """After each of the first CHURNED pages it reads, a new job is submitted and the last three
    it listed are stopped."""

    def __init__(self, sock: Path, rt: Runtime) -> None:
        super().__init__(sock)
        self.rt = rt
        self.submitted: list[str] = []
        self.stopped: list[str] = []
        self.requests = 0

    async def _jobs_page(
        self, status: JobState | str | None, labels: Mapping[str, str], limit: int, offset: int
    ) -> list[JobSummary]:
        page = await super()._jobs_page(status, labels, limit, offset)
        self.requests += 1
        if self.requests > CHURNED:
            return page
        new = await self.rt.submit(waiting(f"new{len(self.submitted)}"))
        self.submitted.append(new.id)
        listed = [job.id for job in page if job.name != "holder" and job.id not in self.stopped]
        # Three leave, one comes: the jobs after the page move up two places, so a page
        # that starts one early (at the last job given) would still skip one.
        for job_id in listed[-3:]:
            await self.rt.stop_job(job_id)
            self.stopped.append(job_id)
        return page


async def test_pages_neither_repeat_nor_skip_jobs_while_jobs_come_and_change(
    served: Runtime, sock_path: Path
) -> None:
    for n in range(60):
        await served.submit(waiting(f"j{n}"))
    before = [job.id for job in await served.list_jobs(status=JobState.RUNNING)]
    everything_before = [job.id for job in await served.list_jobs()]
    async with ChurningClient(sock_path, served) as client:
        client.jobs_page = 7
        waiting_ones = await client.list_jobs(status=JobState.RUNNING)
        stopped_while_waiting = list(client.stopped)
        client.stopped.clear()
        client.requests = 0
        submitted_first = list(client.submitted)
        every = await client.list_jobs()
    for listing in (waiting_ones, every):
        seqs = [job.seq for job in listing]
        assert seqs == sorted(set(seqs), reverse=True)  # newest first, each once
    # Every job that waited throughout is listed: stops above a page did not skip any.
    kept = [job for job in before if job not in stopped_while_waiting]
    listed = [job.id for job in waiting_ones]
    assert [job for job in listed if job in before] == [
        job for job in before if job in listed
    ] and set(kept) <= set(listed)
    assert len(stopped_while_waiting) == 3 * CHURNED  # the listing took pages enough to be tested
    # Without a status, every job there was is listed once, whatever was submitted meanwhile.
    assert set(everything_before) <= {job.id for job in every}
    assert set(submitted_first) <= {job.id for job in every}
    assert not set(client.submitted) - set(submitted_first) & {job.id for job in every}
