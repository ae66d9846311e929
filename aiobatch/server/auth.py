"""Who is talking to the server, and with which scope: a ``Session``.

The unix socket: the peer's uid, primary gid and supplementary gids (``peers``), each mapped
to a scope by the config. The TCP listener: a named bearer token, or (a browser) the cookie
it signed in with (whose POSTs also echo the CSRF cookie in a header), or a log-view link
(``aiobatch.links``), which is the read scope on one job until it expires.

Checked from the request line and headers alone, before any body is read. What each scope may
do is ``wire.ROUTE_ACCESS``, applied by ``authorize``.
"""

from __future__ import annotations

import hmac
import os
import time
from http import HTTPStatus

import msgspec
from aiohttp import web

from aiobatch import wire
from aiobatch.config import ServerConfig
from aiobatch.links import LinkExpired, LinkKeys
from aiobatch.server.peers import peer_credentials
from aiobatch.server.responses import RequestError
from aiobatch.server.ui import expired_page

# Cookie names end in the listener's port: every port of a host shares cookies, and a
# one-off `run --ui` page must not replace the service's.
TOKEN_COOKIE, CSRF_COOKIE, CSRF_HEADER = "aiobatch_session_", "aiobatch_csrf_", "X-Aiobatch-CSRF"
LINK_COOKIE, LINK_PARAM = "aiobatch_link_", "link"


class Session(msgspec.Struct, frozen=True):
    scope: wire.Scope
    who: str  # for messages: "uid 1001", "token ci", "a log-view link"
    job: str | None = None  # a link's job: nothing else is shown
    expires: int | None = None


SESSION = web.RequestKey("session", Session)  # the request's, once authorized


class _Token(msgspec.Struct, frozen=True):
    name: str
    scope: wire.Scope
    value: bytes
    # Cookies hold values derived from the token, never the token itself (a server on
    # another port of the host gets the cookies too); derived, they survive a restart.
    session: bytes
    csrf: bytes  # echoed in CSRF_HEADER by POSTs


class Auth:
    def __init__(self, config: ServerConfig, links: LinkKeys | None = None) -> None:
        self.uid_scopes: dict[int, wire.Scope] = {**config.uid_scopes(), os.getuid(): "admin"}
        self.gid_scopes: dict[int, wire.Scope] = config.gid_scopes()
        self._tokens = [
            _Token(name, scope, value.encode(), *_derived(value.encode()))
            for value, (name, scope) in config.bearer_tokens().items()
        ]
        self.links = links
        self.port = ""  # of the TCP listener, once bound

    def check(self, request: web.Request) -> Session | web.StreamResponse:
        """The request's session; or a response to send instead (a sign-in redirect, the
        page of an expired link); RequestError (401, 403) if it is refused."""
        peer = peer_credentials(request, groups=bool(self.gid_scopes))  # None over TCP
        if peer is not None:
            uid, gids = peer
            scopes = [self.uid_scopes.get(uid), *(self.gid_scopes.get(gid) for gid in gids)]
            held = [scope for scope in scopes if scope is not None]
            if not held:
                raise RequestError(HTTPStatus.FORBIDDEN, f"peer uid {uid} may not use this socket")
            return Session(max(held, key=wire.SCOPES.index), f"uid {uid}")
        token = self._bearer(request.headers.get("Authorization", ""))
        if token is not None:
            return Session(token.scope, f"token {token.name}")
        signing_in = request.method == "GET" and request.path.startswith("/ui")
        if signing_in and LINK_PARAM in request.query:
            return self._link_signed_in(request, request.query[LINK_PARAM])
        given = request.query.get("token")
        if signing_in and given is not None:
            # An address with a token, typed by its owner: keep it in cookies, drop it from
            # the address. (The addresses aiobatch prints are links, never a token.)
            token = next((t for t in self._tokens if _matches(given, t.value)), None)
            if token is not None:
                return self._signed_in(request, token)
        else:
            session = self._cookie_session(request)
            if session is not None:
                return session
        raise RequestError(
            HTTPStatus.UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
            {"WWW-Authenticate": 'Bearer realm="aiobatch"'},
        )

    def _bearer(self, header: str) -> _Token | None:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return next((t for t in self._tokens if _matches(given.strip(), t.value)), None)

    def _cookie_session(self, request: web.Request) -> Session | web.StreamResponse | None:
        cookie = request.cookies.get(TOKEN_COOKIE + self.port)
        token = next((t for t in self._tokens if _matches(cookie, t.session)), None)
        if token is not None:
            if request.method != "GET" and not _matches(
                request.headers.get(CSRF_HEADER), token.csrf
            ):
                raise RequestError(HTTPStatus.FORBIDDEN, f"missing or wrong {CSRF_HEADER} header")
            return Session(token.scope, f"token {token.name}")
        link = request.cookies.get(LINK_COOKIE + self.port)
        if link is not None:
            return self._link_session(request, link)
        return None

    def _link_session(self, request: web.Request, credential: str) -> Session | web.StreamResponse:
        claims = None
        try:
            claims = self.links.verify(credential) if self.links is not None else None
        except LinkExpired:
            if request.path.startswith("/ui"):
                return expired_page()
            raise RequestError(HTTPStatus.UNAUTHORIZED, "the log-view link has expired") from None
        if claims is None:
            raise RequestError(
                HTTPStatus.UNAUTHORIZED, "the log-view link is not valid (or was revoked)"
            )
        return Session(claims.scope, "a log-view link", job=claims.job, expires=claims.exp)

    def _link_signed_in(self, request: web.Request, credential: str) -> web.StreamResponse:
        """A link as sent: keep its credential in a cookie and drop it from the address."""
        session = self._link_session(request, credential)
        if not isinstance(session, Session):
            return session  # the expired page
        response = _without_param(request, LINK_PARAM)
        lifetime = max(1, int((session.expires or 0) - time.time()))
        # Lax, not Strict: a link is opened from elsewhere (a chat, a ticket), and a link
        # session writes nothing, so a cross-site request has nothing to gain from it.
        response.set_cookie(
            LINK_COOKIE + self.port,
            credential,
            path="/",
            samesite="Lax",
            httponly=True,
            max_age=lifetime,
        )
        response.del_cookie(TOKEN_COOKIE + self.port, path="/")  # the link's view, not more
        return response

    def _signed_in(self, request: web.Request, token: _Token) -> web.Response:
        response = _without_param(request, "token")
        response.set_cookie(
            TOKEN_COOKIE + self.port,
            token.session.decode(),
            path="/",
            samesite="Strict",
            httponly=True,
        )
        response.set_cookie(
            CSRF_COOKIE + self.port, token.csrf.decode(), path="/", samesite="Strict"
        )
        response.del_cookie(LINK_COOKIE + self.port, path="/")
        return response


def authorize(request: web.Request, session: Session) -> None:
    """Raise RequestError (403) unless the session may use the request's route."""
    resource = getattr(request.match_info.route, "resource", None)
    if resource is None:
        return  # no such route (404, 405 follow): nothing to protect
    method = "GET" if request.method == "HEAD" else request.method
    access = wire.ROUTE_ACCESS.get((method, resource.canonical))
    if access is None:  # deny what the table does not name
        raise RequestError(HTTPStatus.FORBIDDEN, "this route declares no scope")
    if session.job is not None:
        if access.link is None:
            raise RequestError(HTTPStatus.FORBIDDEN, "a log-view link may not do this")
        if access.link != "any":
            source = request.match_info if access.link == "path" else request.query
            if source.get("job_id" if access.link == "path" else "job") != session.job:
                raise RequestError(
                    HTTPStatus.FORBIDDEN, "a log-view link shows its own job and no other"
                )
    if not wire.scope_covers(session.scope, access.scope):
        raise RequestError(
            HTTPStatus.FORBIDDEN,
            f"{session.who} has the {session.scope} scope; this needs {access.scope}",
        )


def _without_param(request: web.Request, name: str) -> web.Response:
    """A redirect to the same address without ``name`` (so that it stays in no history and
    leaks in no Referer)."""
    query = {k: v for k, v in request.query.items() if k != name}
    location = str(request.rel_url.with_query(query))
    return web.Response(status=HTTPStatus.SEE_OTHER, headers={"Location": location})


def _matches(given: str | None, expected: bytes) -> bool:
    if not expected or given is None:
        return False
    # Header values arrive as latin-1 (or surrogates): never a reason to fail.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected)


def _derived(token: bytes) -> tuple[bytes, bytes]:
    session = hmac.new(token, b"aiobatch session", "sha256").hexdigest().encode()
    csrf = hmac.new(token, b"aiobatch csrf", "sha256").hexdigest().encode()
    return session, csrf
