"""Sending one webhook delivery: its POST (aiohttp), its tries with exponential backoff
(tenacity), each try counted in the store before it is made, and, when the last one fails,
the failure logged, counted and handed on (``on_given_up``).

A try fails on anything but a 2xx answer: a redirect is not followed, a timeout or a refused
connection is a failure like a 503. The signing key is read at each try (a rotated file is
taken up at once); one that cannot be read fails the try, naming the source, never a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import msgspec
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from aiobatch.logging import get_logger
from aiobatch.notifications import body_bytes, delivery_id, headers
from aiobatch.notify_store import NotifyStore
from aiobatch.notify_types import NOTIFY_MAX_WAIT_S, NotifyDef
from aiobatch.secret_sources import SecretUnavailable, read_secret

if TYPE_CHECKING:
    import aiohttp

log = get_logger("aiobatch.notifications")

# Connections open at once, in all and to one host: a receiver that hangs holds a few.
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_HOST = 8
_ERROR_CHARS = 200


class DeliveryFailed(Exception):
    """One try did not get a 2xx answer; the message says what it got."""


class GivenUp(msgspec.Struct, frozen=True):
    """A delivery that failed every one of its tries."""

    job_id: str
    url: str
    type: str  # job_failed, ...
    seq: int  # the event's place in the job's history
    delivery: str
    tries: int
    error: str  # the last try's


class Delivery(msgspec.Struct, frozen=True):
    """One event of a job to one target."""

    job_id: str
    job_name: str
    target_key: str  # config:<url> or job:<index>: where the target's progress is kept
    target: NotifyDef
    after: int  # the target is done with the job's events up to this seq
    prior: int  # tries of this delivery made before a restart
    seq: int
    event: bytes  # as stored (the events API's encoding)
    type: str


class Sender:
    def __init__(self, store: NotifyStore, environ: Mapping[str, str] = os.environ) -> None:
        self._store, self._environ = store, environ
        self.on_given_up: Callable[[GivenUp], None] | None = None
        self.delivered = 0  # deliveries a receiver took (2xx)
        self.failed = 0  # deliveries given up after their last try
        self.retried = 0  # tries that failed and were tried again
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def send(self, d: Delivery) -> None:
        """Deliver, trying again after each failure, up to the target's tries in all (those
        before a restart count); then give up. Raises only what the store raises."""
        target = d.target
        delivery = delivery_id(d.target_key, d.job_id, d.seq)
        body = body_bytes(d.type, d.job_id, d.job_name, d.seq, delivery, d.event)
        bound = log.bind(job_id=d.job_id, url=target.url, type=d.type, seq=d.seq, delivery=delivery)
        error = "no try left"
        if d.prior < target.tries:
            retrying = AsyncRetrying(
                stop=stop_after_attempt(target.tries - d.prior),
                # The waits go on from where they were: 2**prior times the first.
                wait=wait_exponential(
                    multiplier=target.backoff_s * 2**d.prior, max=NOTIFY_MAX_WAIT_S
                ),
                retry=retry_if_exception_type(DeliveryFailed),
                sleep=anyio.sleep,
                before_sleep=self._retrying(bound, d.prior),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        tries = d.prior + attempt.retry_state.attempt_number
                        # Counted before it is made: a crash mid-try still spends it.
                        await self._store.save_lane(d.job_id, d.target_key, d.after, tries)
                        await self._post(target, d.type, delivery, body)
            except DeliveryFailed as exc:
                error = str(exc)
            else:
                self.delivered += 1
                bound.debug("notification_delivered")
                return
        self.failed += 1
        bound.error("notification_failed", tries=target.tries, error=error)
        if self.on_given_up is not None:
            # The job's history is shown to whoever may see the job (a shared link too): a
            # config target's URL, whose path or query may be its credential, is not.
            url = target.url if d.target_key.startswith("job:") else _origin(target.url)
            given_up = GivenUp(d.job_id, url, d.type, d.seq, delivery, target.tries, error)
            try:
                self.on_given_up(given_up)
            except Exception:
                bound.exception("notification_failure_not_recorded")

    def _retrying(self, bound: Any, prior: int) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            self.retried += 1
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else None
            bound.warning(
                "notification_retrying",
                tries=prior + state.attempt_number,
                error=str(error),
                wait_s=wait,
            )

        return before_sleep

    async def _post(self, target: NotifyDef, kind: str, delivery: str, body: bytes) -> None:
        import aiohttp  # not for a runtime without notifications

        secret = None
        if target.secret is not None:
            try:
                secret = await anyio.to_thread.run_sync(
                    read_secret, "secret", target.secret, self._environ
                )
            except SecretUnavailable as exc:
                raise DeliveryFailed(f"secret_unavailable: {exc.why}") from None
            if not secret:
                raise DeliveryFailed(f"secret_unavailable: {target.secret} is empty")
        try:
            async with self._http().post(
                target.url,
                data=body,
                headers=headers(kind, delivery, body, secret),
                timeout=aiohttp.ClientTimeout(total=target.timeout_s),
                allow_redirects=False,
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DeliveryFailed(text[:_ERROR_CHARS]) from None
        if not 200 <= status < 300:
            raise DeliveryFailed(f"HTTP {status}")

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=MAX_CONNECTIONS, limit_per_host=MAX_CONNECTIONS_PER_HOST
                ),
                headers={"User-Agent": "aiobatch"},
            )
        return self._session


def _origin(url: str) -> str:
    """The URL's scheme, host and port; ``/…`` where more was cut (a path, a query, a user)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    origin = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}"
    if parts.port is not None:
        origin += f":{parts.port}"
    cut = parts.username or parts.password or parts.path not in ("", "/") or parts.query
    return origin + "/…" if cut or parts.fragment else origin
