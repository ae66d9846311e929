"""Log-view links: capabilities for one job, signed by the service.

A link's credential names a job, the ``read`` scope and an expiry, and is signed (HMAC-SHA256)
with a key kept in the state dir (``logview.key``, mode 0600, made on first start). It holds
no token of the service: whoever is sent a link can see that job's page, and nothing else,
until it expires. A new key (``rotate``, or the file removed before a start) revokes every
link made with the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import stat
import time
from pathlib import Path
from typing import Literal

import msgspec

from aiobatch.errors import StartupError

KEY_FILE = "logview.key"
# A link lives 0 < hours <= MAX_LINK_HOURS (a year); DEFAULT_LINK_HOURS if not said.
MAX_LINK_HOURS = 8760
DEFAULT_LINK_HOURS = 24
LINK_SCOPE: Literal["read"] = "read"  # a link's, always
KEY_BYTES = 32
MAX_LINK_BYTES = 4096  # a credential longer than this is not one of ours: not even decoded
_VERSION = "l1"


class LinkClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job: str
    scope: Literal["read"]
    exp: int  # Unix time, seconds


class LinkExpired(Exception):
    """A link that was valid, signed by the current key, whose hours are over."""


def check_hours(hours: object, where: str = "hours") -> float:
    """``hours`` as a finite number in (0, MAX_LINK_HOURS], else ValueError naming the bound."""
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        raise ValueError(f"{where}: expected a number of hours, got {type(hours).__name__}")
    if not (math.isfinite(hours) and 0 < hours <= MAX_LINK_HOURS):
        raise ValueError(
            f"{where}: {hours!r} is not a number of hours above 0 and at most {MAX_LINK_HOURS}"
        )
    return float(hours)


class LinkKeys:
    """The signing key of a state dir: ``open`` reads it, or makes it on first start."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / KEY_FILE
        self._key = b""

    def open(self) -> None:
        """Read the key, or make one. Raises StartupError for a file that is not a private
        regular file holding a key (it is never replaced silently: links would break)."""
        try:
            self._key = self._read()
        except FileNotFoundError:
            self._key = self._create()
        except OSError as exc:
            raise StartupError(f"{self.path}: cannot be read ({exc.strerror})") from None

    def rotate(self) -> None:
        """A new key, written beside and renamed into place: every link made so far is void."""
        staged = self.path.with_name(f".{KEY_FILE}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        key = self._write(staged)
        staged.rename(self.path)
        self._key = key

    def _read(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077:
                raise StartupError(
                    f"{self.path}: not a regular file of mode 0600; remove it (every "
                    "log-view link made so far stops working) and start again"
                )
            text = file.read(4 * KEY_BYTES).strip()
        try:
            key = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise StartupError(
                f"{self.path}: does not hold a key of {KEY_BYTES} bytes in hex; remove it "
                "and start again"
            )
        return key

    def _create(self) -> bytes:
        try:
            return self._write(self.path)
        except FileExistsError:  # another start made it meanwhile
            return self._read()
        except OSError as exc:
            raise StartupError(f"{self.path}: cannot be made ({exc.strerror})") from None

    @staticmethod
    def _write(path: Path) -> bytes:
        key = os.urandom(KEY_BYTES)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        return key

    # -- credentials ---------------------------------------------------------------------------

    def issue(self, job_id: str, hours: float, *, now: float | None = None) -> str:
        """A credential for ``job_id``, read-only, valid for ``hours`` (checked by the caller)."""
        assert self._key, "not opened"
        expires = math.ceil((time.time() if now is None else now) + hours * 3600)
        claims = LinkClaims(job=job_id, scope=LINK_SCOPE, exp=expires)
        payload = _b64(msgspec.json.encode(claims))
        return f"{_VERSION}.{payload}.{self._sign(payload)}"

    def verify(self, credential: str, *, now: float | None = None) -> LinkClaims | None:
        """The claims of a credential signed with this key; None if it is not one (forged,
        altered, malformed, or signed with a key rotated away). Raises LinkExpired."""
        if not self._key or len(credential) > MAX_LINK_BYTES or not credential.isascii():
            return None  # ours are base64url; a header's other bytes come as surrogates
        version, _, rest = credential.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not hmac.compare_digest(
            signature.encode("ascii", "replace"), self._sign(payload).encode()
        ):
            return None
        try:
            claims = msgspec.json.decode(_unb64(payload), type=LinkClaims)
        except (msgspec.DecodeError, ValueError):
            return None
        if claims.exp <= (time.time() if now is None else now):
            raise LinkExpired(claims.job)
        return claims

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
