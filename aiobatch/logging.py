"""structlog setup: a console renderer for a person at a terminal, JSON lines otherwise.

structlog is imported at the first line logged, not when aiobatch is: its import costs
~10 ms (~50 ms more where rich is installed and the ``aiobatch`` command does not keep it
out), which every CLI command and every ``aiobatch run`` would pay although most log nothing.
Modules take their logger from :func:`get_logger`, which stands in for structlog's until it
is first used. An import that fails then (no file descriptor or memory left: the very
trouble a first line may be about) gives a plain line on stderr and is tried again later.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TextIO

from aiobatch.lossy_stream import lossy

if TYPE_CHECKING:
    import structlog

SECRET_WORDS = ("secret", "password", "token", "access_key", "credential", "authorization")

_LEVELS = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "warn": 30,
    "error": 40,
    "exception": 40,
    "critical": 50,
}
_lock = threading.Lock()
# The configuration asked for before structlog was imported; applied at the first line logged.
_pending: Callable[[], None] | None = None
# Its level: while it is pending, a line below it is dropped without importing structlog.
_pending_level = 0


def _drop(*args: object, **kwargs: object) -> None:
    return None


class _Logger:
    """A module's logger: becomes structlog's (a lazy proxy itself) at its first use."""

    __slots__ = ("_name", "_real")

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: Any = None

    def __getattr__(self, attribute: str) -> Any:
        if self._real is None:
            if (
                _pending is not None
                and _LEVELS.get(attribute, 100) < _pending_level
                and "structlog" not in sys.modules
            ):
                return _drop
            try:
                self._real = _structlog_logger(self._name)
            except Exception as exc:  # logging never raises into the code that logs
                return getattr(_Plain(exc, {}), attribute)
        return getattr(self._real, attribute)


class _Plain:
    """A logger while structlog cannot be imported: plain lines on stderr, fields bound."""

    def __init__(self, why: Exception, fields: dict[str, Any]) -> None:
        self._why, self._fields = why, fields

    def __getattr__(self, attribute: str) -> Any:
        if attribute in _LEVELS:
            return partial(_plain_line, attribute, self._why, self._fields)
        if attribute in ("bind", "new"):
            fields = self._fields if attribute == "bind" else {}
            return lambda **more: _Plain(self._why, {**fields, **more})
        raise AttributeError(attribute)


def _plain_line(
    level: str, why: Exception, bound: dict[str, Any], event: str, *args: object, **fields: Any
) -> None:
    """A line without structlog, which could not be imported: secrets redacted all the same."""
    fields = {**bound, **fields}
    if level == "exception":
        fields.setdefault("exc_info", repr(sys.exc_info()[1]))
    shown = redact_secrets(None, level, fields)
    text = " ".join(f"{key}={value!r}" for key, value in shown.items())
    try:
        print(f"{level} {event} {text} (logging: {why!r})", file=lossy(sys.stderr))
    except Exception:  # no stderr at all (None): the line goes nowhere, as a lossy one does
        pass


def get_logger(name: str) -> Any:
    """The logger of module ``name``; importing structlog waits for its first line."""
    return _Logger(name)


def _structlog_logger(name: str) -> Any:
    global _pending
    import structlog

    with _lock:
        # Configured by someone else since configure_logging was called (a host program, a
        # test's capture_logs): theirs is the newer wish.
        if _pending is not None and not structlog.is_configured():
            _pending()
        _pending = None
    return structlog.get_logger(name)


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
    import structlog

    try:
        import rich  # noqa: F401 - only whether it is there
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)


def configure_logging(
    format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog to ``stream`` (stderr by default). ``auto`` picks by ``isatty``.
    A line that cannot be written is dropped: logging never raises into the caller.
    Applied at once if structlog is imported already, else at the first line logged."""
    global _pending, _pending_level
    stream = lossy(stream or sys.stderr)
    console = format == "console" or (format == "auto" and stream.isatty())
    apply = partial(_apply, stream, console, level)
    with _lock:
        if "structlog" in sys.modules:
            _pending = None
            apply()
        else:
            _pending = apply
            _pending_level = _LEVELS[level.lower()]


def _apply(stream: TextIO, console: bool, level: str) -> None:
    import logging

    import structlog

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
