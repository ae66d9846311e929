"""Checks of webhook targets, where they enter: a job spec's ``notify:`` and the config's
``[[notifications]]`` (the structs and bounds are in ``notify_types.py``).

Each problem names its field path (``$.notify[0].url``, ``$.notifications[1].events[2]``) and
the bound. A refused secret source is not quoted: it may be the secret itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiobatch.notify_types import (
    MAX_NOTIFY_BACKOFF_S,
    MAX_NOTIFY_TARGETS,
    MAX_NOTIFY_TIMEOUT_S,
    MAX_NOTIFY_URL_CHARS,
    NOTIFY_EVENTS,
    NotifyDef,
    NotifySpec,
)
from aiobatch.spec_checks import check_secret_source, convert_struct
from aiobatch.units import parse_duration, shown

# Whitespace and controls: a URL that holds them was pasted wrong, and a server reads it
# differently than the user does.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def convert_notify(raw: Any, where: str, errors: list[str]) -> list[NotifySpec | None]:
    """A list of targets as written, each converted on its own so that every one's problems
    show; an entry that could not be is None (its problems in ``errors``)."""
    if not isinstance(raw, list | tuple):
        errors.append(f"{where}: expected a list of targets, got {type(raw).__name__}")
        return []
    if len(raw) > MAX_NOTIFY_TARGETS:
        errors.append(f"{where}: at most {MAX_NOTIFY_TARGETS} targets, got {len(raw)}")
        return []
    specs = []
    for i, item in enumerate(raw):
        count = len(errors)
        specs.append(convert_struct(item, NotifySpec, f"{where}[{i}]", errors))
        for k in range(count, len(errors)):  # msgspec does not list the events there are
            if ".events[" in errors[k] and "invalid enum value" in errors[k]:
                errors[k] += f" (one of: {', '.join(NOTIFY_EVENTS)})"
    return specs


def check_notify(
    specs: Sequence[NotifySpec | None], where: str, errors: list[str]
) -> tuple[NotifyDef, ...]:
    """What types cannot say: the URL, events listed once, the secret's source, durations.
    Entries that could not be converted (None) are skipped. Returns the targets resolved
    (meaningful only if nothing was added to ``errors``)."""
    if len(specs) > MAX_NOTIFY_TARGETS:  # a list made in Python is not converted
        errors.append(f"{where}: at most {MAX_NOTIFY_TARGETS} targets, got {len(specs)}")
        return ()
    resolved: list[NotifyDef] = []
    first: dict[str, int] = {}
    for i, spec in enumerate(specs):
        if spec is None:
            continue
        at = f"{where}[{i}]"
        url_problem = _url_problem(spec.url)
        if url_problem is not None:
            errors.append(f"{at}.url: {url_problem}")
        elif spec.url in first:
            errors.append(f"{at}.url: the same URL as {where}[{first[spec.url]}]")
        else:
            first[spec.url] = i
        if not spec.events:
            errors.append(f"{at}.events: needs at least one event")
        seen: dict[str, int] = {}
        for k, event in enumerate(spec.events):
            if event in seen:
                errors.append(f"{at}.events[{k}]: {event} is listed twice")
            seen.setdefault(event, k)
        if spec.secret is not None:
            check_secret_source(spec.secret, f"{at}.secret", errors)
        backoff_s = _duration(spec.backoff, MAX_NOTIFY_BACKOFF_S, f"{at}.backoff", errors)
        timeout_s = _duration(spec.timeout, MAX_NOTIFY_TIMEOUT_S, f"{at}.timeout", errors)
        resolved.append(
            NotifyDef(
                url=spec.url,
                events=tuple(seen),
                secret=spec.secret,
                tries=spec.tries,
                backoff_s=backoff_s,
                timeout_s=timeout_s,
            )
        )
    return tuple(resolved)


def _url_problem(url: str) -> str | None:
    if len(url) > MAX_NOTIFY_URL_CHARS:
        return f"at most {MAX_NOTIFY_URL_CHARS} characters, got {len(url)}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not one
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.username is not None or parts.password is not None:
        # It would be stored with the job and shown with it; a receiver checks the signature.
        return "credentials in the URL are not taken (not shown); sign with `secret` instead"
    if _UNSAFE.search(url):
        return f"{shown(url)} holds whitespace or a control character"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{shown(url)} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{shown(url)} names no host"
    return None


def _duration(value: str | int | float, most: float, where: str, errors: list[str]) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        errors.append(f"{where}: {exc}")
        return 1.0
    if seconds > most:
        errors.append(f"{where}: at most {most:.0f} seconds, got {shown(value)}")
    return seconds
