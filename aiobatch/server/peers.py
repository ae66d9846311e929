"""The credentials of the process at the other end of a unix connection.

The uid and primary gid come from SO_PEERCRED; the supplementary groups from SO_PEERGROUPS
(Linux 4.13+), which, like SO_PEERCRED, the kernel records when the peer connects: they are
the groups the process had, not those the group database lists for its user (a process may
have dropped some, or been given others), and they cannot change under us (no pid to reuse,
as /proc/PID/status would have). Only where SO_PEERGROUPS fails (an old kernel, or more groups
than fit the buffer) is /proc/PID/status read instead, and only if its uid is still the peer's.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path

from aiohttp import web

PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux's number; not in Python 3.11
GROUPS_BUFFER = 1024  # bytes: 256 gids, Python's limit for getsockopt


def peer_credentials(request: web.BaseRequest, *, groups: bool) -> tuple[int, set[int]] | None:
    """The peer's uid and gids (primary, and supplementary if ``groups``); None for TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    pid, uid, gid = PEERCRED.unpack(creds)
    gids = {int(gid)}
    if groups:
        gids |= supplementary_groups(sock, pid, uid)
    return int(uid), gids


def supplementary_groups(sock: socket.socket, pid: int, uid: int) -> set[int]:
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, GROUPS_BUFFER)
    except OSError as exc:
        if exc.errno not in (errno.ERANGE, errno.ENOPROTOOPT, errno.EINVAL):
            raise
        return _proc_groups(pid, uid)
    count = len(data) // 4
    return set(struct.unpack(f"{count}I", data[: 4 * count]))


def _proc_groups(pid: int, uid: int) -> set[int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return set()
    fields = dict(line.partition(":")[::2] for line in lines)
    if int(fields.get("Uid", "-1 ").split()[0]) != uid:
        return set()  # the peer is gone and its pid is another process's
    return {int(gid) for gid in fields.get("Groups", "").split()}
