"""The log view a runtime serves on an address of its own (``Runtime(logview="HOST:PORT")``,
``aiobatch run --ui``): the jobs' pages and the HTTP API, with a token no address shows.

The address is bound first, before the state dir is opened: one that cannot be had stops the
start before any job is recovered. The server starts once the jobs are recovered.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING

import anyio

from aiobatch.config import ServerConfig
from aiobatch.links import LinkKeys
from aiobatch.listeners import Listeners, bind_listeners
from aiobatch.logging import get_logger

if TYPE_CHECKING:
    from aiobatch.server.served import ServedAPI

log = get_logger("aiobatch.runtime_logview")


class OwnLogView:
    def __init__(self, address: str, token: str) -> None:
        self._config = ServerConfig(http=address, token=token)
        self._listeners: Listeners | None = None

    async def bind(self, stack: AsyncExitStack) -> None:
        """Take the address now (closed with ``stack``); StartupError if it cannot be had."""
        listeners = await anyio.to_thread.run_sync(
            partial(bind_listeners, self._config, unix=False)
        )
        stack.callback(listeners.close)
        self._listeners = listeners

    async def serve(self, api: ServedAPI, stack: AsyncExitStack, links: LinkKeys) -> str | None:
        """Serve ``api`` on the bound address until ``stack`` closes; returns its URL."""
        from aiobatch.server import ControlServer  # aiohttp's server only when asked for

        assert self._listeners is not None, "bind first"
        server = ControlServer(
            api, self._config, unix=False, listeners=self._listeners, links=links
        )
        await stack.enter_async_context(server)
        log.info("logview", url=server.http_url)
        return server.http_url
