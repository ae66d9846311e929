"""The listening sockets of the control server: the unix socket and the optional TCP one.

Bound before anything else starts, so that an address in use is known before jobs are
recovered.
"""

from __future__ import annotations

import socket
import stat
import tempfile
from pathlib import Path

from aiobatch.errors import AiobatchError

BACKLOG = 128


class SocketInUse(AiobatchError, RuntimeError):
    """Something (another service, most likely) already answers on the control socket."""


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` that is mode 0600 from the moment the path exists.

    It is bound in a fresh private (0700) directory next to ``path``, narrowed to 0600, then
    renamed into place, which also replaces a stale socket atomically. (A umask would do it
    too, but the umask is process-wide: a directory another thread makes meanwhile would
    get 0600.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_if_live(path)
    private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        staged.chmod(0o600)
        sock.listen(BACKLOG)
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
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return  # left behind by a service that is gone: replaced
        except OSError as exc:
            raise SocketInUse(f"cannot tell whether {path} is in use: {exc.strerror}") from None
    raise SocketInUse(f"another aiobatch service already listens on {path}")


def bind_tcp_socket(address: str) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0: any)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, int(port)), family=family, backlog=BACKLOG)
