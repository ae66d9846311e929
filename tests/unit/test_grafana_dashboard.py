"""config/grafana-dashboard.json: a dashboard Grafana imports (it asks for a Prometheus data
source, it picks services by their instance label), whose queries name only metrics aiobatch
serves: those a real runtime's ``GET /metrics`` text holds after it ran a job."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from tests.helpers import kill_leftovers

DASHBOARD = Path(__file__).parents[2] / "config" / "grafana-dashboard.json"
DATASOURCE = "${DS_PROMETHEUS}"
ON_INSTANCE = 'instance=~"$instance"'
# A metric named in PromQL, and the label matchers that may follow it.
METRIC = re.compile(r"(?<![\w:])aiobatch_[A-Za-z0-9_:]*")
SELECTOR = re.compile(r"(?<![\w:])(aiobatch_[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
# The series names a family of each type puts in Prometheus (counters' end in _total).
SERIES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}
GRID_WIDTH = 24


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The metrics text of a runtime that ran a job."""
    state_dir = tmp_path_factory.mktemp("dashboard") / "state"
    try:
        return anyio.run(scrape_after_a_job, state_dir)
    finally:
        kill_leftovers(state_dir)


@pytest.fixture(scope="module")
def served(scraped: str) -> frozenset[str]:
    """Every series name aiobatch serves: its families' (empty ones too) and its samples'."""
    names = set[str]()
    for family in text_string_to_metric_families(scraped):
        names.update(family.name + suffix for suffix in SERIES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


async def scrape_after_a_job(state_dir: Path) -> str:
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=1)})
    async with Runtime(state_dir, config=config) as rt:
        job = await rt.submit({"name": "one", "tasks": [{"name": "t", "command": "true"}]})
        await job.wait_for_completion()
        return (await rt.metrics_text()).decode()


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_it_is_a_dashboard_that_asks_for_a_prometheus_data_source(
    dashboard: dict[str, Any],
) -> None:
    assert isinstance(dashboard["title"], str) and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["panels"]
    inputs = {entry["name"]: entry for entry in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    elsewhere = [
        panel["title"]
        for panel in panels(dashboard)
        if panel["type"] != "row"
        for source in (panel.get("datasource"), *(t.get("datasource") for t in panel["targets"]))
        if source != {"type": "prometheus", "uid": DATASOURCE}
    ]
    assert elsewhere == []  # each panel and query on the data source asked for


def test_an_instance_variable_picks_the_services_and_every_query_keeps_to_them(
    dashboard: dict[str, Any], served: frozenset[str]
) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    instance = variables["instance"]
    assert instance["type"] == "query"
    assert instance["datasource"]["uid"] == DATASOURCE
    listed = re.fullmatch(r"label_values\((\w+),\s*instance\)", instance["query"]["query"])
    assert listed is not None and listed[1] in served
    unfiltered = [
        (title, selector[0])
        for title, expr in queries(dashboard)
        for selector in SELECTOR.finditer(expr)
        if ON_INSTANCE not in (selector[2] or "")
    ]
    assert unfiltered == []


def test_every_metric_a_query_names_is_one_aiobatch_serves(
    dashboard: dict[str, Any], scraped: str, served: frozenset[str]
) -> None:
    ran = [
        sample.labels
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "aiobatch_instance_duration_seconds_count" and sample.value == 1
    ]
    assert ran == [{"env": "local", "outcome": "succeeded"}]  # the scrape saw the job run
    named = [(title, METRIC.findall(expr)) for title, expr in queries(dashboard)]
    assert [title for title, names in named if not names] == []  # each query names a metric
    unknown = [(title, name) for title, names in named for name in names if name not in served]
    assert unknown == []


def test_every_query_closes_its_brackets(dashboard: dict[str, Any]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    broken = []
    for title, expr in queries(dashboard):
        opened: list[str] = []
        for char in re.sub(r'"[^"]*"', '""', expr):  # not inside label values
            if char in "([{":
                opened.append(char)
            elif char in pairs and (not opened or opened.pop() != pairs[char]):
                opened.append("unmatched")
                break
        if opened:
            broken.append((title, expr))
    assert broken == []


def test_every_panel_has_its_own_id_and_a_place_no_other_takes(
    dashboard: dict[str, Any],
) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        place = panel["gridPos"]
        x, y, w, h = (place[key] for key in ("x", "y", "w", "h"))
        assert all(isinstance(n, int) for n in (x, y, w, h)), panel["title"]
        assert 0 <= x and w > 0 and h > 0 and x + w <= GRID_WIDTH, panel["title"]
        for cell in ((col, line) for col in range(x, x + w) for line in range(y, y + h)):
            assert cell not in taken, (panel["title"], taken.get(cell))
            taken[cell] = panel["title"]
