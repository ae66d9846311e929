"""What a webhook delivery is: which events a target hears of, the JSON body made of a stored
event, its signature and its headers. Pure: sending is ``notify_delivery.py``'s.

A receiver checks ``X-Aiobatch-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body
bytes with the target's secret (as GitHub's webhooks do), and dedupes on
``X-Aiobatch-Delivery``, which stays the same across the retries of one delivery and across
restarts of the runtime.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

import msgspec

from aiobatch.events import (
    Event,
    InstanceStateChanged,
    JobStateChanged,
    JobSubmitted,
    TaskStateChanged,
)
from aiobatch.notify_types import MAX_NOTIFY_BODY_BYTES, NOTIFY_EVENTS, NotifyDef

SIGNATURE_HEADER = "X-Aiobatch-Signature"
EVENT_HEADER = "X-Aiobatch-Event"
DELIVERY_HEADER = "X-Aiobatch-Delivery"
_KNOWN = frozenset(NOTIFY_EVENTS)
# Deliveries are named in a namespace of their own: the same (target, job, event) always
# gets the same id, and nothing else does.
_DELIVERY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "aiobatch:notification")
# The stored tag of each kind of event a notification type comes from (an event's body
# starts with it: msgspec writes the tag first), so the history is read for those alone.
_TAGS = {
    "job_submitted": JobSubmitted.__name__,
    "job": JobStateChanged.__name__,
    "task": TaskStateChanged.__name__,
    "instance": InstanceStateChanged.__name__,
}


def notify_type(event: Event) -> str | None:
    """The notification type of an event (``job_failed``), or None if no target can ask
    for it."""
    if isinstance(event, JobSubmitted):
        return "job_submitted"
    if isinstance(event, JobStateChanged):
        if event.state == "SUBMITTED":  # job_submitted is the JobSubmitted event
            return None
        kind = f"job_{event.state.lower()}"
    elif isinstance(event, TaskStateChanged):
        kind = f"task_{event.state.lower()}"
    elif isinstance(event, InstanceStateChanged):
        kind = f"instance_{event.state.lower()}"
    else:
        return None
    return kind if kind in _KNOWN else None


def event_tags(types: set[str]) -> set[str]:
    """The stored event tags (class names) that the notification ``types`` come from."""
    return {_TAGS.get(kind, _TAGS[kind.partition("_")[0]]) for kind in types}


def wanted(targets: tuple[NotifyDef, ...]) -> frozenset[str]:
    return frozenset(kind for target in targets for kind in target.events)


def delivery_id(target: str, job_id: str, seq: int) -> str:
    """The same for every try of one event to one target, before and after a restart."""
    return str(uuid.uuid5(_DELIVERY_NAMESPACE, f"{target}\0{job_id}\0{seq}"))


class Body(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What is POSTed: the event as the events API encodes it, with what names it."""

    type: str
    job_id: str
    job_name: str
    seq: int  # the event's place in the job's history (GET /v1/jobs/ID/events?after=)
    delivery: str
    event: msgspec.Raw
    # The event did not fit MAX_NOTIFY_BODY_BYTES: it is left out, read it from the history.
    truncated: bool = False


_encoder = msgspec.json.Encoder()


def body_bytes(
    kind: str, job_id: str, job_name: str, seq: int, delivery: str, event: bytes
) -> bytes:
    """The body, at most MAX_NOTIFY_BODY_BYTES (else without its event)."""
    body = Body(
        type=kind, job_id=job_id, job_name=job_name, seq=seq, delivery=delivery,
        event=msgspec.Raw(event),
    )  # fmt: skip
    data = _encoder.encode(body)
    if len(data) > MAX_NOTIFY_BODY_BYTES:
        data = _encoder.encode(
            msgspec.structs.replace(body, event=msgspec.Raw(b"null"), truncated=True)
        )
    return data


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the secret (UTF-8)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(kind: str, delivery: str, body: bytes, secret: str | None) -> dict[str, str]:
    out = {"Content-Type": "application/json", EVENT_HEADER: kind, DELIVERY_HEADER: delivery}
    if secret is not None:
        out[SIGNATURE_HEADER] = signature(secret, body)
    return out
