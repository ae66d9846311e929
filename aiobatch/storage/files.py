"""``file://`` backend: local folders, copied in a worker thread (file I/O blocks).

The folder a URI names is the spec's (whoever submits a job chooses it); the work dir's side
is reached through ``beneath.py`` only, so a link a task planted is never followed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio

from aiobatch.storage import beneath
from aiobatch.storage.base import Local, StorageError, StorageURI, inside

CHUNK = 1 << 20


class FileBackend:
    scheme = "file"

    async def download(self, uri: StorageURI, dest: Local) -> None:
        await anyio.to_thread.run_sync(_download, Path(uri.key), dest, str(uri))

    async def upload(self, src: Local, uri: StorageURI) -> None:
        await anyio.to_thread.run_sync(_upload, src, Path(uri.key))


def _download(src: Path, dest: Local, name: str) -> None:
    if src.is_dir():
        beneath.make_folder(dest)
        for path in sorted(src.rglob("*")):
            if path.is_symlink():
                continue  # a link could point anywhere: copy what is really here only
            place = dest.child(str(path.relative_to(src)))
            if path.is_dir():
                beneath.make_folder(place)
            elif path.is_file():
                _copy_in(path, place)
        return
    if not src.is_file():
        raise StorageError(f"{name} not found")
    _copy_in(src, dest)


def _copy_in(src: Path, dest: Local) -> None:
    with src.open("rb") as reader, os.fdopen(beneath.create_file(dest), "wb") as writer:
        shutil.copyfileobj(reader, writer, CHUNK)


def _upload(src: Local, dest: Path) -> None:
    found = beneath.kind(src)
    if found == "folder":
        dest.mkdir(parents=True, exist_ok=True)
        for relative, is_folder in beneath.entries(src):
            target = inside(dest, relative)
            if is_folder:
                target.mkdir(parents=True, exist_ok=True)
            else:
                _copy_out(src.child(relative), target)
        return
    if found is None:
        raise StorageError(f"{src.relative} not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _copy_out(src, dest)  # a link or a special file: refused there


def _copy_out(src: Local, dest: Path) -> None:
    """The file as large as it was when opened: one that grows while it is copied (a task's
    process left behind) is not followed to the end of the disk."""
    fd, left = beneath.open_regular(src)
    with os.fdopen(fd, "rb") as reader, dest.open("wb") as writer:
        while left > 0 and (chunk := reader.read(min(CHUNK, left))):
            writer.write(chunk)
            left -= len(chunk)
