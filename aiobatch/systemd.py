"""systemd integration for ``aiobatch serve``: readiness, status and the watchdog.

The sd_notify(3) protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX
socket named by ``$NOTIFY_SOCKET``; a few lines of the standard library speak it, so no
third-party package is needed. Outside systemd the variable is unset and every call here
is a no-op, so callers never have to ask whether they run under systemd.
"""

from __future__ import annotations

import os
import socket
import time

import anyio
from anyio.abc import TaskStatus

from aiobatch.logging import get_logger

__all__ = ["Notifier", "run_watchdog", "watchdog_interval"]

log = get_logger("aiobatch.systemd")


class Notifier:
    """Sends sd_notify messages to the service manager; silent when there is none.

    A failed send is logged once and otherwise swallowed: losing a status update must
    never take the service down (a lost ``WATCHDOG=1`` is what the watchdog is for).
    """

    def __init__(self, address: str | None = None, *, unset_environment: bool = False) -> None:
        """``address`` defaults to ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract
        namespace. ``unset_environment`` removes the variable so that child processes (task
        instances) do not inherit a socket they must not write to, as in sd_notify(3)."""
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET") or None
        if unset_environment:
            os.environ.pop("NOTIFY_SOCKET", None)
        self._address = address
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to notify."""
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` for every field in one datagram; keys are upper-cased, so
        ``notify(ready=1, status="up")`` sends ``READY=1`` and ``STATUS=up``. Returns whether
        the datagram was sent; False (never an exception) when disabled or on failure."""
        if self._address is None or not fields:
            return False
        # A newline would start a new assignment: keep every value on its line.
        payload = "\n".join(
            f"{key.upper()}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            self._send(payload.encode())
        except (OSError, ValueError) as exc:  # ValueError: an unusable address
            self._warn(exc)
            return False
        return True

    def ready(self) -> bool:
        """Startup is complete: systemd marks the unit active and starts its watchdog."""
        return self.notify(READY=1)

    def reloading(self) -> bool:
        """A reload (SIGHUP) has begun; ``ready`` says it is over. The monotonic time lets
        a ``Type=notify-reload`` manager tell this reload from an earlier one."""
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def stopping(self) -> bool:
        """Shutdown has begun: systemd shows the unit as deactivating while we drain."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Still alive: resets systemd's watchdog timer (``WatchdogSec=``)."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """Free-form text that ``systemctl status`` shows."""
        return self.notify(STATUS=text)

    def _send(self, payload: bytes) -> None:
        assert self._address is not None
        if self._address.startswith("@"):
            target = "\0" + self._address[1:]  # the abstract namespace
        elif self._address.startswith("/"):
            target = self._address
        else:
            raise ValueError(f"NOTIFY_SOCKET={self._address!r} is neither a path nor @name")
        # One short-lived socket per message, as libsystemd does: nothing to close later.
        # Non-blocking, because the watchdog sends from the event loop: a full receive
        # queue fails this send rather than stalling every task.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(payload, target)

    def _warn(self, exc: Exception) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning("notify_failed", address=self._address, error=str(exc))


def watchdog_interval(*, unset_environment: bool = False) -> float | None:
    """The watchdog timeout in seconds from ``$WATCHDOG_USEC``, or None when there is none.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for: an inherited
    variable in a child must not make that child ping on its parent's behalf.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if unset_environment:
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)
    if not usec:
        return None
    try:
        value = int(usec)
        owner = int(pid) if pid else os.getpid()
    except ValueError:
        log.warning("watchdog_env_invalid", watchdog_usec=usec, watchdog_pid=pid)
        return None
    if value <= 0 or owner != os.getpid():
        return None
    return value / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    interval: float | None = None,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` every half ``interval`` (default: `watchdog_interval`) until
    cancelled; return at once when there is no watchdog or no one to notify.

    The pings come from the event loop on purpose, not from a thread: a loop blocked by a
    stuck call misses the deadline, and systemd restarts the service (``Restart=``).
    """
    if interval is None:
        interval = watchdog_interval()
    task_status.started()
    if interval is None or interval <= 0 or not notifier.enabled:
        return
    period = interval / 2
    deadline = anyio.current_time()
    while True:
        notifier.watchdog()
        # Deadlines, not sleeps of `period`: the time a ping takes does not add up.
        deadline = max(deadline + period, anyio.current_time())
        await anyio.sleep_until(deadline)
