"""The storage backend protocol, URI parsing and the path checks every backend shares."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Protocol

import msgspec

from aiobatch.errors import AiobatchError


class StorageError(AiobatchError, OSError):
    """A transfer failed; the message names the URI and the cause."""


class StorageURI(msgspec.Struct, frozen=True):
    """``scheme://location/key``; a key ending in ``/`` is a prefix (a folder)."""

    scheme: str
    location: str  # the bucket for s3; empty for file
    key: str  # for file: the absolute path
    profile: str | None = None  # s3://PROFILE@bucket/key names a configured endpoint

    @classmethod
    def parse(cls, uri: str) -> StorageURI:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            raise StorageError(f"{uri}: not a URI (expected scheme://...)")
        if scheme == "file":
            if not rest.startswith("/"):
                raise StorageError(f"{uri}: a file URI must be absolute (file:///abs/path)")
            return cls("file", "", rest)
        location, _, key = rest.partition("/")
        profile, at, bucket = location.rpartition("@")
        return cls(scheme, bucket, key, profile if at else None)

    @property
    def is_prefix(self) -> bool:
        return self.key.endswith("/") or self.key == ""

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        profile = f"{self.profile}@" if self.profile else ""
        return f"{self.scheme}://{profile}{self.location}/{self.key}"

    def child(self, key: str) -> StorageURI:
        """The same bucket and profile, another key."""
        return StorageURI(self.scheme, self.location, key, self.profile)


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would land outside ``root``."""
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if normal.startswith("/") or normal == ".." or normal.startswith("../"):
        raise StorageError(f"{relative!r} would land outside {root}")
    return root / normal if normal != "." else root


class Local(msgspec.Struct, frozen=True):
    """A place ``relative`` to ``root`` (which we made: a work dir, a log dir), never outside
    it; the parts of ``relative`` are the task's to lay out."""

    root: Path
    relative: str = "."

    @classmethod
    def of(cls, root: Path, relative: str) -> Local:
        """A mapping's path: StorageError for one that would leave ``root``."""
        return cls(root, str(inside(root, relative).relative_to(root)))

    @property
    def path(self) -> Path:
        return self.root / self.relative

    @property
    def name(self) -> str:
        return self.path.name

    def child(self, relative: str) -> Local:
        """``relative`` below this place (an S3 key's rest, a name found in a folder, which
        may hold a backslash): StorageError for one that would leave this place."""
        parts = [part for part in relative.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise StorageError(f"{relative!r} would land outside {self.relative}")
        return Local(self.root, "/".join([*self._parts, *parts]) or ".")

    @property
    def _parts(self) -> list[str]:
        return [part for part in self.relative.split("/") if part not in ("", ".")]


class StorageBackend(Protocol):
    """Moves one file or one folder (a prefix) between a URI and a place in a work dir (or
    a log dir), never following a link there (``beneath.py``)."""

    scheme: str

    async def download(self, uri: StorageURI, dest: Local) -> None:
        """Copy ``uri`` to ``dest``; a prefix fills the folder ``dest`` with its contents.
        What an earlier attempt left at those places is replaced, never written through."""
        ...

    async def upload(self, src: Local, uri: StorageURI) -> None:
        """Copy ``src`` to ``uri``; a folder goes under the prefix ``uri``, keys mirroring
        paths (its regular files only: links, FIFOs and devices are skipped). ``src`` itself
        must be a regular file or a folder."""
        ...
