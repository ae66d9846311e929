"""structlog setup: a console renderer for a person at a terminal, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from aiobatch.lossy_stream import lossy

SECRET_WORDS = ("secret", "password", "token", "access_key", "credential", "authorization")


def redact_secrets(
    logger: object, method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Blank out every field whose name says it holds a secret, before any renderer sees it."""
    for key in event_dict:
        if any(word in key.lower() for word in SECRET_WORDS):
            event_dict[key] = "[redacted]"
    return event_dict


def _traceback() -> structlog.typing.ExceptionRenderer:
    """Tracebacks without the values of local variables: rich (and better-exceptions, the
    console renderer's other default) would print an instance's environment, secrets and all."""
    try:
        import rich  # noqa: F401 - only whether it is there
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def configure_logging(
    format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog to ``stream`` (stderr by default). ``auto`` picks by ``isatty``.
    A line that cannot be written is dropped: logging never raises into the caller."""
    stream = lossy(stream or sys.stderr)
    console = format == "console" or (format == "auto" and stream.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=_traceback())
        if console
        else structlog.processors.JSONRenderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        redact_secrets,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=not console),
    ]
    if not console:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
