"""Where things live under the state dir."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Stream = Literal["stdout", "stderr"]


class StateLayout:
    """``aiobatch.db``, ``work/JOB/TASK/INDEX/`` (an instance's cwd), ``logs/JOB/TASK/INDEX.*``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def database(self) -> Path:
        return self.root / "aiobatch.db"

    def work_dir(self, job_id: str, task: str, index: int) -> Path:
        return self.root / "work" / job_id / task / str(index)

    def log_dir(self, job_id: str, task: str) -> Path:
        return self.root / "logs" / job_id / task

    def log_path(self, job_id: str, task: str, index: int, stream: Stream) -> Path:
        return self.log_dir(job_id, task) / f"{index}.{stream}"
