"""The ``[server]`` table of the config: the control socket, who may use it and with which
scope (peers by uid and gid, named tokens read from a file or the environment), the TCP
listener, the metrics listener. Checked at load (``server_problems``), with the field paths
of its keys."""

from __future__ import annotations

import grp
import os
from pathlib import Path
from typing import Literal

from msgspec import Struct

from aiobatch.documents import DocumentError, read_bounded
from aiobatch.errors import ConfigError
from aiobatch.limits import UID_MAX, UID_MIN, Uid
from aiobatch.spec_checks import key_path
from aiobatch.units import shown

Scope = Literal["read", "operate", "admin"]  # as wire.Scope (config sits below wire)


class TokenConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[server.tokens.NAME]``: a bearer token of the TCP listener and its scope, read from a
    file or from the service's environment (the config holds no secret)."""

    scope: Scope
    token_file: str | None = None
    token_env: str | None = None


class ServerConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``aiobatch serve``: the control socket, the optional TCP listener and the optional
    metrics listener."""

    socket: str | None = None  # None: $AIOBATCH_SOCKET, $XDG_RUNTIME_DIR/aiobatch.sock, /run/...
    # Peers of the socket (SO_PEERCRED) besides the service's own uid (admin): a list of uids
    # (admin each, as before), or a table of uid = scope; gids (the peer's primary group or
    # any of its supplementary ones, by number or name) = scope.
    allowed_uids: tuple[Uid, ...] | dict[str, Scope] = ()  # keys: uids, checked at load
    allowed_gids: dict[str, Scope] = {}
    socket_group: str | int | None = None  # the socket's group (a name or a gid)
    socket_mode: str | int = 0o600  # "0660" or 0o660: the socket file's permission bits
    http: str | None = None  # "HOST:PORT" for a TCP listener; absent: none
    token: str | None = None  # an admin bearer token written in the config (kept for old ones)
    tokens: dict[str, TokenConfig] = {}
    # "HOST:PORT": GET /metrics without a token, nothing else (scrapers on a private network)
    metrics: str | None = None

    def uid_scopes(self) -> dict[int, Scope]:
        if isinstance(self.allowed_uids, dict):
            return {int(uid): scope for uid, scope in self.allowed_uids.items()}
        return dict.fromkeys(self.allowed_uids, "admin")

    def gid_scopes(self) -> dict[int, Scope]:
        """``allowed_gids`` by number (names resolved; checked at load)."""
        return {resolve_group(group): scope for group, scope in self.allowed_gids.items()}

    def socket_gid(self) -> int | None:
        return None if self.socket_group is None else resolve_group(self.socket_group)

    def socket_permissions(self) -> int:
        return parse_mode(self.socket_mode)

    def bearer_tokens(self) -> dict[str, tuple[str, Scope]]:
        """Token value → (name, scope), read now. Raises ConfigError (``$.server.tokens``)."""
        found: dict[str, tuple[str, Scope]] = {}
        if self.token:
            found[self.token] = ("token", "admin")
        problems: list[str] = []
        for name, entry in self.tokens.items():
            where = key_path("$.server.tokens", name)
            try:
                value = read_token(entry)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if value in found:
                problems.append(f"{where}: the same token as {found[value][0]}")
            found[value] = (name, entry.scope)
        if problems:
            raise ConfigError("\n".join(problems))
        return found


MIN_TOKEN_CHARS, MAX_TOKEN_BYTES = 16, 4096
METRICS_PORT_MIN, METRICS_PORT_MAX = 1, 65535  # a scraper needs a fixed port: 0 is none
TOKEN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def read_token(entry: TokenConfig) -> str:
    """The token of an entry, from its file or the environment; ValueError says why not
    (never quoting what it read)."""
    if (entry.token_file is None) == (entry.token_env is None):
        raise ValueError("give exactly one of token_file and token_env")
    if entry.token_file is not None:
        try:
            data = read_bounded(Path(entry.token_file), MAX_TOKEN_BYTES, "token file")
        except DocumentError as exc:
            raise ValueError(f"token_file: {exc}") from None
        text, source = data.decode("utf-8", "replace").rstrip("\r\n"), "token_file"
    else:
        assert entry.token_env is not None
        value = os.environ.get(entry.token_env)
        if value is None:
            raise ValueError(f"token_env: ${entry.token_env} is not set")
        text, source = value, "token_env"
    if len(text) < MIN_TOKEN_CHARS or not all("!" <= c <= "~" for c in text):
        raise ValueError(
            f"{source}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII "
            "characters without spaces"
        )
    return text


def resolve_group(group: str | int) -> int:
    """A group name or number as a gid; KeyError (its message says why) if there is none."""
    if isinstance(group, int):
        return group
    if group.isascii() and group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise KeyError(f"no group named {shown(group)}") from None


def parse_mode(mode: str | int) -> int:
    """``"0660"`` (octal digits) or an integer, within 0..0o777; ValueError otherwise."""
    if isinstance(mode, str):
        if not (mode.isascii() and mode and len(mode) <= 4 and set(mode) <= set("01234567")):
            raise ValueError(f'{shown(mode)} is not an octal mode such as "0660"')
        mode = int(mode, 8)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{oct(mode)} is not a mode between 0 and 0o777")
    return mode


def server_problems(server: ServerConfig) -> list[str]:
    """Tokens (their names, sources, values), peer groups, the socket's group and mode."""
    problems: list[str] = []
    for name in server.tokens:
        if not name or not set(name) <= TOKEN_NAME_CHARS or len(name) > 64:
            where = key_path("$.server.tokens", name)
            problems.append(f"{where}: a name is 1 to 64 of A-Z a-z 0-9 _ . -")
    if server.token is not None and not server.token:
        problems.append("$.server.token: empty")
    try:
        server.bearer_tokens()
    except ConfigError as exc:
        problems += str(exc).splitlines()
    uids = server.allowed_uids if isinstance(server.allowed_uids, dict) else {}
    for uid in uids:
        if not (uid.isascii() and uid.isdigit() and UID_MIN <= int(uid) <= UID_MAX):
            where = key_path("$.server.allowed_uids", uid)
            problems.append(f"{where}: not a uid (a number from {UID_MIN} to {UID_MAX})")
    for group in server.allowed_gids:
        try:
            gid = resolve_group(group)
        except KeyError as exc:
            problems.append(f"{key_path('$.server.allowed_gids', group)}: {exc.args[0]}")
            continue
        if not UID_MIN <= gid <= UID_MAX:
            where = key_path("$.server.allowed_gids", group)
            problems.append(f"{where}: gid {gid} is not between {UID_MIN} and {UID_MAX}")
    if server.socket_group is not None:
        try:
            socket_gid = server.socket_gid()
        except KeyError as exc:
            problems.append(f"$.server.socket_group: {exc.args[0]}")
        else:
            if socket_gid is not None and not UID_MIN <= socket_gid <= UID_MAX:
                problems.append(
                    f"$.server.socket_group: gid {socket_gid} is not between "
                    f"{UID_MIN} and {UID_MAX}"
                )
    try:
        parse_mode(server.socket_mode)
    except ValueError as exc:
        problems.append(f"$.server.socket_mode: {exc}")
    if server.metrics is not None:
        problems += metrics_problems(server.metrics, server.http)
    return problems


def metrics_problems(metrics: str, http: str | None) -> list[str]:
    """``server.metrics``: HOST:PORT (``[::1]:PORT`` for IPv6), a fixed port, not the
    address of ``server.http`` (that one wants a token; this one serves without)."""
    address = split_address(metrics)
    if address is None:
        return [f"$.server.metrics: {shown(metrics)} is not HOST:PORT (e.g. 127.0.0.1:9180)"]
    host, port = address
    if len(port) > len(str(METRICS_PORT_MAX)) or not (
        METRICS_PORT_MIN <= int(port) <= METRICS_PORT_MAX
    ):
        told = port if len(port) <= 12 else shown(port)  # digits only: quoted if very long
        return [
            f"$.server.metrics: port {told} is not between {METRICS_PORT_MIN} and "
            f"{METRICS_PORT_MAX} (a scraper needs a fixed port)"
        ]
    other = split_address(http) if http is not None else None
    if other is not None and other[0] == host and other[1].lstrip("0") == port.lstrip("0"):
        where = f"$.server.metrics: {shown(metrics)}"
        return [f"{where} is the address of $.server.http; give it another port"]
    return []


def split_address(address: str) -> tuple[str, str] | None:
    """``HOST:PORT`` as a host (lower case, without IPv6 brackets) and the port's ASCII
    digits; None if it is not of that form."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        return None
    return host.lower(), port
