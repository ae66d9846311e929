"""Checks of single values of a spec or config, each adding ``$.field.path: problem`` to a list.

Types first (msgspec, field by field so that every field's problem is reported), then what
types cannot say: strings that exec, the environment, file names, storage and terminals can
take, numbers that fit where they are stored and used.
"""

from __future__ import annotations

import math
import posixpath
import re
import string
from collections.abc import Mapping
from typing import Any, TypeVar, get_args

import msgspec
from msgspec import UNSET, UnsetType

from aiobatch.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_ARG_STRLEN,
    MAX_CPUS,
    MAX_JOB_NAME_CHARS,
    MAX_SECRET_BYTES,
    MAX_SECRET_PATH_BYTES,
    MAX_SECRETS,
)
from aiobatch.spec_retries import check_policy
from aiobatch.spec_types import (
    RESERVED_ENV_PREFIX,
    OnFailure,
    OutputWhen,
    PullPolicy,
    RetryReason,
    TaskFields,
    When,
)
from aiobatch.units import parse_duration, parse_size, shown

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


# -- types -------------------------------------------------------------------------------------


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


# -- strings -----------------------------------------------------------------------------------


def check_strings(data: Any, prefix: str, errors: list[str]) -> None:
    """Every string of a parsed document (keys too) must be text that exec, the environment,
    file names and SQLite can take: no NUL byte, no lone surrogate (not UTF-8)."""
    stack: list[tuple[str, Any]] = [(prefix, data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            _check_text(value, where, errors)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and _check_text(key, where, errors, is_key=True):
                    continue  # its value's path would quote the bad key again
                stack.append((key_path(where, key), item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))


def _check_text(value: str, where: str, errors: list[str], *, is_key: bool = False) -> bool:
    what = f"key {shown(value)}" if is_key else "string"
    if "\0" in value:
        errors.append(f"{where}: {what} contains a NUL byte")
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        errors.append(f"{where}: {what} is not valid Unicode (a lone surrogate)")
        return True
    return False


def check_job_name(name: str, errors: list[str]) -> None:
    if not name.strip():
        errors.append("$.name: must not be empty")
    if len(name) > MAX_JOB_NAME_CHARS:
        errors.append(f"$.name: at most {MAX_JOB_NAME_CHARS} characters, got {len(name)}")
    found = CONTROL.search(name)
    if found is not None:
        errors.append(
            f"$.name: control character {found.group()!r} not allowed "
            "(C0, DEL and C1 controls act on the terminal that prints the name)"
        )


def exec_size(text: str) -> int:
    """What a string takes of ARG_MAX: its bytes, its NUL, its pointer."""
    return len(text.encode(errors="surrogatepass")) + 1 + 8


def check_arg(text: str, where: str, errors: list[str]) -> None:
    size = len(text.encode(errors="surrogatepass")) + 1  # a lone surrogate is refused apart
    if size > MAX_ARG_STRLEN:
        errors.append(
            f"{where}: {size} bytes; the system takes at most {MAX_ARG_STRLEN} "
            "(MAX_ARG_STRLEN) per argument or environment entry"
        )


def check_job_timeout(timeout: str | float | UnsetType, errors: list[str]) -> float | None:
    """The job's deadline in seconds (None: no deadline), bounded as a task's timeout is."""
    if timeout is UNSET:
        return None
    try:
        return parse_duration(timeout)
    except ValueError as exc:
        errors.append(f"$.timeout: {exc}")
        return None


def check_env(env: Mapping[str, Any], where: str, errors: list[str]) -> None:
    for key, value in env.items():
        path = key_path(where, key)
        if not key:
            errors.append(f"{where}: an environment variable needs a name (got an empty key)")
            continue
        if "=" in key:
            errors.append(f"{path}: {shown(key)} is not a variable name: it contains '='")
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT64_MIN <= value <= INT64_MAX:
                errors.append(f"{path}: integer beyond 64 bits: quote it to pass it as text")
                continue
        check_arg(f"{key}={env_str(value)}", path, errors)


def check_secrets(secrets: Mapping[str, str], where: str, errors: list[str]) -> None:
    """Names as environment variables take them; sources ``file:/abs/path`` or ``env:VAR``."""
    if len(secrets) > MAX_SECRETS:
        errors.append(f"{where}: at most {MAX_SECRETS} secrets, got {len(secrets)}")
        return
    for name, source in secrets.items():
        path = key_path(where, name)
        if not name:
            errors.append(f"{where}: a secret needs a variable name (got an empty key)")
            continue
        if "=" in name:
            errors.append(f"{path}: {shown(name)} is not a variable name: it contains '='")
            continue
        if name.startswith(RESERVED_ENV_PREFIX):
            errors.append(f"{path}: names starting with {RESERVED_ENV_PREFIX} are the runtime's")
            continue
        # The name with the largest value it may get must fit one environment entry.
        size = len(name.encode(errors="surrogatepass")) + 2 + MAX_SECRET_BYTES
        if size > MAX_ARG_STRLEN:
            errors.append(
                f"{path}: name too long: with a value of {MAX_SECRET_BYTES} bytes (the most a "
                f"secret holds) it would take {size} bytes of the {MAX_ARG_STRLEN} "
                "(MAX_ARG_STRLEN) an environment entry may"
            )
            continue
        check_secret_source(source, path, errors)


def check_secret_source(source: str, where: str, errors: list[str]) -> None:
    """A refused source is not quoted: a value written where its source belongs would be
    the secret itself."""
    scheme, _, rest = source.partition(":")
    if scheme == "file":
        if not rest.startswith("/"):
            errors.append(f"{where}: a file: source needs an absolute path (file:/abs/path)")
        elif len(rest.encode(errors="surrogatepass")) > MAX_SECRET_PATH_BYTES:
            errors.append(f"{where}: path longer than {MAX_SECRET_PATH_BYTES} bytes (PATH_MAX)")
    elif scheme == "env":
        if not rest or "=" in rest:
            errors.append(f"{where}: an env: source needs a variable name, without '='")
        elif len(rest) > MAX_ARG_STRLEN:
            errors.append(f"{where}: variable name longer than {MAX_ARG_STRLEN} (MAX_ARG_STRLEN)")
    else:
        errors.append(
            f"{where}: not a secret source (not shown: it may be the secret itself); a source "
            "is file:/abs/path (read when an attempt starts) or env:VAR (the runtime's "
            "environment)"
        )


def env_str(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return ""  # refused by check_env; str() of a huge int would raise
    return str(value)


def env_size(env: Mapping[str, Any]) -> int:
    return sum(exec_size(f"{key}={env_str(value)}") for key, value in env.items())


def check_int(value: int, where: str, low: int, high: int, errors: list[str], why: str) -> bool:
    if low <= value <= high:
        return True
    errors.append(f"{where}: must be between {low} and {high} ({why}), got {shown(value)}")
    return False


# -- placeholders, URIs, paths -----------------------------------------------------------------

PLACEHOLDERS = frozenset({"job_id", "job", "task", "index", "attempt"})


def check_placeholders(value: str, where: str, errors: list[str]) -> None:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        errors.append(f"{where}: bad placeholder syntax in {shown(value)}: {exc}")
        return
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in PLACEHOLDERS:
            known = " ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            errors.append(f"{where}: unknown placeholder {{{field_name}}} (known: {known})")
        elif spec or conversion:
            errors.append(f"{where}: placeholder {{{field_name}}} takes no format or conversion")


def check_uri(value: str, where: str, errors: list[str]) -> None:
    check_placeholders(value, where, errors)
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not bucket:
            errors.append(f"{where}: URI {shown(value)} names no bucket (s3://bucket/key)")
    elif value.startswith("file://"):
        if not value[7:].startswith("/"):
            errors.append(f"{where}: URI {shown(value)} must be absolute (file:///abs/path)")
    else:
        errors.append(f"{where}: URI {shown(value)} must start with s3:// or file://")


def check_relative_path(value: str, where: str, errors: list[str]) -> None:
    check_placeholders(value, where, errors)
    if not value or value.startswith("/"):
        errors.append(f"{where}: path {shown(value)} must be relative to the instance work dir")
        return
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        errors.append(f"{where}: path {shown(value)} escapes the instance work dir")


# -- a task's or template's own fields ---------------------------------------------------------


def check_fields(fields: TaskFields, where: str, errors: list[str]) -> None:
    """What a task or template sets itself, checked on its own (types are checked already)."""
    for name in ("instances", "max_parallel"):
        count = getattr(fields, name)
        if count is not UNSET and count < 1:
            errors.append(f"{where}.{name}: must be at least 1, got {count}")
    command = fields.command
    if isinstance(command, tuple):
        if not command:
            errors.append(f"{where}.command: an argv list must not be empty")
        for k, arg in enumerate(command):
            check_arg(arg, f"{where}.command[{k}]", errors)
    elif isinstance(command, str):
        if not command.strip():
            errors.append(f"{where}.command: must not be empty")
        check_arg(command, f"{where}.command", errors)
    if fields.env is not UNSET:
        check_env(fields.env, f"{where}.env", errors)
    if fields.secrets is not UNSET:
        check_secrets(fields.secrets, f"{where}.secrets", errors)
    if fields.timeout is not UNSET:
        try:
            parse_duration(fields.timeout)
        except ValueError as exc:
            errors.append(f"{where}.timeout: {exc}")
    if fields.retries is not UNSET:
        check_policy(fields.retries, where, errors)
    if fields.resources is not UNSET:
        cpus, memory = fields.resources.cpus, fields.resources.memory
        if cpus is not None and not (math.isfinite(cpus) and 0 < cpus <= MAX_CPUS):
            errors.append(
                f"{where}.resources.cpus: must be more than 0 and at most {MAX_CPUS:g}, "
                f"got {cpus!r}"
            )
        if memory is not None:
            try:
                parse_size(memory)
            except ValueError as exc:
                errors.append(f"{where}.resources.memory: {exc}")
    for k, mapping in enumerate(fields.inputs or ()):
        check_uri(mapping.from_, f"{where}.inputs[{k}].from", errors)
        check_relative_path(mapping.path, f"{where}.inputs[{k}].path", errors)
    for k, out in enumerate(fields.outputs or ()):
        check_relative_path(out.path, f"{where}.outputs[{k}].path", errors)
        check_uri(out.to, f"{where}.outputs[{k}].to", errors)
    for stream in ("stdout", "stderr"):
        uri = getattr(fields, stream)
        if uri is not UNSET:
            check_uri(uri, f"{where}.{stream}", errors)
