"""The README's PyODPS snippets run as written through ``aiobatch.connect``, the entry object
alone changed: each ``python`` block of README.md that calls ``aiobatch.connect(...)``
runs with that call's arguments replaced by this test's (an embedded runtime, then a real
``aiobatch serve`` over its socket). Its printed progress lines are read back with PyODPS'
pattern."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.integration.service import Service
from tests.unit.test_progress import parse

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"aiobatch\.connect\([^)\n]*\)")

# What the README is to hold (section Embedding): PyODPS' own loop from its documentation,
# unchanged but for the entry object, and the calls PyODPS users make next.
PYODPS_SNIPPET = """\
import time

import aiobatch
from aiobatch import JobFailed, Status

o = aiobatch.connect(state_dir="batch")  # a service: connect(socket=PATH) or (url=URL, token=TOKEN)
instance = o.submit("examples/diamond.yaml")
while not instance.is_terminated():
    for task_name in instance.get_task_names():
        progress = instance.get_task_progress(task_name)
        print(instance.id, progress.get_stage_progress_formatted_string())
    time.sleep(1)
try:
    instance.wait_for_success()
except JobFailed as exc:
    print("failed tasks:", exc.failed_tasks)
print(instance.status)  # Status.TERMINATED
print(instance.get_task_progress("render").get_stage_progress_formatted_string())
for inst in o.list_instances(status=Status.TERMINATED, limit=10):
    print(inst.id, inst.is_successful())
o.close()
"""


def readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [block for block in blocks if ENTRY.search(block)]


def run_snippet(snippet: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Run ``snippet`` from the repository's root, ``aiobatch.connect`` given ``entry``;
    return what it printed and its variables."""
    assert len(ENTRY.findall(snippet)) == 1, "one entry object per snippet"
    code = ENTRY.sub("aiobatch.connect(**ENTRY)", snippet)
    namespace: dict[str, Any] = {"ENTRY": entry, "__name__": "readme"}
    out = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return out.getvalue(), namespace


def check_output(out: str, job_id: str) -> None:
    """What the snippet prints for the diamond example: PyODPS' progress lines (each read
    back with PyODPS' pattern), then its status and the listed job."""
    lines = out.splitlines()
    progress = [
        parse(line.removeprefix(f"{job_id} "))
        for line in lines
        if line.startswith(f"{job_id} ") and line != f"{job_id} True"
    ]
    stages = {stage["name"] for _, [stage] in progress}
    assert stages == {"split", "render", "check", "merge"}, out
    [final] = [parse(line) for line in lines if line.endswith(" render:0/8/8[100%]\t")]
    assert final[1][0]["terminated"] == "8"
    assert "Status.TERMINATED" in lines
    assert f"{job_id} True" in lines  # listed, and successful


def test_the_proposed_snippet_through_an_embedded_runtime(tmp_path: Path) -> None:
    out, namespace = run_snippet(PYODPS_SNIPPET, {"state_dir": tmp_path / "state"})
    check_output(out, namespace["instance"].id)
    assert namespace["o"].closed


def test_the_readme_snippets_through_an_embedded_runtime(tmp_path: Path) -> None:
    snippets = readme_snippets()
    if not snippets:
        pytest.skip("README.md has no python block calling aiobatch.connect(...) yet")
    for n, snippet in enumerate(snippets):
        out, namespace = run_snippet(snippet, {"state_dir": tmp_path / f"state{n}"})
        if snippet == PYODPS_SNIPPET:
            check_output(out, namespace["instance"].id)


@pytest.mark.anyio
async def test_the_snippets_through_a_service(service: Service) -> None:
    await service.start()
    for snippet in readme_snippets() or [PYODPS_SNIPPET]:
        out, namespace = await anyio.to_thread.run_sync(
            run_snippet, snippet, {"socket": service.socket}
        )
        if snippet == PYODPS_SNIPPET:
            check_output(out, namespace["instance"].id)
