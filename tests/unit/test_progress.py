"""The progress string in PyODPS' format, read back the way a PyODPS user reads it.

PyODPS (odps/models/instance.py, ``TaskProgress.get_stage_progress_formatted_string``)
writes ``datetime.now().strftime("%Y-%m-%d %H:%M:%S")``, a space, then for each stage
``f"{name}:{running}/{terminated}/{total}{backups}[{finished_percentage}%]\\t"``, where
``backups`` is ``(+N backups)`` only when N > 0. ``PYODPS_PROGRESS`` is that format as a
pattern; its ``stage`` groups are read in PyODPS' order: running, terminated, total.
"""

from __future__ import annotations

import io
import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobatch import StageProgress, TaskProgress, TaskResult
from aiobatch.api import finished_percentage, stage_progress_formatted_string
from aiobatch.events import InstanceStateChanged, TaskStateChanged
from aiobatch.progress import ProgressView

PYODPS_PROGRESS = re.compile(
    r"(?P<time>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) (?P<stages>(?:[^\t]+\t)*)"
)
PYODPS_STAGE = re.compile(
    r"(?P<name>[^\t]+):(?P<running>\d+)/(?P<terminated>\d+)/(?P<total>\d+)"
    r"(?:\(\+(?P<backups>\d+) backups\))?\[(?P<percent>\d+)%\]\t"
)


def parse(text: str) -> tuple[datetime, list[dict[str, str | None]]]:
    whole = PYODPS_PROGRESS.fullmatch(text)
    assert whole is not None, repr(text)
    stages = [m.groupdict() for m in PYODPS_STAGE.finditer(whole["stages"])]
    assert "".join(m.group(0) for m in PYODPS_STAGE.finditer(whole["stages"])) == whole["stages"]
    return datetime.strptime(whole["time"], "%Y-%m-%d %H:%M:%S"), stages


def test_the_example_of_pyodps_docs() -> None:
    # base-instances.rst: "2016-05-19 18:14:03 M1_Stg1_job0:0/1/1[100%]" (0 running, 1 ended).
    progress = TaskProgress(name="M1_Stg1_job0", running=0, terminated=1, total=1)
    now = datetime(2016, 5, 19, 18, 14, 3)
    text = progress.get_stage_progress_formatted_string(now)
    assert text == "2016-05-19 18:14:03 M1_Stg1_job0:0/1/1[100%]\t"
    assert parse(text) == (
        now,
        [
            {
                "name": "M1_Stg1_job0",
                "running": "0",
                "terminated": "1",
                "total": "1",
                "backups": None,
                "percent": "100",
            }
        ],
    )


def test_timestamp_is_local_time_now() -> None:
    before = datetime.now().replace(microsecond=0)
    stamp, _ = parse(
        TaskProgress(
            name="t", running=1, terminated=0, total=2
        ).get_stage_progress_formatted_string()
    )
    assert before <= stamp <= datetime.now()


def test_two_stages_and_backups_as_pyodps_writes_them() -> None:
    stages = [
        StageProgress(name="M1", running_workers=2, terminated_workers=3, total_workers=8),
        StageProgress(
            name="R2", running_workers=0, terminated_workers=0, total_workers=1, backup_workers=2
        ),
    ]
    text = stage_progress_formatted_string(stages, datetime(2026, 5, 19, 18, 14, 3))
    assert text == "2026-05-19 18:14:03 M1:2/3/8[37%]\tR2:0/0/1(+2 backups)[0%]\t"
    _, parsed = parse(text)
    assert [s["backups"] for s in parsed] == [None, "2"]


def test_percent_is_terminated_of_total_rounded_down() -> None:
    assert [finished_percentage(t, 3) for t in range(4)] == [0, 33, 66, 100]
    assert finished_percentage(199, 200) == 99  # 100 only once every instance ended
    assert finished_percentage(0, 0) == 0  # PyODPS' sum leaves out a stage without workers


@given(
    name=st.from_regex(r"[A-Za-z0-9_.:-]{1,30}", fullmatch=True),
    total=st.integers(1, 10**6),
    data=st.data(),
)
def test_any_progress_parses_back_to_its_counts(name: str, total: int, data: st.DataObject) -> None:
    terminated = data.draw(st.integers(0, total))
    running = data.draw(st.integers(0, total - terminated))
    progress = TaskProgress(name=name, running=running, terminated=terminated, total=total)
    _, [stage] = parse(progress.get_stage_progress_formatted_string())
    assert stage["name"] == name
    assert (int(stage["running"] or -1), int(stage["terminated"] or -1)) == (running, terminated)
    assert int(stage["total"] or -1) == total
    assert int(stage["percent"] or -1) == terminated * 100 // total == progress.percent


def test_task_progress_counts_ended_instances_as_terminated() -> None:
    task = TaskResult(
        status="RUNNING",
        reason=None,
        total=8,
        done=3,
        running=2,
        succeeded=1,
        failed=1,
        cancelled=1,
    )
    progress = TaskProgress.of("render", task)
    assert (progress.running, progress.terminated, progress.total) == (2, 3, 8)
    assert progress.stage_string() == "render:2/3/8[37%]"
    assert progress.stages == [
        StageProgress(name="render", running_workers=2, terminated_workers=3, total_workers=8)
    ]


def test_cli_lines_use_the_same_order() -> None:
    stream = io.StringIO()
    view = ProgressView({"render": 8}, stream, bars=False)
    progress = TaskProgress(name="render", running=2, terminated=3, total=8)
    event = TaskStateChanged(job_id="j", task="render", state="RUNNING", reason=None, ts=0.0)
    view.update(event, progress)
    assert stream.getvalue().split(" ", 1)[1] == "render:2/3/8[37%] RUNNING\n"


def test_bars_fill_with_terminated_instances_and_show_running_first() -> None:
    stream = io.StringIO()
    view = ProgressView({"render": 8}, stream, bars=True)
    event = InstanceStateChanged(
        job_id="j", task="render", index=4, attempt=1, state="RUNNING", reason=None, ts=0.0
    )
    view.update(event, TaskProgress(name="render", running=2, terminated=3, total=8))
    view.close()
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert " 3/8 " in last and "running=2 terminated=3" in last

    stream = io.StringIO()
    view = ProgressView({"render": 8}, stream, bars=True)
    view.refresh([TaskProgress(name="render", running=1, terminated=5, total=8)])
    view.close()
    assert " 5/8 " in stream.getvalue().rsplit("\r", 1)[-1]


@pytest.mark.parametrize(
    ("attempt", "reason", "line"),
    [
        # A failed attempt 1 is tried again: the event names attempt 2, the one to come.
        (2, "exit_code: 3", "render[4] attempt 1 exit_code: 3, retrying"),
        # A start that found no room: the same attempt waits, it did not fail.
        (1, "system_limit: log: Too many open files", "render[4] attempt 1 system_limit: "),
        (1, "state_dir_full: record: No space left", "render[4] attempt 1 state_dir_full: "),
    ],
)
def test_lines_say_which_attempt_waits_and_why(attempt: int, reason: str, line: str) -> None:
    stream = io.StringIO()
    view = ProgressView({"render": 8}, stream, bars=False)
    event = InstanceStateChanged(
        job_id="j", task="render", index=4, attempt=attempt, state="PENDING", reason=reason, ts=0
    )
    view.update(event, TaskProgress(name="render", running=0, terminated=0, total=8))
    written = stream.getvalue().split(" ", 1)[1]
    assert written.startswith(line)
    assert written.endswith(", retrying\n" if attempt == 2 else ", waiting\n")


def test_an_instance_failed_for_a_system_limit_says_failed() -> None:
    stream = io.StringIO()
    view = ProgressView({"render": 8}, stream, bars=False)
    event = InstanceStateChanged(
        job_id="j",
        task="render",
        index=4,
        attempt=1,
        state="FAILED",
        reason="system_limit: x",
        ts=0,
    )
    view.update(event, TaskProgress(name="render", running=0, terminated=1, total=8))
    assert stream.getvalue().split(" ", 1)[1] == "render[4] attempt 1 system_limit: x, failed\n"
