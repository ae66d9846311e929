"""A spec's or config's document as typed structs, converted field by field so that every
field's problem is reported as ``$.field.path: problem``; and how that list is shown.

The value checks that types cannot say are in ``spec_checks``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar, get_args

import msgspec

from aiobatch.spec_types import OnFailure, OutputWhen, PullPolicy, RetryReason, When
from aiobatch.units import shown

T = TypeVar("T")
MAX_REPORTED = 100  # errors listed in full; a spec with thousands of bad strings says how many
# C0 controls, DEL and C1 controls: printed raw they move the cursor, retitle or clear a terminal.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def key_path(prefix: str, key: object) -> str:
    """``prefix.key``, or ``prefix[<repr>]`` for a key that would not read as a path."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) and len(key) <= 128:
        return f"{prefix}.{key}"
    return f"{prefix}[{shown(key)}]"


def msgspec_error(prefix: str, exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message into ``$.field.path: problem`` under ``prefix``."""
    text = str(exc)
    message, _, where = text.partition(" - at `")
    path = prefix + where.rstrip("`")[1:] if where else prefix
    for pattern, template in (
        (r"Object missing required field `(.+)`", "{path}.{0}: required field is missing"),
        (r"Object contains unknown field `(.+)`", "{path}.{0}: unknown field"),
    ):
        match = re.fullmatch(pattern, message, re.DOTALL)
        if match:
            return template.format(match.group(1), path=path)
    text = f"{path}: {message[:1].lower()}{message[1:]}"
    if message.startswith("Invalid enum value"):
        choices = next((get_args(kind) for at, kind in _CHOICES if re.search(at, path)), ())
        if choices:
            text += f" (one of: {', '.join(map(repr, choices))})"
    return text


# Fields that take one of a few words, by where they are: msgspec does not list the words.
_CHOICES: tuple[tuple[str, Any], ...] = (
    (r"\.depends_on\[\d+\]\.when$", When),
    (r"\.outputs\[\d+\]\.when$", OutputWhen),
    (r"\.on_failure$", OnFailure),
    (r"\.pull$", PullPolicy),
    (r"\.on_reasons\[\d+\]$", RetryReason),
)


def convert_at(data: Any, kind: Any, prefix: str, errors: list[str]) -> Any:
    """``msgspec.convert``, or None with the error (under ``prefix``) added to ``errors``."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        errors.append(msgspec_error(prefix, exc))
    except UnicodeEncodeError:  # msgspec matches some strings as UTF-8 (a Literal's)
        errors.append(f"{prefix}: a string in it is not valid Unicode (a lone surrogate)")
    return None


def convert_fields(
    raw: Mapping[Any, Any],
    kind: type[Any],
    prefix: str,
    errors: list[str],
    bad: set[str] | None = None,
) -> dict[str, Any]:
    """Convert each field of the struct ``kind`` on its own: every field's problem, and every
    unknown field, is reported. Returns the fields converted (by attribute name); the paths
    of those that were not go into ``bad``."""
    fields = {info.encode_name: info for info in msgspec.structs.fields(kind)}
    values: dict[str, Any] = {}
    for key in raw:
        if key not in fields:
            errors.append(f"{key_path(prefix, key)}: unknown field")
    for name, info in fields.items():
        if name in raw:
            count = len(errors)
            value = convert_at(raw[name], info.type, f"{prefix}.{name}", errors)
            if len(errors) == count:
                values[info.name] = value
            elif bad is not None:
                bad.add(f"{prefix}.{name}")
        elif info.required:
            errors.append(f"{prefix}.{name}: required field is missing")
    return values


def convert_struct(
    raw: Any, kind: type[T], prefix: str, errors: list[str], bad: set[str] | None = None
) -> T | None:
    """``raw`` as the struct ``kind``; on failure, every field's problem is in ``errors``,
    and what could be converted is returned (if it has its required fields), so that the
    rest of it can still be checked. The paths of fields left out go into ``bad``."""
    try:
        return msgspec.convert(raw, kind, strict=False)
    except (msgspec.ValidationError, UnicodeEncodeError) as exc:
        if not isinstance(raw, Mapping):
            convert_at(raw, kind, prefix, errors)
            return None
        count = len(errors)
        values = convert_fields(raw, kind, prefix, errors, bad)
        if len(errors) == count:  # a problem no single field has: report it as it is
            if isinstance(exc, msgspec.ValidationError):
                errors.append(msgspec_error(prefix, exc))
            else:
                errors.append(f"{prefix}: a string in it is not valid Unicode")
            return None
        try:
            return kind(**values)
        except TypeError:  # a required field is missing
            return None


def capped(errors: list[str]) -> list[str]:
    """The first MAX_REPORTED errors, and how many more there were; each one line with no
    control character (a key or name quoted in it may have had some)."""
    shown = [printable(error) for error in errors[:MAX_REPORTED]]
    if len(errors) > MAX_REPORTED:
        shown.append(f"$: and {len(errors) - MAX_REPORTED} more errors")
    return shown


def printable(text: str) -> str:
    return CONTROL.sub(lambda found: repr(found.group())[1:-1], text)
