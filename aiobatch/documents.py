"""Reading spec and config files within bounds: never more than a limit from disk, never a
YAML document whose aliases expand past a limit.

A file is checked before it is read: a regular file no larger than the limit (``st_size``),
then read to at most the limit + 1 byte (it may grow meanwhile). Devices, FIFOs and sockets
are refused, so ``/dev/zero`` or a FIFO nobody writes to fail at once, with their reason.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import msgspec

from aiobatch.limits import MAX_YAML_EXPANDED

FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


class DocumentError(ValueError):
    """A file that cannot be read or parsed; the message names the file."""


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refused if it holds more than ``limit``."""
    # O_NONBLOCK: opening a FIFO that has no writer must not wait for one.
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "something else")
            raise DocumentError(
                f"{path}: is {kind}, not a regular file: a {what} is read from a file"
            )
        too_big = f"{path}: larger than {limit} bytes, the limit for a {what}"
        if info.st_size > limit:
            raise DocumentError(f"{too_big} ({info.st_size} bytes)")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise DocumentError(too_big)
    return b"".join(chunks)


def parse(path: Path, data: bytes) -> Any:
    """Parse ``data`` as the format the suffix of ``path`` names."""
    suffix = path.suffix.lower()
    kind = FORMATS.get(suffix)
    if kind is None:
        raise DocumentError(
            f"{path}: unknown spec format {suffix!r}: use .yaml, .yml, .json or .toml"
        )
    try:
        if kind == "YAML":
            return load_yaml(data)
        if kind == "JSON":
            return msgspec.json.decode(data)
        return msgspec.toml.decode(data)
    except DocumentError as exc:
        raise DocumentError(f"{path}: {exc}") from None
    except Exception as exc:  # each parser has its own error type; all mean "not parseable"
        raise DocumentError(f"{path}: not valid {kind}: {exc}") from None


def load_yaml(data: bytes | str) -> Any:
    """``yaml.safe_load``, refusing a document whose aliases expand past MAX_YAML_EXPANDED.

    The nodes are composed first (aliases are shared nodes there, cheap), their expanded
    size counted, and only then are Python objects made of them.
    """
    import yaml  # only YAML specs pay for importing PyYAML

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_expansion(root: Any) -> None:
    """Raise DocumentError if the node graph, its aliases expanded, weighs more than the
    limit (every node 1, a scalar its length), or if an alias contains itself."""
    import yaml

    weights: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            weights[key] = 1 + len(node.value)
            continue
        children = (
            [item for pair in node.value for item in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if closing:
            weight = 1 + sum(weights[id(child)] for child in children)
            if weight > MAX_YAML_EXPANDED:
                raise DocumentError(
                    f"its aliases expanded, the document would exceed {MAX_YAML_EXPANDED} "
                    "nodes and characters (anchors and aliases that multiply: refused)"
                )
            weights[key] = weight
            open_nodes.discard(key)
        elif key not in weights:
            if key in open_nodes:
                raise DocumentError("an alias refers to a node that contains it (recursive)")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in weights)
