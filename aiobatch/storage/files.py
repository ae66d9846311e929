"""``file://`` backend: local folders, copied in a worker thread (file I/O blocks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from aiobatch.storage.base import StorageError, StorageURI, inside


class FileBackend:
    scheme = "file"

    async def download(self, uri: StorageURI, dest: Path) -> None:
        await anyio.to_thread.run_sync(_copy, Path(uri.key), dest, str(uri))

    async def upload(self, src: Path, uri: StorageURI) -> None:
        await anyio.to_thread.run_sync(_copy, src, Path(uri.key), str(src))


def _copy(src: Path, dest: Path, name: str) -> None:
    if src.is_dir():
        for path in sorted(src.rglob("*")):
            if path.is_symlink():
                continue  # a link could point anywhere: copy what is really here only
            target = inside(dest, str(path.relative_to(src)))
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        dest.mkdir(parents=True, exist_ok=True)
        return
    if not src.is_file():
        raise StorageError(f"{name} not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
