"""Job labels: what a label may be (``key: value``), and the ``KEY=VALUE`` filters that find
jobs by them (``--label``, ``?label=``, ``list_jobs(labels=)``), with their bounds."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiobatch.limits import MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS
from aiobatch.spec_checks import CONTROL, key_path
from aiobatch.units import shown

LABEL_KEY = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._/-]{{0,{MAX_LABEL_KEY_CHARS - 1}}}")
# ``KEY=VALUE`` as the API's schema states it (``label_filters`` is what checks it).
LABEL_FILTER_PATTERN = (
    rf"^[A-Za-z0-9][A-Za-z0-9._/-]{{0,{MAX_LABEL_KEY_CHARS - 1}}}"
    rf"=[^\x00-\x1f\x7f-\x9f]{{0,{MAX_LABEL_VALUE_CHARS}}}$"
)
LABEL_KEY_RULE = (
    f"1 to {MAX_LABEL_KEY_CHARS} of ASCII letters, digits, '-', '_', '.', '/', "
    "starting with a letter or digit"
)


def label_problem(key: str, value: str) -> str | None:
    """What is wrong with the label ``key: value`` (None: nothing), bounds included."""
    if not LABEL_KEY.fullmatch(key):
        return f"key {shown(key[:80])} is not a label key: {LABEL_KEY_RULE}"
    if len(value) > MAX_LABEL_VALUE_CHARS:
        return f"value of at most {MAX_LABEL_VALUE_CHARS} characters, got {len(value)}"
    found = CONTROL.search(value)
    if found is not None:
        return f"control character {found.group()!r} not allowed in a label value"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return "the value is not valid Unicode (a lone surrogate)"
    return None


def check_labels(labels: Mapping[str, str], where: str, errors: list[str]) -> None:
    if len(labels) > MAX_LABELS:
        errors.append(f"{where}: at most {MAX_LABELS} labels, got {len(labels)}")
        return
    for key, value in labels.items():
        problem = label_problem(key, value)
        if problem is not None:
            errors.append(f"{key_path(where, key)}: {problem}")


def parse_label_filter(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as given to ``--label`` and ``?label=``; ValueError saying why not."""
    key, equals, value = text.partition("=")
    if not equals:
        raise ValueError(f"label {shown(text[:80])}: expected KEY=VALUE")
    problem = label_problem(key, value)
    if problem is not None:
        raise ValueError(f"label {shown(text[:80])}: {problem}")
    return key, value


def checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels to list jobs by, given in Python: each one as a job's label must be, else
    ValueError (a key with '=' would be another filter once sent as ``KEY=VALUE``)."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"labels: at most {MAX_LABELS} label filters, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"labels: keys and values are strings, got {key!r}: {value!r}")
        problem = label_problem(key, value)
        if problem is not None:
            raise ValueError(f"labels[{shown(key[:80])}]: {problem}")
    return dict(labels)


def label_filters(texts: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Several ``KEY=VALUE``: a job must have all of them. A key given twice with two values
    would match nothing: refused."""
    if len(texts) > MAX_LABELS:
        raise ValueError(f"label: at most {MAX_LABELS} label filters, got {len(texts)}")
    wanted: dict[str, str] = {}
    for text in texts:
        key, value = parse_label_filter(text)
        if wanted.get(key, value) != value:
            raise ValueError(f"label {shown(text[:80])}: {key} is given another value too")
        wanted[key] = value
    return wanted
