"""Long requests made with a log-view link end when the link does."""

from __future__ import annotations

import time
from unittest import mock

import anyio
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiobatch.server.auth import SESSION, Session
from aiobatch.server.responses import RequestError
from aiobatch.server.streams import LINK_EPOCH, LongRequests

pytestmark = pytest.mark.anyio


def request_of(session: Session) -> web.Request:
    peer = mock.Mock(is_closing=lambda: False)  # a peer that stays
    request = make_mocked_request("GET", "/v1/events", transport=peer)
    request[SESSION] = session
    return request


async def test_a_links_long_request_ends_with_a_401_when_the_link_expires() -> None:
    expires = int(time.time()) + 1
    link = Session("read", "a log-view link", job="j", expires=expires)
    with anyio.fail_after(5), pytest.raises(RequestError) as refused:
        await LongRequests().run(request_of(link), anyio.sleep_forever)
    assert refused.value.status == 401 and time.time() >= expires


async def test_a_link_let_in_before_a_revocation_is_refused_when_it_comes() -> None:
    """Let in with a link, then links revoked before its long request began: 401."""
    long_requests = LongRequests()
    link = Session("read", "a log-view link", job="j", expires=int(time.time()) + 3600)
    request = request_of(link)
    request[LINK_EPOCH] = long_requests.revocations
    long_requests.revoke_links()
    with anyio.fail_after(5), pytest.raises(RequestError) as refused:
        await long_requests.run(request, anyio.sleep_forever)
    assert refused.value.status == 401
