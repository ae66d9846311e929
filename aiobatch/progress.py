"""Live progress of one job for ``aiobatch run``: a bar per task on a terminal, lines otherwise."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Never, TextIO

from aiobatch.api import TaskProgress
from aiobatch.attempt import NOT_STARTED_FOR_ROOM
from aiobatch.events import Event, InstanceStateChanged, JobStateChanged, TaskStateChanged
from aiobatch.spec_convert import printable

if TYPE_CHECKING:
    from tqdm import tqdm


class ProgressView:
    """Fed with events of one job and the matching task progress; writes to ``stream``."""

    def __init__(self, tasks: dict[str, int], stream: TextIO, *, bars: bool) -> None:
        self._stream = stream
        self._bars: dict[str, tqdm[Never]] = {}
        self._terminated: dict[str, int] = dict.fromkeys(tasks, 0)
        if bars:
            from tqdm import tqdm  # only a terminal pays for it

            width = max(len(name) for name in tasks)
            columns, rows = _screen(stream, len(tasks))
            self._bars = {
                name: tqdm(
                    total=total,
                    desc=name.ljust(width),
                    position=i,
                    file=stream,
                    unit="inst",
                    ncols=columns,
                    nrows=rows,
                    mininterval=0.1,
                    leave=True,
                )
                for i, (name, total) in enumerate(tasks.items())
            }

    def start(self, tasks: dict[str, tuple[str, str | None, TaskProgress]]) -> None:
        """Show where each task stands when watching begins: state, reason, progress."""
        for name, (state, reason, progress) in tasks.items():
            if self._bars:
                self._bars[name].set_postfix_str(state.lower() + _why(reason), refresh=True)
            else:
                self._write(f"{progress.stage_string()} {state}{_why(reason)}")

    def _write(self, line: str) -> None:
        self._stream.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        self._stream.flush()

    def update(self, event: Event, progress: TaskProgress | None) -> None:
        if progress is not None and self._bars:
            bar = self._bars[progress.name]
            bar.set_postfix_str(_counts(progress), refresh=False)
            self._advance(bar, progress)
        if self._bars:
            if isinstance(event, TaskStateChanged):
                bar = self._bars[event.task]
                bar.set_postfix_str(event.state.lower() + _why(event.reason), refresh=True)
            return
        line = self._line(event, progress)
        if line:
            self._write(line)

    @staticmethod
    def _line(event: Event, progress: TaskProgress | None) -> str | None:
        if isinstance(event, TaskStateChanged) and progress is not None:
            return f"{progress.stage_string()} {event.state}{_why(event.reason)}"
        if (
            isinstance(event, InstanceStateChanged)
            and event.reason
            and event.state
            in (
                "PENDING",
                "FAILED",
            )
        ):
            name = f"{event.task}[{event.index}] attempt"
            if event.state == "PENDING" and event.reason.split(":", 1)[0] in NOT_STARTED_FOR_ROOM:
                return f"{name} {event.attempt} {event.reason}, waiting"
            verb = "retrying" if event.state == "PENDING" else "failed"
            return f"{name} {event.attempt - (verb == 'retrying')} {event.reason}, {verb}"
        if isinstance(event, JobStateChanged):
            return f"job {event.job_id} {event.state}{_why(event.reason)}"
        return None

    def refresh(self, progress: list[TaskProgress]) -> None:
        """Set every bar to the given counts (lines mode has nothing to redraw)."""
        for stage in progress:
            bar = self._bars.get(stage.name)
            if bar is not None:
                self._advance(bar, stage)

    def _advance(self, bar: tqdm[Never], progress: TaskProgress) -> None:
        """A bar fills with the task's terminated instances, PyODPS' measure of a stage."""
        if progress.terminated != self._terminated[progress.name]:
            bar.update(progress.terminated - self._terminated[progress.name])
            self._terminated[progress.name] = progress.terminated

    def close(self) -> None:
        for bar in self._bars.values():
            bar.refresh()
            bar.close()


def _screen(stream: TextIO, bars: int) -> tuple[int, int]:
    """Columns and rows for the bars; a pty nobody sized reports 0x0, which hides them all."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return 100, bars + 1
    return size.columns or 100, max(size.lines, bars + 1)


def _counts(progress: TaskProgress) -> str:
    """A bar's counts in the order of every progress line: running, then terminated."""
    return f"running={progress.running} terminated={progress.terminated}"


def _why(reason: str | None) -> str:
    return f" ({printable(reason)})" if reason else ""
