"""Who may talk to the server: the unix socket's peer uid, or the TCP listener's bearer token
(a browser: the token's cookie, whose POSTs also echo the CSRF cookie in a header).

Checked from the request line and headers alone, before any body is read.
"""

from __future__ import annotations

import hmac
import os
import socket
import struct
from collections.abc import Iterable
from http import HTTPStatus

from aiohttp import web

from aiobatch.server.responses import RequestError

# Cookie names end in the listener's port: every port of a host shares cookies, and a
# one-off `run --ui` page must not replace the service's.
TOKEN_COOKIE, CSRF_COOKIE, CSRF_HEADER = "aiobatch_session_", "aiobatch_csrf_", "X-Aiobatch-CSRF"
PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(request: web.BaseRequest) -> int | None:
    """The uid of the process at the other end of a unix connection; None for TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    _pid, uid, _gid = PEERCRED.unpack(creds)
    return int(uid)


class Auth:
    def __init__(self, token: str | None, allowed_uids: Iterable[int]) -> None:
        self.allowed_uids = {os.getuid(), *allowed_uids}
        self._token = (token or "").encode()
        # Cookies hold values derived from the token, never the token itself (a server on
        # another port of the host gets the cookies too); derived, they survive a restart.
        self._session = _derive(self._token, b"aiobatch session")
        self._csrf = _derive(self._token, b"aiobatch csrf")  # echoed in CSRF_HEADER by POSTs
        self.port = ""  # of the TCP listener, once bound

    def check(self, request: web.Request) -> web.StreamResponse | None:
        """None if the request may go on; a response (a sign-in redirect) to send instead;
        RequestError (401, 403) if it is refused."""
        uid = peer_uid(request)  # None over TCP
        if uid is not None:
            if uid not in self.allowed_uids:
                raise RequestError(HTTPStatus.FORBIDDEN, f"peer uid {uid} may not use this socket")
            return None
        if self._token_ok(request.headers.get("Authorization", "")):
            return None
        given = request.query.get("token")
        if given is not None and request.method == "GET" and request.path.startswith("/ui"):
            # The address as printed, opened again by a browser that is signed in already:
            # sign in again (the token may be a new one) and drop it from the address.
            if self._matches(given, self._token):
                return self._signed_in(request)
        elif self._matches(request.cookies.get(TOKEN_COOKIE + self.port), self._session):
            if request.method != "GET" and not self._matches(
                request.headers.get(CSRF_HEADER), self._csrf
            ):
                raise RequestError(HTTPStatus.FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
            return None
        raise RequestError(
            HTTPStatus.UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
            {"WWW-Authenticate": 'Bearer realm="aiobatch"'},
        )

    def _token_ok(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and self._matches(given.strip(), self._token)

    @staticmethod
    def _matches(given: str | None, expected: bytes) -> bool:
        if not expected or given is None:
            return False
        # Header values arrive as latin-1 (or surrogates): never a reason to fail.
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)

    def _signed_in(self, request: web.Request) -> web.Response:
        """The token came in the address: keep it in cookies, and drop it from the address
        (so it does not stay in the history or leak in a Referer)."""
        query = {k: v for k, v in request.query.items() if k != "token"}
        location = str(request.rel_url.with_query(query))
        response = web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": location})
        session, csrf = self._session.decode(), self._csrf.decode()
        response.set_cookie(
            TOKEN_COOKIE + self.port, session, path="/", samesite="Strict", httponly=True
        )
        response.set_cookie(CSRF_COOKIE + self.port, csrf, path="/", samesite="Strict")
        return response


def _derive(token: bytes, purpose: bytes) -> bytes:
    return hmac.new(token, purpose, "sha256").hexdigest().encode() if token else b""
