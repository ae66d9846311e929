"""A text stream for logs and progress whose writes never raise.

A log line or a progress line is for whoever reads stderr. When nobody can any more (the
pipe into ``head`` closed, journald restarted and broke its stream, the file it goes to is
on a full disk), the line is dropped and counted: a failed write must not fail the code that
logged, such as an attempt, a request or ``aiobatch run``'s wait for its job.
"""

from __future__ import annotations

from typing import TextIO, cast


class LossyStream:
    """Writes through to ``stream``; a write or flush that fails drops its text instead."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.dropped = 0  # writes that could not be made

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.dropped += 1
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.dropped += 1

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except ValueError:
            return False

    def fileno(self) -> int:
        return self.stream.fileno()


def lossy(stream: TextIO) -> TextIO:
    """``stream`` for those who take a TextIO and use only write, flush, isatty and fileno
    (print, structlog's PrintLogger, tqdm, the progress view)."""
    return stream if isinstance(stream, LossyStream) else cast(TextIO, LossyStream(stream))
