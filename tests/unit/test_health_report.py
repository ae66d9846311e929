from __future__ import annotations

from typing import Any

import pytest

from aiobatch.health import health_report

QUIET: dict[str, Any] = {"jobs": {}, "store": "ok", "dispatch": "ok", "logs_paused": 0}


@pytest.mark.parametrize(
    "trouble",
    [
        {"store": "state_dir_full: record: No space left on device"},
        {"dispatch": "system_limit: log: Too many open files"},
        {"logs_paused": 1},
    ],
)
def test_health_is_degraded_while_anything_waits_for_room(trouble: dict[str, Any]) -> None:
    assert health_report(QUIET, closing=False)["status"] == "ok"
    assert health_report({**QUIET, **trouble}, closing=False)["status"] == "degraded"
    assert health_report({**QUIET, **trouble}, closing=True)["status"] == "degraded"
