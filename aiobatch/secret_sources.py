"""Reading a task's secrets when an attempt starts: ``file:/abs/path`` or ``env:VAR``.

The spec stores only where each value is (its source); the value is read here, at each
start, and goes into the environment given to the executor and nowhere else. A source that
cannot be read fails the attempt with ``secret_unavailable: NAME``; no message built here
holds a value or a byte of a file (a decoding error would quote one). Blocking reads: call
``read_secrets`` off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from aiobatch.documents import DocumentError, read_bounded
from aiobatch.limits import MAX_SECRET_BYTES
from aiobatch.spec_types import RESERVED_ENV_PREFIX


class SecretUnavailable(Exception):
    """A secret could not be read; ``reason`` names it and why, never its value."""

    def __init__(self, name: str, why: str) -> None:
        self.name, self.why = name, why
        super().__init__(f"{name}: {why}")


def read_secrets(
    job_secrets: Mapping[str, str],
    task_secrets: Mapping[str, str],
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The values of the job's and the task's secrets (the task's win), read now."""
    values = {}
    for name, source in {**job_secrets, **task_secrets}.items():
        if name.startswith(RESERVED_ENV_PREFIX):  # a JobDef made in Python is not checked
            raise SecretUnavailable(name, f"names starting with {RESERVED_ENV_PREFIX} are reserved")
        values[name] = read_secret(name, source, environ)
    return values


def read_secret(name: str, source: str, environ: Mapping[str, str] = os.environ) -> str:
    scheme, _, rest = source.partition(":")
    if scheme == "env":
        value = environ.get(rest)
        if value is None:
            raise SecretUnavailable(name, f"{source}: not set in the runtime's environment")
        if len(value.encode(errors="surrogateescape")) > MAX_SECRET_BYTES:
            raise SecretUnavailable(name, f"{source}: longer than {MAX_SECRET_BYTES} bytes")
        try:
            value.encode()
        except UnicodeEncodeError:  # os.environ keeps bytes that are not UTF-8 as surrogates
            raise SecretUnavailable(name, f"{source}: not UTF-8 text") from None
        return value
    if scheme == "file" and rest.startswith("/"):
        try:
            data = read_bounded(Path(rest), MAX_SECRET_BYTES, "secret")
        except DocumentError as exc:  # names the path and why: nothing of the content
            raise SecretUnavailable(name, f"file {exc}") from None
        if b"\0" in data:
            raise SecretUnavailable(name, f"{source}: holds a NUL byte, which no variable can")
        try:
            text = data.decode()
        except UnicodeDecodeError:  # its message would quote a byte of the file
            raise SecretUnavailable(name, f"{source}: not UTF-8 text") from None
        # As the shell's $(cat FILE): a file written by `echo` or an editor ends in a newline
        # that is no part of the password.
        return text.rstrip("\r\n")
    raise SecretUnavailable(name, "not a secret source (file:/abs/path or env:VAR)")
