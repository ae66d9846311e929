"""The pause after a start hit a system limit: its wait doubles at each pause in a row, up to
its bound, and starts over once a start works after dispatch resumed."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from aiobatch import dispatch_pauses
from aiobatch.dispatch_pauses import DispatchPauses
from aiobatch.layout import StateLayout

pytestmark = pytest.mark.anyio


async def test_limit_pauses_double_in_a_row_and_start_over_after_a_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch_pauses, "LIMITS_WAIT_FIRST_S", 0.01)
    monkeypatch.setattr(dispatch_pauses, "LIMITS_WAIT_MAX_S", 0.04)
    resumed = anyio.Event()

    def resume() -> None:
        resumed.set()

    pauses = DispatchPauses(StateLayout(tmp_path), resume)

    async def pause(*, start_between: bool = False) -> None:
        nonlocal resumed
        resumed = anyio.Event()
        pauses.for_limits("system_limit: log: Too many open files")
        pauses.for_limits("system_limit: a second start")  # paused already: no new wait
        if start_between:
            pauses.started()  # one dispatched before the pause started: the wait still doubles
        assert pauses.limits_short == "system_limit: log: Too many open files"
        await resumed.wait()
        assert pauses.limits_short is None

    with capture_logs() as logs:
        async with anyio.create_task_group() as group:
            pauses.open(group)
            await pause()
            await pause(start_between=True)
            await pause()
            await pause()
            pauses.started()  # dispatch runs again and a start works
            await pause()
    waits = [line["resumes_in_s"] for line in logs if line["event"] == "dispatch_paused"]
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.01]
    assert [line["event"] for line in logs].count("dispatch_resumed") == 5
