"""Checks of single values of a spec or config, each adding ``$.field.path: problem`` to a list.

The types are checked first (``spec_convert``); these check what types cannot say: strings
that exec, the environment, file names, storage and terminals can take, numbers that fit
where they are stored and used.
"""

from __future__ import annotations

import math
import posixpath
import string
from collections.abc import Mapping
from typing import Any

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
    MAX_WORKDIR_CHARS,
    MIN_CPUS,
)

# Imported from here by the spec, the config and others, since before spec_convert was.
from aiobatch.spec_convert import CONTROL as CONTROL
from aiobatch.spec_convert import capped as capped
from aiobatch.spec_convert import convert_at as convert_at
from aiobatch.spec_convert import convert_fields as convert_fields
from aiobatch.spec_convert import convert_struct as convert_struct
from aiobatch.spec_convert import key_path as key_path
from aiobatch.spec_convert import msgspec_error as msgspec_error
from aiobatch.spec_convert import printable as printable
from aiobatch.spec_retries import check_policy
from aiobatch.spec_types import RESERVED_ENV_PREFIX, TaskFields
from aiobatch.units import parse_duration, parse_size, shown

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
        if cpus is not None and not (math.isfinite(cpus) and MIN_CPUS <= cpus <= MAX_CPUS):
            errors.append(
                f"{where}.resources.cpus: must be from {MIN_CPUS:g} to {MAX_CPUS:g}, got {cpus!r}"
            )
        if memory is not None:
            try:
                parse_size(memory)
            except ValueError as exc:
                errors.append(f"{where}.resources.memory: {exc}")
    if isinstance(fields.workdir, str) and not _is_mount_path(fields.workdir):
        errors.append(
            f"{where}.workdir: must be an absolute path of at most {MAX_WORKDIR_CHARS} "
            f"characters, without ':' or ',' (it is a bind mount's target), got "
            f"{printable(repr(fields.workdir[:MAX_WORKDIR_CHARS]))}"
        )
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


def _is_mount_path(path: str) -> bool:
    """An absolute path a bind mount may take as its target: the engine splits the bind
    string at ':' (``/a:ro`` would mount read-only at ``/a``)."""
    return (
        path.startswith("/")
        and len(path) <= MAX_WORKDIR_CHARS
        and path.isprintable()
        and not any(c in path for c in ":,")
    )
