"""The ``user`` of a local task: who it names on this host, and whether we may become it.

The syntax is Docker's: ``name``, ``uid``, ``name:group``, ``uid:gid``. A name (user or
group) must exist on this host; a number is taken as it is when both are numbers (as Docker
does), else the user must exist so that its group is known.
"""

from __future__ import annotations

import grp
import os
import pwd
import re

import msgspec

from aiobatch.limits import UID_MAX

_NUMBER = re.compile(r"[0-9]{1,10}", re.ASCII)
# Capabilities a non-root runtime needs to run a program as another user: setuid, setgid
# (and setgroups), and chown of the instance's work dir to that user.
CAP_CHOWN, CAP_SETGID, CAP_SETUID = 0, 6, 7


class Identity(msgspec.Struct, frozen=True):
    """Who an instance runs as: its uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def _number(text: str) -> int | None:
    if not _NUMBER.fullmatch(text):
        return None
    value = int(text)
    if value > UID_MAX:
        raise LookupError(f"{text} is beyond the largest id ({UID_MAX})")
    return value


def resolve_user(spec: str) -> Identity:
    """The identity ``spec`` names on this host. Raises LookupError saying what is unknown."""
    if "\0" in spec:
        raise LookupError(f"{spec!r} contains a NUL byte")
    name, has_group, group = spec.partition(":")
    if not name or (has_group and not group):
        raise LookupError(f"{spec!r} is not USER, UID, USER:GROUP or UID:GID")
    uid, gid = _number(name), _number(group) if has_group else None
    entry = None
    if uid is None or gid is None:
        try:
            entry = pwd.getpwnam(name) if uid is None else pwd.getpwuid(uid)
        except KeyError:
            raise LookupError(f"no user {name!r} on this host") from None
    if has_group and gid is None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise LookupError(f"no group {group!r} on this host") from None
    if entry is None:
        assert uid is not None and gid is not None
        return Identity(uid, gid, (gid,))
    if gid is not None:  # a group given: that one only, as Docker does
        return Identity(entry.pw_uid, gid, (gid,))
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return Identity(entry.pw_uid, entry.pw_gid, tuple(dict.fromkeys(groups)))


def may_switch_user() -> bool:
    """Whether this process may start programs as another user: its effective capabilities
    hold CAP_SETUID, CAP_SETGID and CAP_CHOWN (root's do, unless taken away)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    needed = (1 << CAP_CHOWN) | (1 << CAP_SETGID) | (1 << CAP_SETUID)
                    return caps & needed == needed
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0
