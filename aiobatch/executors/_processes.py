"""The spawner's view of the processes it is the parent or subreaper of: its children, the
attempt a process belongs to (by its environment), killing one or its group, and the strays
of ended attempts; and its own open files limit. Standard library only, as the spawner (a
sibling it imports as a script).
"""

from __future__ import annotations

import os
import resource
import signal

TYPE_CHECKING = False  # typing's own flag costs an import of typing
if TYPE_CHECKING:
    from collections.abc import Container

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


def kill_strays(leaders: Container[int], running: Container[Key], *, everything: bool) -> None:
    """Kill the processes left to us (we are their subreaper) whose attempt has ended:
    every child but the ``leaders`` of attempts, unless its environment names a ``running``
    attempt. One that names none (it cleared its environment) is killed once no attempt
    runs; with ``everything`` (we close), all of them are."""
    for pid in children():
        if pid in leaders:
            continue
        if not everything:
            key = key_of(pid)
            if key in running or (key is None and running):
                continue
        kill(pid)
        kill_group(pid, signal.SIGKILL)  # a setsid'd stray leads its own group


def raise_open_files_limit() -> None:
    """To the hard limit: we hold two pipes per running instance and use epoll, not select.
    With the soft limit we were given (1024 in most shells) a wide job failed its starts
    with "Too many open files": at a soft limit of 256, one of 400 instances at once did.
    Our programs inherit it, as they do from a service, which raises its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # a hard limit of "unlimited" that the kernel caps
            pass
