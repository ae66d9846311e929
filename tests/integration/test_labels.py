"""Job labels end to end: stored with the job in the same transaction, found by
``list_jobs(labels=...)`` in process and over the socket of a real ``aiobatch serve``, by
``GET /v1/jobs?label=`` and by ``aiobatch jobs --label``; a refused label stores nothing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aiobatch import Runtime, wire
from aiobatch.errors import SpecError
from aiobatch.limits import MAX_LABEL_VALUE_CHARS
from tests.integration.service import Service

pytestmark = pytest.mark.anyio


def job(name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "tasks": [{"name": "t", "command": "true"}], "labels": labels}


async def test_list_jobs_in_process_by_every_label_given(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        ml = await rt.submit(job("a", team="ml", run="nightly"))
        web = await rt.submit(job("b", team="web", run="nightly"))
        plain = await rt.submit(job("c"))
        await rt.submit(job("d", team="ml", run="weekly"))

        def ids(jobs: list[Any]) -> list[str]:
            return [j.id for j in jobs]

        assert ids(await rt.list_jobs(labels={"team": "ml", "run": "nightly"})) == [ml.id]
        assert ids(await rt.list_jobs(labels={"run": "nightly"})) == [web.id, ml.id]
        assert ids(await rt.list_jobs(labels={"team": "nobody"})) == []
        assert len(await rt.list_jobs(labels={})) == 4
        every = {j.id: j.labels for j in await rt.list_jobs()}
        assert every[ml.id] == {"team": "ml", "run": "nightly"} and every[plain.id] == {}
        snapshot = await ml.wait_for_completion()
        assert snapshot.labels == {"team": "ml", "run": "nightly"}
        with pytest.raises(ValueError, match=r"labels\['a b'\]: key 'a b' is not a label key"):
            await rt.list_jobs(labels={"a b": "x"})


async def test_a_refused_label_stores_nothing(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        with pytest.raises(SpecError) as refused:
            await rt.submit(job("bad", team="x" * (MAX_LABEL_VALUE_CHARS + 1)))
        assert list(refused.value.errors) == [
            "$.labels.team: value of at most 256 characters, got 257"
        ]
        assert await rt.list_jobs() == []
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM job_labels").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    db.close()


async def test_labels_over_the_socket_http_and_cli(service: Service) -> None:
    await service.start()
    async with service.client() as client:
        ml = await client.submit(job("a", team="ml", run="nightly"))
        web = await client.submit(job("b", team="web", run="nightly"))
        found = await client.list_jobs(labels={"team": "ml"})
        assert [(j.id, j.labels) for j in found] == [(ml.id, {"team": "ml", "run": "nightly"})]
        nightly = await client.list_jobs(labels={"run": "nightly"})
        assert [j.id for j in nightly] == [web.id, ml.id]
        # Through the paging helper too: a page of 2 (one job early), filters on every page.
        client.jobs_page = 2
        assert [j.id for j in await client.list_jobs(labels={"run": "nightly"}, limit=None)] == [
            web.id,
            ml.id,
        ]
        assert (await ml.wait_for_completion()).labels == {"team": "ml", "run": "nightly"}

    connector = aiohttp.UnixConnector(path=str(service.socket))
    async with aiohttp.ClientSession(connector=connector) as http:
        url = "http://localhost" + wire.API_PREFIX + "/jobs"
        query = [("label", "team=ml"), ("label", "run=nightly")]
        async with http.get(url, params=query) as answer:
            assert answer.status == 200
            assert [j["id"] for j in await answer.json()] == [ml.id]
        for bad_filter, problem in [
            ("team", "label 'team': expected KEY=VALUE"),
            ("a b=c", "label 'a b=c': key 'a b' is not a label key"),
        ]:
            async with http.get(url, params=[("label", bad_filter)]) as answer:
                assert answer.status == 400
                assert problem in (await answer.text()), bad_filter

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aiobatch", "jobs", "--socket", str(service.socket), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = cli("--label", "team=ml", "--label", "run=nightly", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == [ml.id]
    shown = cli("--label", "run=nightly")
    assert shown.returncode == 0 and "run=nightly  team=ml" in shown.stdout, shown
    for bad in (["--label", "team"], ["--label", "a b=c"], ["--label", "k=1", "--label", "k=2"]):
        refused = cli(*bad)
        assert refused.returncode == 2, (bad, refused)
        assert "label" in refused.stderr and "Traceback" not in refused.stderr
