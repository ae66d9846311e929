"""The spawner's process (``_spawner.py``): started for a runtime, or early by ``aiobatch run``.

``aiobatch run`` starts one before it imports the rest of aiobatch (~0.1 s), so the first
start finds it ready: started by the runtime, its interpreter's own start (~20 ms) was waited
for by every one-task job. Unused (a job without local tasks, bad input), it ends as its
socket's other end closes with the command.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

PROGRAM = os.path.join(os.path.dirname(__file__), "_spawner.py")

Launched = tuple["subprocess.Popen[bytes]", socket.socket]  # the process, our end of its socket

_early: Launched | None = None


def launch() -> Launched:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with theirs:
            # -E -s -S: no PYTHON* settings, no site-packages: the standard library and the
            # program's siblings only.
            process = subprocess.Popen(
                [sys.executable, "-E", "-s", "-S", PROGRAM, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
    except BaseException:
        ours.close()
        raise
    return process, ours


def start_early() -> None:
    """Start a spawner now, for the first ``take``; if it cannot be, ``take`` tries again
    (and fails there with the reason)."""
    global _early
    if _early is None:
        try:
            _early = launch()
        except OSError:
            return


def take() -> Launched:
    """The spawner started early, if it still runs; else a new one."""
    global _early
    early, _early = _early, None
    if early is not None:
        process, ours = early
        if process.poll() is None:
            return early
        ours.close()
    return launch()
