"""Where things live under the state dir."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from aiobatch.errors import StateDirBusy

Stream = Literal["stdout", "stderr"]


class StateLayout:
    """``aiobatch.db``, ``work/JOB/TASK/INDEX/`` (an instance's cwd), ``logs/JOB/TASK/INDEX.*``
    (its stdout, stderr, and for a local one the record of its latest attempt)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def runtime_id(self) -> str:
        """A stable id of this state dir, made once; labels the containers it starts."""
        path = self.root / "runtime-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            runtime_id = os.urandom(8).hex()
            path.write_text(runtime_id + "\n")
            return runtime_id

    @property
    def database(self) -> Path:
        return self.root / "aiobatch.db"

    def work_dir(self, job_id: str, task: str, index: int) -> Path:
        return self.root / "work" / job_id / task / str(index)

    def log_dir(self, job_id: str, task: str) -> Path:
        return self.root / "logs" / job_id / task

    def log_path(self, job_id: str, task: str, index: int, stream: Stream) -> Path:
        return self.log_dir(job_id, task) / f"{index}.{stream}"

    def record_path(self, job_id: str, task: str, index: int) -> Path:
        """The record of a local instance's latest attempt (executors/records.py)."""
        return self.log_dir(job_id, task) / f"{index}.run"


@contextmanager
def lock_state_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state dir: two runtimes on one dir would run jobs twice.

    The kernel drops the lock when the process dies, however it dies.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirBusy(path.parent, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
