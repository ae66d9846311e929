"""The metrics listener (``server.metrics = "HOST:PORT"``): ``GET /metrics`` without a token,
for a scraper on a private network, and nothing else (any other path 404, any other method
on ``/metrics`` 405, HEAD included).

It is an application of its own, so no route of the API can be reached through it whatever
the path, served by its own runner but under the same limits as the other listeners (a
``Listener`` of the server's: its connection count, header and idle deadlines, the same
parser limits) and the same middleware for errors and deadlines.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from aiobatch import wire
from aiobatch.server.bodies import defer_continue
from aiobatch.server.limits import GuardedSite, Listener

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LISTENER_NAME = "metrics"  # its connections in /v1/health's server.connections


def metrics_application(metrics: Handler, errors: Middleware) -> web.Application:
    """``metrics`` on ``GET /metrics`` only; ``errors``: the server's middleware (JSON errors,
    each request's deadline held while it is served)."""
    app = web.Application(middlewares=[errors])
    app.router.add_get(wire.METRICS_PATH, metrics, allow_head=False, expect_handler=defer_continue)
    return app


async def serve_metrics(
    stack: AsyncExitStack,
    sock: socket.socket,
    listener: Listener,
    options: Mapping[str, Any],
    *,
    metrics: Handler,
    errors: Middleware,
    shutdown_timeout: float,
) -> None:
    """Serve ``metrics_application(metrics, errors)`` on ``sock`` within ``listener``'s
    limits until ``stack`` closes. ``options``: the other listeners' handler options
    (timeouts, parser limits)."""
    app = metrics_application(metrics, errors)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, **options)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await GuardedSite(runner, sock, listener, options).start()
