"""The listening sockets of the control server: the unix socket, the optional TCP one and
the optional metrics one.

``bind_listeners`` binds them all before anything else starts, so that a socket or an address
that cannot be used is a one-line start-up error (``ListenerError``), known before the
state dir is opened and its jobs recovered.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from pathlib import Path

from aiobatch.config import ServerConfig, default_socket_path
from aiobatch.errors import StartupError

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


class ListenerError(StartupError):
    """A socket or address that the service cannot listen on."""


class SocketInUse(ListenerError):
    """Something (another service, most likely) already answers on the control socket."""


def listen_backlog() -> int:
    """The system's limit of pending connections (a burst of connects waits, not refused)."""
    try:
        return max(1, int(SOMAXCONN.read_text()))
    except (OSError, ValueError):
        return socket.SOMAXCONN


class Listeners:
    """Bound and listening sockets, before anyone serves them. ``close`` is idempotent and
    removes the socket file, unless another service has replaced it meanwhile."""

    def __init__(
        self,
        unix: socket.socket | None = None,
        tcp: socket.socket | None = None,
        socket_path: Path | None = None,
        metrics: socket.socket | None = None,
    ) -> None:
        self.unix = unix
        self.tcp = tcp
        self.metrics = metrics  # GET /metrics without a token (``server.metrics``)
        self.socket_path = socket_path
        self.http_url: str | None = None
        self.metrics_url = _url(metrics) if metrics is not None else None
        self._socket_file: tuple[int, int] | None = None
        if unix is not None and socket_path is not None:
            found = socket_path.lstat()
            self._socket_file = (found.st_dev, found.st_ino)
        if tcp is not None:
            self.http_url = _url(tcp)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        if self.unix is not None:
            self.unix.close()
            self.unix = None
            self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        ours, self._socket_file = self._socket_file, None
        if ours is None or self.socket_path is None:
            return
        try:
            now = self.socket_path.lstat()
        except FileNotFoundError:
            return
        if (now.st_dev, now.st_ino) == ours:
            self.socket_path.unlink(missing_ok=True)


def bind_listeners(
    config: ServerConfig, *, socket: Path | None = None, unix: bool = True
) -> Listeners:
    """The control socket (``socket``, else the config's, else the default; none if not
    ``unix``), the TCP listener of ``config.http`` and the metrics listener of
    ``config.metrics`` if any, all listening.

    Raises ListenerError (SocketInUse among them) with a one-line message."""
    unix_sock = socket_path = tcp = None
    if unix:
        socket_path = Path(socket or config.socket or default_socket_path())
        unix_sock = _bind_unix(socket_path, config.socket_permissions(), config.socket_gid())
    try:
        tcp = _bind_tcp(config.http) if config.http is not None else None
        metrics = _bind_metrics(config.metrics) if config.metrics is not None else None
        return Listeners(unix_sock, tcp, socket_path, metrics)
    except BaseException:
        Listeners(unix_sock, tcp, socket_path).close()
        raise


def _bind_metrics(address: str) -> socket.socket:
    """As ``_bind_tcp``, its errors prefixed with the key: two addresses may be in play."""
    try:
        return _bind_tcp(address)
    except ListenerError as exc:
        raise ListenerError(f"$.server.metrics: {exc}") from None


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _bind_unix(path: Path, mode: int, gid: int | None) -> socket.socket:
    try:
        return bind_unix_socket(path, mode=mode, gid=gid)
    except ListenerError:
        raise
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno is None and "too long" in str(exc):  # AF_UNIX: 107 bytes at most
            why = "the path is too long for a unix socket"
        raise ListenerError(f"socket {path}: {why}; choose another --socket") from None


def _bind_tcp(address: str) -> socket.socket:
    host, port = parse_address(address)
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except socket.gaierror as exc:
        raise ListenerError(
            f"address {address}: host {host!r} does not resolve ({exc.strerror}); "
            "give an address or a host name of this machine"
        ) from None
    family, _, _, _, sockaddr = found[0]
    try:
        return socket.create_server(sockaddr, family=family, backlog=listen_backlog())
    except OSError as exc:
        raise ListenerError(f"address {address} {_bind_problem(exc)}") from None


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port in 0..65535 (0: any)."""
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not (port.isascii() and port.isdigit()):
        raise ListenerError(f"address {address!r} is not HOST:PORT; give HOST:PORT")
    if not 0 <= int(port) <= 65535:
        raise ListenerError(
            f"address {address}: port {int(port)} is not in 0..65535 (0: any free port); "
            "choose a port in that range"
        )
    return host, int(port)


def _bind_problem(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "is in use by another program; stop it or choose another port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "is not an address of this machine; choose one of its addresses "
            "(127.0.0.1: this machine only)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            "cannot be bound: permission denied (ports below 1024 need "
            "CAP_NET_BIND_SERVICE); choose a port above 1023"
        )
    return f"cannot be bound: {exc.strerror or exc}; choose another address"


def bind_unix_socket(path: Path, *, mode: int = 0o600, gid: int | None = None) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` and group ``gid`` (``socket_mode``,
    ``socket_group``) from the moment the path exists.

    It is bound in a fresh private (0700) directory next to ``path``, given its group and
    mode there (so it is never reachable with others), then renamed into place, which also
    replaces a stale socket atomically. (A umask would do it too, but the umask is
    process-wide: a directory another thread makes meanwhile would get it.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_if_live(path)
    private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        if gid is not None:
            try:
                os.chown(staged, -1, gid)
            except PermissionError:
                raise ListenerError(
                    f"socket {path}: cannot be given group {gid} (socket_group): the service "
                    "must be root or a member of that group"
                ) from None
        staged.chmod(mode)
        sock.listen(listen_backlog())
        staged.rename(path)
    except BaseException:
        sock.close()
        staged.unlink(missing_ok=True)
        raise
    finally:
        private.rmdir()
    return sock


def refuse_if_live(path: Path) -> None:
    """Raise SocketInUse if something answers at ``path``; a stale socket file is fine."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(
            f"{path} exists and is not a socket; remove it or choose another --socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return  # left behind by a service that is gone: replaced
        except OSError as exc:
            raise SocketInUse(
                f"cannot tell whether {path} is in use ({exc.strerror}); choose another --socket"
            ) from None
    raise SocketInUse(
        f"another aiobatch service already listens on {path}; stop it or choose another --socket"
    )


def bind_tcp_socket(address: str) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any).

    Raises ListenerError with a one-line message."""
    return _bind_tcp(address)
