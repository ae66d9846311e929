"""Files in an instance's work dir, reached without following a link anywhere below it.

A task lays its work dir out as it likes, links and FIFOs included, and the runtime (often
root) reads its outputs there and, at a retry, writes the next attempt's inputs. Every
step below the work dir is opened with ``O_NOFOLLOW`` from the folder before it, so a link
the task planted is never followed: an output that is a link, a device or a FIFO is
refused (or, inside a folder, skipped), and an input replaces whatever link or file the
last attempt left at its place instead of writing through it. A deleted job's tree is
removed the same way, however deep. Blocking: run in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from aiobatch.storage.base import Local, StorageError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Checked to be a regular file first; should it have been swapped for a FIFO or a tty
# meanwhile, opening it neither blocks nor makes it ours.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE, DIR_MODE = 0o644, 0o755

Kind = Literal["file", "folder", "other"]


def kind(place: Local) -> Kind | None:
    """What is at ``place`` (a link is "other"); None if nothing is."""
    try:
        parent, name = _parent(place, make=False)
    except FileNotFoundError:
        return None
    try:
        found = os.stat(name or ".", dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(parent)
    if stat.S_ISREG(found.st_mode):
        return "file"
    return "folder" if stat.S_ISDIR(found.st_mode) else "other"


def open_regular(place: Local) -> tuple[int, int]:
    """A file descriptor to read the regular file at ``place``, and its size then (what is
    read of it: one that grows meanwhile is not followed to the end of the disk);
    StorageError for a link, a FIFO, a device, or anything else that is not one (none of
    which is opened)."""
    try:
        parent, name = _parent(place, make=False)
    except FileNotFoundError:
        raise StorageError(f"{place.relative} not found") from None
    try:
        if not name:
            raise StorageError(f"{place.relative} is a folder")
        try:
            seen = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISREG(seen.st_mode):
                raise StorageError(f"{place.relative} is not a regular file")
            fd = os.open(name, _READ, dir_fd=parent)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{place.relative}: {_why(exc)}") from None
    finally:
        os.close(parent)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)  # swapped since it was looked at
        raise StorageError(f"{place.relative} changed while it was opened")
    os.set_blocking(fd, True)
    return fd, opened.st_size


def create_file(place: Local) -> int:
    """A file descriptor to write a new file at ``place``: its folders made; a link or file
    already there (an earlier attempt's) replaced, never written through."""
    parent, name = _parent(place, make=True)
    try:
        if not name:
            raise StorageError(f"{place.relative} is the work dir itself")
        try:
            return os.open(name, _CREATE, FILE_MODE, dir_fd=parent)
        except FileExistsError:
            there = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(there.st_mode):
                raise StorageError(f"{place.relative} is a folder") from None
            os.unlink(name, dir_fd=parent)
            return os.open(name, _CREATE, FILE_MODE, dir_fd=parent)
    finally:
        os.close(parent)


def make_folder(place: Local) -> None:
    """The folder at ``place`` and those above it (a link in their place replaced)."""
    os.close(_open_dir(place, make=True))


def entries(place: Local) -> Iterator[tuple[str, bool]]:
    """The regular files and folders below the folder at ``place``: (path relative to it,
    whether a folder), a folder before what it holds, each folder's in name order. Links,
    FIFOs, devices and sockets are skipped. One folder is open at a time, each reached
    anew from ``place`` without following a link."""
    pending = [""]
    while pending:
        prefix = pending.pop()
        try:
            fd = _open_dir(place.child(prefix), make=False)
        except (FileNotFoundError, StorageError):
            if not prefix:
                raise
            continue  # replaced meanwhile by something that is no folder
        try:
            with os.scandir(fd) as found:
                listed = sorted(found, key=lambda entry: entry.name)
        finally:
            os.close(fd)
        folders = []
        for entry in listed:
            if entry.is_file(follow_symlinks=False):
                yield prefix + entry.name, False
            elif entry.is_dir(follow_symlinks=False):
                folders.append(prefix + entry.name)
                yield prefix + entry.name, True
        pending.extend(f"{folder}/" for folder in reversed(folders))


def _open_dir(place: Local, *, make: bool) -> int:
    parent, name = _parent(place, make=make)
    if not name:
        return parent
    try:
        return _step(parent, name, make=make)
    except StorageError as exc:
        raise StorageError(f"{place.relative}: {exc}") from None
    finally:
        os.close(parent)


def _parent(place: Local, *, make: bool) -> tuple[int, str]:
    """The folder holding ``place`` (open) and its name in it ("" for the root itself)."""
    parts = place._parts
    fd = os.open(place.root, _DIR)
    try:
        for part in parts[:-1]:
            below = _step(fd, part, make=make)
            os.close(fd)
            fd = below
    except StorageError as exc:
        os.close(fd)
        raise StorageError(f"{place.relative}: {exc}") from None  # the whole path named
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1] if parts else ""


def _step(fd: int, name: str, *, make: bool) -> int:
    """The folder ``name`` in ``fd``, made if ``make`` (a link there replaced by it)."""
    try:
        return os.open(name, _DIR, dir_fd=fd)
    except FileNotFoundError:
        if not make:
            raise
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        there = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not (make and stat.S_ISLNK(there.st_mode)):
            raise StorageError(f"{name}: not a folder (a link, or a file)") from None
        os.unlink(name, dir_fd=fd)
    try:
        os.mkdir(name, DIR_MODE, dir_fd=fd)
    except FileExistsError:
        pass  # made meanwhile: opened below without following, whatever it is
    return os.open(name, _DIR, dir_fd=fd)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a link"
    return exc.strerror or type(exc).__name__


def remove_tree(top: Path) -> None:
    """Remove ``top`` and all below it, however deep a task nested its folders (no
    recursion, one folder open at a time) and never through a link: the way back up is
    checked to be the folder it came down from, so a folder moved meanwhile stops the
    removal, never leads it elsewhere. What cannot be removed is left, never raised: a
    deletion goes on with the rest."""
    try:
        fd = os.open(top, _DIR)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(top)  # a file, or a link, where a folder was
        return
    # The folders walked down into: each one's name, and who its parent was.
    down: list[tuple[str, tuple[int, int]]] = []
    stuck: set[tuple[int, int]] = set()  # folders that would not go: not tried again
    try:
        while True:
            below = _first_folder_emptying_the_rest(fd, stuck)
            if below is not None:
                try:
                    opened = os.open(below, _DIR, dir_fd=fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(below, dir_fd=fd)
                    continue
                down.append((below, _identity(fd)))
                os.close(fd)
                fd = opened
                continue
            if not down:
                break
            name, parent = down.pop()
            here = _identity(fd)
            above = os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = above
            if _identity(fd) != parent:
                return  # moved meanwhile: what is left stays
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                stuck.add(here)
    except OSError:
        return
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(top)


def _first_folder_emptying_the_rest(fd: int, stuck: set[tuple[int, int]]) -> str | None:
    """Unlink everything in ``fd`` that is not a folder; the name of a folder left to
    remove (not one found ``stuck``), if any."""
    with os.scandir(fd) as found:
        for entry in found:
            if entry.is_dir(follow_symlinks=False):
                seen = entry.stat(follow_symlinks=False)
                if (seen.st_dev, seen.st_ino) not in stuck:
                    return entry.name
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.name, dir_fd=fd)
    return None


def _identity(fd: int) -> tuple[int, int]:
    found = os.fstat(fd)
    return found.st_dev, found.st_ino
