"""The spawner's view of the processes it is the parent or subreaper of: its children, the
attempt a process belongs to (by its environment), and killing one or its group. Standard
library only, as the spawner (a sibling it imports as a script).
"""

from __future__ import annotations

import os
import signal

KEY_VARS = ("AIOBATCH_JOB_ID", "AIOBATCH_TASK_NAME", "AIOBATCH_INSTANCE_INDEX", "AIOBATCH_ATTEMPT")

Key = tuple[str, str, str, str]  # job, task, index, attempt: as in the environment


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def children() -> list[int]:
    # Read at every end: plain system calls, not a file object's several.
    try:
        fd = os.open(_CHILDREN, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        data = b""
        while chunk := os.read(fd, 1 << 16):  # a page or so per read: on to the end
            data += chunk
    except OSError:
        return []
    finally:
        os.close(fd)
    return [int(pid) for pid in data.split()]


_CHILDREN = f"/proc/{os.getpid()}/task/{os.getpid()}/children"  # the spawner's own


def key_of(pid: int) -> Key | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return None
    found: dict[str, str] = {}
    for entry in environ:
        name, _, value = entry.partition(b"=")
        if name.decode(errors="replace") in KEY_VARS:
            found[name.decode()] = value.decode(errors="replace")
    if len(found) != len(KEY_VARS):
        return None
    job, task, index, attempt = (found[name] for name in KEY_VARS)
    return (job, task, index, attempt)
