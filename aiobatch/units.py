"""Parsing of human-written durations and sizes (``10m``, ``1h30m``, ``512MiB``)."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", re.IGNORECASE)
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


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30``, ``1.5``, ``"45s"``, ``"10m"``, ``"1h30m"`` or ``"500ms"``.

    Raises ValueError with the reason when the value is not a positive duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s', '10m' or '1h30m', got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        if not _DURATION_WHOLE.fullmatch(text):
            raise ValueError(f"bad duration {value!r}: expected e.g. '30s', '10m', '1h30m'")
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be greater than zero")
    return seconds


def parse_size(value: str | int) -> int:
    """Bytes from ``1048576``, ``"512MiB"``, ``"1G"`` or ``"2gb"``."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '512MiB', got a boolean")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"bad size {value!r}: expected e.g. '512MiB', '2G' or a byte count")
        unit = (match.group(2) or "").upper().removesuffix("B")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError(f"bad size {value!r}: must be greater than zero")
    return size
