"""The Docker engines of one compute env: a client for each (TLS where configured), a health
check when the env opens, and the choice of the engine for each attempt.

An engine that does not answer is drained: it gets no new attempt for a while, and the
next attempt that picks it again checks it again. Calls that fail for want of an engine are
retried, with backoff, for the env's ``engine_retry``.
"""

from __future__ import annotations

import ssl
import time

import aiodocker
import anyio
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from aiobatch.config import ComputeEnvConfig
from aiobatch.host_set import HostSet
from aiobatch.logging import get_logger
from aiobatch.units import parse_duration

NO_CONNECTION = 900  # aiodocker's status for "cannot connect to the engine"
DRAIN_S = 10.0  # a host that did not answer gets no new attempt for this long
HEALTH_TIMEOUT_S = 5.0

log = get_logger("aiobatch.docker")


class DockerHosts:
    def __init__(
        self, env_name: str, config: ComputeEnvConfig, hosts: HostSet | None = None
    ) -> None:
        self.env_name = env_name
        self.config = config
        # The env's engines as they stand (an operator may add, drain or remove them).
        self.hosts = hosts if hosts is not None else HostSet(list(config.hosts))
        self.clients: dict[str, aiodocker.Docker] = {}
        self.in_flight = dict.fromkeys(self.hosts.hosts, 0)  # attempts placed on each host
        self._down_until: dict[str, float] = {}  # drained hosts: monotonic time to re-check

    async def open(self) -> None:
        """A client for every host, then every host checked at once."""
        for host in self.hosts.hosts:
            self.client(host)
        await self._check()

    def client(self, host: str) -> aiodocker.Docker:
        """The host's client, made on first use (a host added at runtime gets one here)."""
        client = self.clients.get(host)
        if client is None:
            context = self.ssl_context(host)
            # aiodocker speaks plain HTTP to tcp:// even when given a TLS context.
            url = "https://" + host.removeprefix("tcp://") if context is not None else host
            client = self.clients[host] = aiodocker.Docker(url=url, ssl_context=context)
        return client

    async def close(self) -> None:
        clients, self.clients = self.clients, {}
        for client in clients.values():
            await client.close()

    def take(self, host: str) -> None:
        """An attempt is placed on ``host`` (or found there after a restart)."""
        self.in_flight[host] = self.in_flight.get(host, 0) + 1

    def give_back(self, host: str) -> None:
        """An attempt on ``host`` is over; a host being removed goes with its last one."""
        self.in_flight[host] -= 1
        self.reap()

    def reap(self) -> None:
        """Drop the hosts being removed that have no attempt left. Their clients stay open
        until the env closes: an ended attempt's container may still be removed through
        one (after its end is stored)."""
        for host in [h for h in self.hosts.removing if not self.in_flight.get(h, 0)]:
            self.hosts.drop(host)
            self.in_flight.pop(host, None)
            self._down_until.pop(host, None)
            log.info("docker_host_removed", env=self.env_name, host=host)

    def ssl_context(self, host: str) -> ssl.SSLContext | None:
        if not host.startswith(("tcp://", "https://")) or self.config.tls_ca_cert is None:
            return None
        context = ssl.create_default_context(cafile=self.config.tls_ca_cert)
        if self.config.tls_cert is not None:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def retrying(self) -> AsyncRetrying:
        """Retry an engine that does not answer, with exponential backoff, for a while."""
        return AsyncRetrying(
            retry=retry_if_exception(no_connection),
            wait=wait_exponential(multiplier=0.1, max=5),
            stop=stop_after_delay(parse_duration(self.config.engine_retry)),
            sleep=anyio.sleep,
            reraise=True,
        )

    def pick(self) -> str:
        """The healthy host with the fewest attempts in flight (the scheduler caps the total).

        When every host is drained, the one that comes back soonest: its attempt is retried
        until ``engine_retry`` runs out.
        """
        now = time.monotonic()
        # An operator's drain holds; if every host is drained, the attempt (placed before
        # the drain) still needs one.
        candidates = self.hosts.open_hosts or self.hosts.hosts
        healthy = [host for host in candidates if self._down_until.get(host, 0) <= now]
        if not healthy:
            return min(candidates, key=lambda host: self._down_until.get(host, 0))
        return min(healthy, key=lambda host: self.in_flight.get(host, 0))

    def states(self) -> list[tuple[str, int, bool]]:
        """Each host: attempts in flight on it, and whether it answers (not drained for
        failing to)."""
        now = time.monotonic()
        return [
            (host, self.in_flight.get(host, 0), self._down_until.get(host, 0) <= now)
            for host in self.hosts.hosts
        ]

    def drain(self, host: str, why: str) -> None:
        """Place nothing on ``host`` for a while; the next attempt that picks it re-checks."""
        if self._down_until.get(host, 0) <= time.monotonic():
            log.warning("docker_host_drained", env=self.env_name, host=host, why=why)
        self._down_until[host] = time.monotonic() + DRAIN_S

    async def _check(self) -> None:
        """Ask every engine for its version, at once; drain those that do not answer."""

        async def check(host: str) -> None:
            try:
                with anyio.fail_after(HEALTH_TIMEOUT_S):
                    await self.clients[host].version()
            except (aiodocker.DockerError, TimeoutError, OSError) as exc:
                self.drain(host, message(exc))

        async with anyio.create_task_group() as tg:
            for host in list(self.clients):
                tg.start_soon(check, host)


def no_connection(exc: BaseException) -> bool:
    return isinstance(exc, aiodocker.DockerError) and exc.status == NO_CONNECTION


def message(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        return str(exc.message)
    return str(exc)
