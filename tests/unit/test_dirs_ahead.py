"""Work dirs made ahead: which, in what order, and that a stop is a stop. Real dirs, a real
worker thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from aiobatch.dirs_ahead import AHEAD_PER_JOB, AHEAD_PER_TASK, DirsAhead, planned
from aiobatch.layout import StateLayout
from aiobatch.spec import JobDef, resolve_spec

pytestmark = pytest.mark.anyio


def job(tasks: list[dict[str, object]]) -> JobDef:
    return resolve_spec({"name": "j", "tasks": [{"command": "true", **t} for t in tasks]})


def layout_in(tmp_path: Path) -> StateLayout:
    layout = StateLayout(tmp_path / "state")
    layout.prepare()
    return layout


def test_each_task_after_its_dependencies_and_its_first_instances_only(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    defn = job(
        [
            {"name": "last", "depends_on": ["wide"]},
            {"name": "wide", "instances": 100, "depends_on": ["first"]},
            {"name": "first"},
        ]
    )
    root = layout.job_work_dir("J")
    assert planned(layout, "J", defn) == [
        root,
        root / "first",
        root / "first" / "0",
        root / "wide",
        *(root / "wide" / str(i) for i in range(AHEAD_PER_TASK)),
        root / "last",
        root / "last" / "0",
    ]
    # Where each instance's start looks for its dir.
    assert root / "wide" / "3" == layout.work_dir("J", "wide", 3)


def test_a_job_of_many_tasks_has_its_first_dirs_made_ahead_only(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    defn = job([{"name": f"t{i}", "instances": 3} for i in range(AHEAD_PER_JOB)])
    dirs = planned(layout, "J", defn)
    assert len(dirs) == AHEAD_PER_JOB
    made = {layout.root / "work"}
    for path in dirs:  # each after its parent
        assert path.parent in made
        made.add(path)


async def test_dirs_are_made_in_the_background(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    ahead = DirsAhead(layout)
    async with anyio.create_task_group() as group:
        ahead.open(group)
        ahead.make("J", job([{"name": "a", "instances": 2}, {"name": "b"}]))
        await ahead.made(["J"])
    assert sorted(str(p.relative_to(layout.root)) for p in layout.job_work_dir("J").rglob("*")) == [
        "work/J/a",
        "work/J/a/0",
        "work/J/a/1",
        "work/J/b",
        "work/J/b/0",
    ]


async def test_a_job_stopped_before_its_turn_has_nothing_made(tmp_path: Path) -> None:
    layout = layout_in(tmp_path)
    ahead = DirsAhead(layout)
    async with anyio.create_task_group() as group:
        ahead.open(group)
        ahead.make("J", job([{"name": "a"}]))
        ahead.stop("J")  # it ended before the worker began
        await ahead.made(["J"])
    assert not layout.job_work_dir("J").exists()


async def test_stopped_returns_once_the_dir_being_made_is_made_and_nothing_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deletion relies on: once ``stopped`` returns, nothing more is made; a mkdir
    already under way when it is called is waited for."""
    layout = layout_in(tmp_path)
    real_mkdir = os.mkdir
    in_mkdir, release = threading.Event(), threading.Event()
    calls: list[Path] = []

    def slow_mkdir(path: Path, *args: object, **kwargs: object) -> None:
        calls.append(Path(path))
        if len(calls) == 2:  # the first task's dir, under way when the job is stopped
            in_mkdir.set()
            release.wait(20)
        real_mkdir(path)

    monkeypatch.setattr(os, "mkdir", slow_mkdir)  # the worker thread is the only caller here
    ahead = DirsAhead(layout)
    returned = anyio.Event()

    async def stop() -> None:
        await ahead.stopped(["J"])
        returned.set()

    async with anyio.create_task_group() as group:
        ahead.open(group)
        ahead.make("J", job([{"name": f"t{i}"} for i in range(10)]))
        await anyio.to_thread.run_sync(in_mkdir.wait, 20)
        group.start_soon(stop)
        await anyio.wait_all_tasks_blocked()
        assert not returned.is_set()  # the mkdir under way is not done yet
        release.set()
        with anyio.fail_after(20):
            await returned.wait()
        made_when_stopped = sorted(p.name for p in layout.job_work_dir("J").iterdir())
    assert made_when_stopped == ["t0"]  # made, as it was under way; nothing after it
    assert calls == [layout.job_work_dir("J"), layout.job_work_dir("J") / "t0"]
