"""``aiobatch serve``: one Runtime behind the control socket (and the optional HTTP and
metrics listeners), as a systemd service.

Start: the sockets are bound (a socket in use or a bad address stops the start before the
state dir is opened), then recovery (in ``Runtime.__aenter__``), then the server answers on
them, then READY=1.
SIGTERM or SIGINT: STOPPING=1; submissions are refused (503) while status queries still
answer; running attempts get ``shutdown_grace`` to finish; then the socket closes and the
rest are interrupted (or, with ``detach_on_shutdown``, containers are left running). A
second signal cuts the grace short.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import closing
from functools import partial
from pathlib import Path

import anyio

from aiobatch.config import Config, load_config
from aiobatch.errors import ConfigError
from aiobatch.listeners import bind_listeners
from aiobatch.logging import get_logger
from aiobatch.runtime import Runtime
from aiobatch.server import ControlServer
from aiobatch.systemd import Notifier, run_watchdog, watchdog_interval

log = get_logger("aiobatch.service")


async def serve(
    config: Config,
    *,
    state_dir: Path | None,
    socket: Path | None,
    config_path: Path | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop. SIGHUP re-reads the config file's
    compute envs."""
    # Taken out of the environment so task instances cannot talk to systemd as us.
    notifier = Notifier(unset_environment=True)
    watchdog = watchdog_interval(unset_environment=True)
    listeners = await anyio.to_thread.run_sync(
        partial(bind_listeners, config.server, socket=socket)
    )
    # SIGHUP is taken before READY=1: a reload asked for at once (``systemctl reload`` right
    # after the start) found its default action, which ends the process, until it was.
    with (
        closing(listeners),
        anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        anyio.open_signal_receiver(signal.SIGHUP) as hangups,
    ):
        async with (
            Runtime(state_dir, config=config) as runtime,
            ControlServer(
                runtime, config.server, listeners=listeners, links=runtime.link_keys
            ) as server,
            anyio.create_task_group() as tg,
        ):
            if server.http_url is not None:  # the log view is served there too
                runtime.logview_url = server.http_url
            notifier.ready()
            notifier.status(f"listening on {server.socket_path}")
            await tg.start(run_watchdog, notifier, watchdog)
            tg.start_soon(_reload_on_hangup, hangups, runtime, config_path, notifier)
            log.info(
                "serving",
                socket=str(server.socket_path),
                http=server.http_url,
                metrics=server.metrics_url,  # no token there: GET /metrics only
            )
            signum = await anext(signals)
            notifier.stopping()
            notifier.status("draining")
            log.info("stopping", signal=signal.Signals(signum).name)
            with anyio.CancelScope() as grace:
                tg.start_soon(_cut_short_on_signal, signals, grace)
                await runtime.drain()
            tg.cancel_scope.cancel()
    log.info("stopped")


async def _reload_on_hangup(
    hangups: AsyncIterator[int], runtime: Runtime, path: Path | None, notifier: Notifier
) -> None:
    """SIGHUP: the config file's notification targets taken, and its envs (slots, Docker
    hosts) applied as a change of each; a file that does not load changes nothing (and says
    why). The service manager is told when each reload begins and ends."""
    async for _ in hangups:
        notifier.reloading()
        try:
            config = await anyio.to_thread.run_sync(load_config, path)
            await runtime.reload_notifications(config)
        except ConfigError as exc:
            log.error("reload_refused", error=str(exc))
        except Exception as exc:  # the state dir could not be read: still serving
            log.error("reload_failed", error=repr(exc))
        else:
            runtime.reload_envs(config)
            log.info("reloaded", config=str(path) if path else None)
        notifier.ready()


async def _cut_short_on_signal(signals: AsyncIterator[int], grace: anyio.CancelScope) -> None:
    async for signum in signals:
        log.warning("drain_cut_short", signal=signal.Signals(signum).name)
        grace.cancel()
        return
