"""Webhook targets, as a job spec (``notify:``) and the config (``[[notifications]]``) write
them, the events they may ask for, and every bound on them.

A target is a URL that gets a signed JSON POST for each event it wants (``notifications.py``
builds it; ``notify_delivery.py`` sends it). The checks are in ``spec_notify.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from msgspec import Meta, Struct

# -- bounds --------------------------------------------------------------------------------------

# Targets per config and per job: each is a stream of POSTs for every job it covers.
MAX_NOTIFY_TARGETS = 16
# A URL is stored with the job and shown in errors; browsers and proxies take about this much.
MAX_NOTIFY_URL_CHARS = 2048
# Tries of one delivery before it is given up (recorded, logged, counted): the first try and
# its retries. The waits between them double from `backoff`, each at most NOTIFY_MAX_WAIT_S.
DEFAULT_NOTIFY_TRIES = 8
MAX_NOTIFY_TRIES = 20
DEFAULT_NOTIFY_BACKOFF = "1s"
MAX_NOTIFY_BACKOFF_S = 3600.0
NOTIFY_MAX_WAIT_S = 3600.0
# How long one POST may take, connecting included.
DEFAULT_NOTIFY_TIMEOUT = "10s"
MAX_NOTIFY_TIMEOUT_S = 300.0
# A body larger than this is sent without its event (``"truncated": true``); a receiver reads
# the job's history for it. Events are small: this is a guard, not a budget.
MAX_NOTIFY_BODY_BYTES = 64 * 1024

# -- events --------------------------------------------------------------------------------------

# What a target may ask for: a job's, a task's or an instance's state it entered. An instance
# is `instance_failed` once it has no retry left (a failed attempt that is retried is not).
NotifyEvent = Literal[
    "job_submitted",
    "job_running",
    "job_suspended",
    "job_succeeded",
    "job_failed",
    "job_cancelled",
    "task_succeeded",
    "task_failed",
    "task_cancelled",
    "task_skipped",
    "instance_succeeded",
    "instance_failed",
    "instance_cancelled",
]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)

NotifyTries = Annotated[int, Meta(ge=1, le=MAX_NOTIFY_TRIES)]


class NotifySpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One target as written: ``{url, events, secret, tries, backoff, timeout}``."""

    url: str
    events: tuple[NotifyEvent, ...]
    # Where the signing key is read, at each delivery: file:/abs/path or env:VAR. The body's
    # HMAC-SHA256 goes in X-Aiobatch-Signature as sha256=<hex>; without a secret, no header.
    secret: str | None = None
    tries: NotifyTries = DEFAULT_NOTIFY_TRIES
    backoff: str | int | float = DEFAULT_NOTIFY_BACKOFF  # the first wait; then doubling
    timeout: str | int | float = DEFAULT_NOTIFY_TIMEOUT


class NotifyDef(Struct, frozen=True, kw_only=True):
    """A checked target, as a job stores it and the deliverer uses it."""

    url: str
    events: tuple[str, ...]
    secret: str | None = None
    tries: int = DEFAULT_NOTIFY_TRIES
    backoff_s: float = 1.0
    timeout_s: float = 10.0
