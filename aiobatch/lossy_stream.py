"""A text stream for logs and progress whose writes never raise.

A log line or a progress line is for whoever reads stderr. When nobody can any more (the
pipe into ``head`` closed, journald restarted and broke its stream, the file it goes to is
on a full disk), the line is dropped: a failed write must not fail the code that logged,
such as an attempt, a request or ``aiobatch run``'s wait for its job.
"""

from __future__ import annotations

from typing import TextIO, cast


class LossyStream:
    """Writes through to ``stream``; a write or flush that fails drops its text instead."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except ValueError:
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def __getattr__(self, name: str) -> object:
        # The rest as the stream has it: encoding (tqdm draws Unicode bars by it), buffer...
        return getattr(self.stream, name)


def lossy(stream: TextIO) -> TextIO:
    """``stream``, made lossy, for those who take a TextIO (print, structlog's PrintLogger,
    tqdm, the progress view, ``sys.stderr`` itself)."""
    return stream if isinstance(stream, LossyStream) else cast(TextIO, LossyStream(stream))
