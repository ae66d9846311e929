"""``GET /metrics``: Prometheus' text, parsed with prometheus_client's own parser, moving as a
job runs (a real runtime, real processes, its HTTP listener)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from tests.helpers import Gates, until_each

pytestmark = pytest.mark.anyio


async def scrape(rt: Runtime) -> dict[str, list[Sample]]:
    assert rt.logview_url is not None
    headers = {"Authorization": f"Bearer {rt.logview_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(rt.logview_url + "/metrics", headers=headers) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await answer.text()
        async with http.get(rt.logview_url + "/metrics") as refused:
            assert refused.status == 401  # a token of any scope, not none
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def test_metrics_move_as_a_job_runs(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 3)
    spec = {
        "name": "watched",
        "tasks": [
            {"name": "a", "instances": 3, "command": f"echo hello; {gates.command}"},
            {"name": "b", "depends_on": ["a"], "command": "exit 3", "on_failure": "continue"},
        ],
    }
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=4)})
    async with Runtime(state_dir, config=config, logview="127.0.0.1:0") as rt:
        before = await scrape(rt)
        assert value(before["aiobatch_slots"], "aiobatch_slots", env="local") == 4
        assert value(before["aiobatch_slots_used"], "aiobatch_slots_used", env="local") == 0
        assert before["aiobatch_jobs"] == []
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until_each(events, "a", "RUNNING", range(3))
        during = await scrape(rt)
        assert value(during["aiobatch_jobs"], "aiobatch_jobs", state="RUNNING") == 1
        instances = during["aiobatch_instances"]
        assert value(instances, "aiobatch_instances", state="ACTIVE") == 3
        assert value(instances, "aiobatch_instances", state="PENDING") == 1  # b
        assert value(during["aiobatch_slots_used"], "aiobatch_slots_used", env="local") == 3
        latency = during["aiobatch_dispatch_latency_seconds"]
        assert value(latency, "aiobatch_dispatch_latency_seconds_count", env="local") == 3
        assert value(during["aiobatch_event_subscribers"], "aiobatch_event_subscribers") >= 0
        for index in range(3):
            await gates.release(index)
        await job.wait_for_completion()
        after = await scrape(rt)
    assert value(after["aiobatch_jobs"], "aiobatch_jobs", state="FAILED") == 1
    assert "RUNNING" not in {s.labels.get("state") for s in after["aiobatch_jobs"]}
    durations = after["aiobatch_instance_duration_seconds"]
    count = "aiobatch_instance_duration_seconds_count"
    assert value(durations, count, env="local", outcome="succeeded") == 3
    assert value(durations, count, env="local", outcome="failed") == 1
    assert value(after["aiobatch_log_bytes"], "aiobatch_log_bytes_total") == 3 * len("hello\n")
    commits = after["aiobatch_store_commit_seconds"]
    assert value(commits, "aiobatch_store_commit_seconds_count") > 0
    latency = after["aiobatch_dispatch_latency_seconds"]
    assert value(latency, "aiobatch_dispatch_latency_seconds_count", env="local") == 4
    assert value(after["aiobatch_deleted_jobs"], "aiobatch_deleted_jobs_total") == 0
