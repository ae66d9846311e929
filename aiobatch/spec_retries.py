"""A task's ``retries`` as a policy: the limit, the failures it applies to, and the backoff
between attempts (each duration checked like any other, the factor finite and bounded)."""

from __future__ import annotations

import math

from aiobatch.limits import MAX_BACKOFF_FACTOR
from aiobatch.spec_types import BackoffDef, RetryPolicy
from aiobatch.units import parse_duration


def as_policy(retries: int | RetryPolicy | None) -> RetryPolicy:
    if isinstance(retries, int):
        return RetryPolicy(limit=retries)
    return retries or RetryPolicy()


def check_policy(retries: int | RetryPolicy, where: str, errors: list[str]) -> None:
    backoff = retries.backoff if isinstance(retries, RetryPolicy) else None
    if backoff is None:
        return
    at = f"{where}.retries.backoff"
    for name in ("delay", "max_delay"):
        value = getattr(backoff, name)
        if not isinstance(value, str | int | float):
            continue  # max_delay unset
        try:
            parse_duration(value)
        except ValueError as exc:
            errors.append(f"{at}.{name}: {exc}")
    factor = backoff.factor
    if not (math.isfinite(factor) and 1 <= factor <= MAX_BACKOFF_FACTOR):
        errors.append(
            f"{at}.factor: must be at least 1 and at most {MAX_BACKOFF_FACTOR:g}, got {factor!r}"
        )


def backoff_def(policy: RetryPolicy) -> BackoffDef | None:
    """The policy's backoff in seconds; None without one (or with a value refused already)."""
    backoff = policy.backoff
    if backoff is None:
        return None
    try:
        delay = parse_duration(backoff.delay)
        cap = backoff.max_delay
        max_delay = parse_duration(cap) if isinstance(cap, str | int | float) else None
    except ValueError:
        return None
    return BackoffDef(delay_s=delay, factor=backoff.factor, max_delay_s=max_delay)
