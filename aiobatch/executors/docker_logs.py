"""A container attempt's log files: made and measured before it starts, opened for appending,
cut back to the attempt's beginning when it is adopted, and fed from the container's output
as it comes, the same files local instances write.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import anyio
from aiodocker.containers import DockerContainer

from aiobatch.attempt import InstanceContext
from aiobatch.executors._outputs import LOG_MODE
from aiobatch.logging import get_logger

log = get_logger("aiobatch.docker")


def prepare_files(ctx: InstanceContext) -> tuple[int, int]:
    """Make the work and log dirs; the logs' sizes, where this attempt's output begins."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.stdout_path.parent.mkdir(parents=True, exist_ok=True)
    return _size(ctx.stdout_path), _size(ctx.stderr_path)


def open_logs(ctx: InstanceContext) -> tuple[BinaryIO, BinaryIO]:
    out = _open_log(ctx.stdout_path)
    try:
        return out, _open_log(ctx.stderr_path)
    except BaseException:
        out.close()
        raise


def _open_log(path: Path) -> BinaryIO:
    """Appended to, readable by us alone (as a local instance's: _outputs.LOG_MODE)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    return os.fdopen(fd, "ab", buffering=0)


def rewind_logs(ctx: InstanceContext, offsets: tuple[int | None, int | None]) -> None:
    """Cut the logs back to where the adopted attempt's output began (None: as they are)."""
    for path, offset in zip((ctx.stdout_path, ctx.stderr_path), offsets, strict=True):
        size = _size(path)
        with path.open("ab") as f:
            f.truncate(size if offset is None else min(offset, size))


async def follow(
    container: DockerContainer,
    stream: str,
    out: BinaryIO,
    progress: Callable[[], None] = lambda: None,
) -> None:
    """Append one stream of the container to ``out`` as it comes; ``progress`` is called
    at each piece the engine sends.

    Written by a task of its own, what came meanwhile at once (a thread hop per frame
    could not keep up with a chatty container). While the state dir's disk is full, output
    is counted, not written; once a write fits again, a line says how much was lost, so
    nothing goes missing without a word."""
    pending = _Pending()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_write_out, pending, out, stream)
        try:
            async for chunk in container.log(follow=True, **{stream: True}):
                progress()
                await pending.put(chunk.encode())
        finally:
            pending.close()


class _Pending:
    """What was read and is still to be written, bounded (the reader waits for room)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self._changed = anyio.Event()

    async def put(self, data: bytes) -> None:
        while len(self.data) >= MAX_PENDING_BYTES:
            await self._wait()
        self.data += data
        self._poke()

    def close(self) -> None:
        self.closed = True
        self._poke()

    async def take(self) -> bytes | None:
        """All that is pending; None once closed and empty."""
        while not self.data:
            if self.closed:
                return None
            await self._wait()
        taken = bytes(self.data)
        self.data.clear()
        self._poke()
        return taken

    async def _wait(self) -> None:
        await self._changed.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


async def _write_out(pending: _Pending, out: BinaryIO, stream: str) -> None:
    lost, why = 0, ""
    while (body := await pending.take()) is not None:
        data = body
        if lost:
            data = f"\n[aiobatch: {lost} bytes of {stream} lost: {why}]\n".encode() + body
        try:
            # Off the event loop: a slow or full disk must not stall everything else.
            await anyio.to_thread.run_sync(out.write, data)
            lost = 0
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not lost:
                log.warning("log_lost", stream=stream, error=exc.strerror)
            lost, why = lost + len(body), exc.strerror or str(exc)
    if lost:
        log.error("log_lost", stream=stream, bytes=lost, error=why)


def note_cut(out: BinaryIO, stream: str, quiet_s: float) -> None:
    """A line where a log's copy was given up: what followed is not in the file."""
    with contextlib.suppress(OSError):
        out.write(
            f"\n[aiobatch: copy of {stream} given up: the engine sent nothing for "
            f"{quiet_s:g} s after the container's end]\n".encode()
        )


MAX_PENDING_BYTES = 4 * 2**20  # read from the engine, not yet written


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
