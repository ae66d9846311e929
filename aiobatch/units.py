"""Parsing of human-written durations and sizes (``10m``, ``1h30m``, ``512MiB``).

Digits are ASCII only (``re.ASCII``): ``\\d`` would also take other scripts' digits.
Durations are finite, more than zero and at most ``MAX_DURATION_S``; sizes fit a signed
64-bit integer.
"""

from __future__ import annotations

import math
import re

from aiobatch.limits import INT64_MAX, MAX_DURATION_S

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)", re.ASCII)
_DURATION_WHOLE = re.compile(r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h|d))+", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE | re.ASCII)
_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "KI": 2**10,
    "MI": 2**20,
    "GI": 2**30,
    "TI": 2**40,
}


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters: errors quote what they refuse,
    never a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30``, ``1.5``, ``"45s"``, ``"10m"``, ``"1h30m"`` or ``"500ms"``.

    Raises ValueError with the reason when the value is not a duration in (0, a year].
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '10m' or '1h30m', got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        text = value.strip().replace(" ", "")
        if not _DURATION_WHOLE.fullmatch(text):
            raise ValueError(f"bad duration {shown(value)}: expected e.g. '30s', '10m', '1h30m'")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if math.isnan(seconds):
        raise ValueError(f"bad duration {shown(value)}: must be a number of seconds, not NaN")
    if seconds <= 0:
        raise ValueError(f"bad duration {shown(value)}: must be greater than zero")
    if seconds > MAX_DURATION_S:
        raise ValueError(
            f"bad duration {shown(value)}: at most {MAX_DURATION_S:.0f} seconds (365 days)"
        )
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from ``1048576``, ``"512MiB"``, ``"1G"`` or ``"2gb"``: 1 to 2**63 - 1."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '512MiB', got a boolean")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"bad size {shown(value)}: expected e.g. '512MiB', '2G' or a byte count"
            )
        unit = (match.group(2) or "").upper().removesuffix("B")
        number = float(match.group(1))
        if math.isinf(number):
            size = INT64_MAX + 1
        else:
            size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"bad size {shown(value)}: must be greater than zero")
    if size > INT64_MAX:
        raise ValueError(f"bad size {shown(value)}: at most {INT64_MAX} bytes (2**63 - 1)")
    return size
