from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import kill_leftovers


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    # Processes outlive a runtime killed on purpose; a test that failed midway may leave
    # some. None may outlive the test (those that pass check it themselves).
    kill_leftovers(path)
