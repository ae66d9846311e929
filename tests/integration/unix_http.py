"""A ``requests`` session that sends every request over a unix socket, whatever the URL's host.

schemathesis sends its requests through ``requests``; the control socket is not a TCP
address, so the connection pool is given connections that dial the socket instead.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection


class UnixAdapter(requests.adapters.HTTPAdapter):
    """Every request through one pool of connections to ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        connection = type("Connection", (_UnixConnection,), {"socket_path": path})
        self._pool = urllib3.HTTPConnectionPool("localhost", maxsize=2)
        self._pool.ConnectionCls = connection

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> urllib3.HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


class _UnixConnection(urllib3.connection.HTTPConnection):
    socket_path = ""

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        timeout = self.timeout
        sock.settimeout(timeout if isinstance(timeout, int | float) else None)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise urllib3.exceptions.NewConnectionError(self, f"{self.socket_path}: {exc}") from exc
        return sock


def unix_session(path: str) -> requests.Session:
    """A session whose ``http://localhost/...`` requests go to the socket at ``path``."""
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: the socket is the way
    session.mount("http://", UnixAdapter(path))
    return session
