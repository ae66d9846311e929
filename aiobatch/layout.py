"""Where things live under the state dir."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from aiobatch.errors import StateDirBusy, StateDirUnusable, StateDirUnwritable

Stream = Literal["stdout", "stderr"]
PROBE_BYTES = 64 * 1024  # room for the first transactions: a start needs at least this
JOURNAL_NAME = ".attempts"
TASK_DIRS_CACHED = 4096  # tasks whose dirs' paths are kept (a bound, not a tuning knob)


class StateLayout:
    """``aiobatch.db``, ``work/JOB/TASK/INDEX/`` (an instance's cwd), ``logs/JOB/TASK/INDEX.*``
    (its stdout and stderr), ``logs/JOB/.attempts`` (how its local attempts started and ended)."""

    def __init__(self, root: str | Path) -> None:
        # Absolute: the spawner changes its own working dir to each instance's before it
        # starts it, so a relative path would name another place after the first start.
        self.root = Path(root).absolute()
        self._work, self._logs = self.root / "work", self.root / "logs"
        # Per (job, task): its work dir and log dir, made once; an instance's paths then
        # cost one join each (thousands of instances share a task's dirs).
        self._task_dirs: dict[tuple[str, str], tuple[Path, Path]] = {}
        self._journals: dict[str, Path] = {}  # by job id, bounded as the task dirs are

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

    def prepare(self) -> None:
        """Make the state dir if need be, and refuse to start where nothing can be stored.

        Raises StateDirUnwritable if its disk is full (room may come back), StateDirUnusable
        for what lasts: a read-only file system, no permission, not a directory."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Another local user (a task run as one, too) may pass through to its own work
            # dir, never list the jobs' dirs nor read their logs.
            for name, mode in (("work", 0o711), ("logs", 0o700)):
                (self.root / name).mkdir(exist_ok=True)
                os.chmod(self.root / name, mode)
            self._write_probe()
        except OSError as exc:
            raise start_refused(self.root, exc) from None

    def check_writable(self) -> None:
        """Whether there is room again, while running: write and remove a small file.

        Raises StateDirUnwritable (disk full, read-only, no permission)."""
        try:
            self._write_probe()
        except OSError as exc:
            raise StateDirUnwritable(self.root, exc.strerror or str(exc)) from None

    def _write_probe(self) -> None:
        # A full disk refuses the write itself (file systems reserve the blocks then).
        probe = self.root / ".write-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, bytes(PROBE_BYTES))
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    @property
    def database(self) -> Path:
        return self.root / "aiobatch.db"

    def _dirs_of(self, job_id: str, task: str) -> tuple[Path, Path]:
        dirs = self._task_dirs.get((job_id, task))
        if dirs is None:
            if len(self._task_dirs) >= TASK_DIRS_CACHED:
                self._task_dirs.clear()
            dirs = (self._work.joinpath(job_id, task), self._logs.joinpath(job_id, task))
            self._task_dirs[(job_id, task)] = dirs
        return dirs

    def job_work_dir(self, job_id: str) -> Path:
        return self._work / job_id

    def task_work_dir(self, job_id: str, task: str) -> Path:
        """Where its instances' work dirs are (not cached: any thread may ask)."""
        return self._work.joinpath(job_id, task)

    def work_dir(self, job_id: str, task: str, index: int) -> Path:
        return self._dirs_of(job_id, task)[0] / str(index)

    def log_dir(self, job_id: str, task: str) -> Path:
        return self._dirs_of(job_id, task)[1]

    def log_path(self, job_id: str, task: str, index: int, stream: Stream) -> Path:
        return self._dirs_of(job_id, task)[1] / f"{index}.{stream}"

    def journal_path(self, job_id: str) -> Path:
        """The journal of a job's local attempts (executors/records.py); a task's name cannot
        begin with a dot."""
        path = self._journals.get(job_id)
        if path is None:
            if len(self._journals) >= TASK_DIRS_CACHED:
                self._journals.clear()
            path = self._journals[job_id] = self._logs.joinpath(job_id, JOURNAL_NAME)
        return path


@contextmanager
def lock_state_dir(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the state dir: two runtimes on one dir would run jobs twice.

    The kernel drops the lock when the process dies, however it dies.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise start_refused(path.parent, exc, path.name) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateDirBusy(path.parent, holder) from None
        try:  # who holds it, for the message of the next one: helpful, not needed
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


_NO_ROOM = {errno.ENOSPC, errno.EDQUOT}  # room may come back: the unit may try again later


def start_refused(
    state_dir: Path, exc: OSError, name: str | None = None
) -> StateDirUnwritable | StateDirUnusable:
    """Why a start cannot use ``state_dir`` (``name``: the file in it that failed)."""
    reason = "it is not a directory" if isinstance(exc, FileExistsError) else exc.strerror
    reason = reason or str(exc)
    if name is not None:
        reason = f"{name}: {reason}"
    if exc.errno in _NO_ROOM:
        return StateDirUnwritable(state_dir, reason)
    return StateDirUnusable(state_dir, reason)
