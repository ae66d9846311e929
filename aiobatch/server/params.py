"""Request parsing: query and path parameters, each parsed once, with its range.

Numbers are ASCII digits only (``str.isdigit`` takes other scripts' digits too) and fit
what uses them: SQLite's signed 64-bit INTEGER, and ``off_t`` for log offsets.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from aiobatch.labels import label_filters
from aiobatch.limits import INT64_MAX  # SQLite INTEGER, off_t: no request number is larger
from aiobatch.server.responses import bad_request, printable
from aiobatch.states import JobState

FLAGS = {"0": False, "false": False, "no": False, "1": True, "true": True, "yes": True}


def query(
    request: web.BaseRequest, *allowed: str, repeatable: tuple[str, ...] = ()
) -> Mapping[str, str]:
    """The query parameters, refusing any this endpoint does not know (a typo is an error),
    and any given twice unless it is ``repeatable`` (read those with ``getall``)."""
    unknown = sorted(set(request.query) - set(allowed) - set(repeatable))
    if unknown:
        known = ", ".join((*allowed, *repeatable)) or "none"
        raise bad_request(f"unknown query parameter {shown(unknown[0])} (known: {known})")
    repeated = [name for name in allowed if len(request.query.getall(name, ())) > 1]
    if repeated:
        raise bad_request(f"{repeated[0]}: given more than once")
    return request.query


def parse_int(raw: str, name: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """``raw`` as an integer from ``minimum`` to ``maximum``, else 400 naming ``name``."""
    digits = raw.lstrip("0") or "0"
    if (
        not (raw.isascii() and raw.isdigit())
        or len(digits) > len(str(maximum))  # before int(): a huge string is work too
        or not minimum <= int(digits) <= maximum
    ):
        raise bad_request(
            f"{name}: expected an integer from {minimum} to {maximum}, got {shown(raw)}"
        )
    return int(digits)


def int_param(
    params: Mapping[str, str], name: str, minimum: int = 0, maximum: int = INT64_MAX
) -> int | None:
    raw = params.get(name)
    return None if raw is None else parse_int(raw, name, minimum, maximum)


def flag_param(params: Mapping[str, str], name: str) -> bool:
    raw = params.get(name, "0")
    flag = FLAGS.get(raw.lower())
    if flag is None:
        raise bad_request(f"{name}: expected 1 or 0, got {shown(raw)}")
    return flag


def state_param(params: Mapping[str, str], name: str) -> JobState | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return JobState(raw.upper())
    except ValueError:
        states = ", ".join(JobState)
        raise bad_request(f"{name}: expected one of {states}, got {shown(raw)}") from None


def text_param(raw: str, name: str) -> str:
    """A name or id from the path or query: valid UTF-8 without NUL (what SQLite, file
    names and JSON can all hold), else 400."""
    if "\0" in raw or not _is_utf8(raw):
        raise bad_request(f"{name}: not valid UTF-8 text, got {shown(raw)}")
    return raw


def job_id_of(request: web.Request) -> str:
    return text_param(request.match_info["job_id"], "job id")


def instance_of(request: web.Request) -> tuple[str, str, int]:
    """The job id, task name and instance index of an instance's path."""
    info = request.match_info
    task = text_param(info["task"], "task")
    return job_id_of(request), task, parse_int(info["index"], "index")


def shown(raw: str) -> str:
    return repr(printable(raw, 40))


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates: bytes of a path that were not UTF-8
        return False
    return True


def labels_param(request: web.BaseRequest) -> dict[str, str]:
    """Every ``label=KEY=VALUE`` of the query: jobs with all of them. 400 naming a bad one."""
    try:
        return label_filters(request.query.getall("label", []))
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def hours_param(params: Mapping[str, str]) -> float:
    """``hours`` of a log-view link: a decimal number above 0 and at most MAX_LINK_HOURS."""
    from aiobatch.links import DEFAULT_LINK_HOURS, check_hours

    text = params.get("hours")
    if text is None:
        return DEFAULT_LINK_HOURS
    try:
        value = float(text) if text.isascii() and text.replace(".", "", 1).isdigit() else None
        if value is None:
            raise ValueError(f"hours: {shown(text)} is not a decimal number")
        return check_hours(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
