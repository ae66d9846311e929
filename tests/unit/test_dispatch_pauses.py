"""The pause after a start hit a system limit: it holds that compute env only; its wait
doubles at each pause in a row, up to its bound, and starts over once a start there works
after its dispatch resumed."""

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
        pauses.for_limits("local", "system_limit: log: Too many open files")
        pauses.for_limits("local", "system_limit: a second start")  # paused already
        pauses.started("docker")  # another env's starts: no bearing on this one's waits
        if start_between:
            pauses.started("local")  # dispatched before the pause: the wait still doubles
        assert pauses.limits_short == {"local": "system_limit: log: Too many open files"}
        await resumed.wait()
        assert pauses.limits_short == {}

    with capture_logs() as logs:
        async with anyio.create_task_group() as group:
            pauses.open(group)
            await pause()
            await pause(start_between=True)
            await pause()
            await pause()
            pauses.started("local")  # its dispatch runs again and a start there works
            await pause()
    waits = [line["resumes_in_s"] for line in logs if line["event"] == "dispatch_paused"]
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.01]
    assert {line["compute_env"] for line in logs} == {"local"}
    assert [line["event"] for line in logs].count("dispatch_resumed") == 5
