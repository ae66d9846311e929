"""Work dirs made ahead: which, in what order, and that a stop is a stop. Real dirs, a real
worker thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import structlog

from aiobatch.dirs_ahead import AHEAD_JOBS, AHEAD_PER_JOB, AHEAD_PER_TASK, DirsAhead, planned
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


class HeldMkdir:
    """``os.mkdir`` held at one call (counted from 1) until released: the worker thread is
    its only caller in these tests."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_at: int) -> None:
        self.calls: list[Path] = []
        self.hold_at, self.held, self.release = hold_at, threading.Event(), threading.Event()
        self.done_with_held = False  # the held call has made its dir
        real_mkdir = os.mkdir

        def mkdir(path: Path, *args: object, **kwargs: object) -> None:
            self.calls.append(Path(path))
            if len(self.calls) == self.hold_at:
                self.held.set()
                self.release.wait(20)
                real_mkdir(path)
                self.done_with_held = True
                return
            real_mkdir(path)

        monkeypatch.setattr(os, "mkdir", mkdir)

    async def reached(self) -> None:
        await anyio.to_thread.run_sync(self.held.wait, 20)


def ten_tasks() -> JobDef:
    return job([{"name": f"t{i}"} for i in range(10)])


async def test_stopped_returns_once_the_dir_being_made_is_made_and_nothing_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deletion relies on: once ``stopped`` returns, nothing more is made; a mkdir
    already under way when it is called is waited for."""
    layout = layout_in(tmp_path)
    mkdir = HeldMkdir(monkeypatch, hold_at=2)  # the first task's dir
    ahead = DirsAhead(layout)
    returned = anyio.Event()

    async def stop() -> None:
        await ahead.stopped(["J"])
        returned.set()

    async with anyio.create_task_group() as group:
        ahead.open(group)
        ahead.make("J", ten_tasks())
        await mkdir.reached()
        group.start_soon(stop)
        await anyio.wait_all_tasks_blocked()
        assert not returned.is_set()  # the mkdir under way is not done yet
        mkdir.release.set()
        with anyio.fail_after(20):
            await returned.wait()
        made_when_stopped = sorted(p.name for p in layout.job_work_dir("J").iterdir())
    assert made_when_stopped == ["t0"]  # made, as it was under way; nothing after it
    assert mkdir.calls == [layout.job_work_dir("J"), layout.job_work_dir("J") / "t0"]


async def test_a_job_waiting_its_turn_is_dropped_at_once_when_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deletion of one job does not wait for the dirs of the jobs before it."""
    layout = layout_in(tmp_path)
    mkdir = HeldMkdir(monkeypatch, hold_at=1)
    ahead = DirsAhead(layout)
    async with anyio.create_task_group() as group:
        ahead.open(group)
        ahead.make("A", ten_tasks())
        ahead.make("B", ten_tasks())
        await mkdir.reached()  # A's first dir, held
        with anyio.fail_after(5):
            await ahead.stopped(["B"])
        mkdir.release.set()
        await ahead.made(["A"])
    assert not layout.job_work_dir("B").exists()
    assert len(list(layout.job_work_dir("A").rglob("*"))) == 20  # 10 tasks, their 0 each


async def test_a_shutdown_waits_for_the_dir_being_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled (the runtime closes), the job counts as done only once its thread has made
    the dir it was making: a deletion waiting for it must not remove files before that."""
    layout = layout_in(tmp_path)
    mkdir = HeldMkdir(monkeypatch, hold_at=2)
    ahead = DirsAhead(layout)
    seen_when_done: list[bool] = []

    async def watch() -> None:
        await ahead.made(["J"])
        seen_when_done.append(mkdir.done_with_held)

    def told_to_stop() -> bool:
        making = ahead._making.get("J")
        return making is None or making.stopped

    async def release_once_all_wait() -> None:
        await mkdir.reached()
        while not told_to_stop():  # the cancellation has reached the worker
            await anyio.lowlevel.checkpoint()
        await anyio.wait_all_tasks_blocked()  # a done set too early has woken the watch
        mkdir.release.set()

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as runtime:
            ahead.open(runtime)
            ahead.make("J", ten_tasks())
            outer.start_soon(watch)
            outer.start_soon(release_once_all_wait)
            await mkdir.reached()
            runtime.cancel_scope.cancel()
    assert seen_when_done == [True]
    assert len(mkdir.calls) == 2  # nothing after the dir under way


async def test_a_failure_in_the_worker_is_logged_and_the_runtime_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = layout_in(tmp_path)

    def broken(path: Path, *args: object, **kwargs: object) -> None:
        raise ValueError("embedded null byte")

    monkeypatch.setattr(os, "mkdir", broken)
    ahead = DirsAhead(layout)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as group:
            ahead.open(group)
            ahead.make("J", ten_tasks())
            await ahead.made(["J"])
            ahead.make("K", ten_tasks())  # and the next job is taken up as before
            await ahead.made(["K"])
    assert [entry["event"] for entry in logs] == ["dirs_ahead_failed"] * 2


async def test_a_backlog_of_jobs_is_not_made_ahead_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = layout_in(tmp_path)
    mkdir = HeldMkdir(monkeypatch, hold_at=1)
    ahead = DirsAhead(layout)
    names = [f"J{i}" for i in range(AHEAD_JOBS + 5)]
    async with anyio.create_task_group() as group:
        ahead.open(group)
        for name in names:
            ahead.make(name, job([{"name": "t"}]))
        await mkdir.reached()
        mkdir.release.set()
        await ahead.made(names)
    made = sorted(p.name for p in (layout.root / "work").iterdir())
    assert made == sorted(names[:AHEAD_JOBS])


async def test_a_job_accepted_as_the_runtime_closes_is_left_to_its_starts(
    tmp_path: Path,
) -> None:
    layout = layout_in(tmp_path)
    ahead = DirsAhead(layout)
    async with anyio.create_task_group() as group:
        ahead.open(group)
    ahead.make("J", ten_tasks())  # no error: the job is accepted already
    with anyio.fail_after(5):
        await ahead.stopped(["J"])
    assert not layout.job_work_dir("J").exists()
