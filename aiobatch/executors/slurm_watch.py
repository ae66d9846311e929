"""One poller per Slurm env: the states of the elements its attempts wait for.

Slurm tells of an end only when asked, so once per poll interval, while any element is
watched, one ``squeue --json --me`` answers for all of them. An element the controller has
forgotten (``MinJobAge`` after its end) is looked for in jobcomp/filetxt's file, read on from
where the last read stopped; one found in neither for a while is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import anyio
import msgspec

from aiobatch.executors.slurm_commands import (
    PENDING,
    PENDING_REST,
    ElementState,
    SlurmError,
    parse_jobcomp_line,
    squeue,
)
from aiobatch.logging import get_logger

log = get_logger("aiobatch.slurm")

# An element neither squeue nor jobcomp knows of, this many polls and seconds in a row, is
# lost (its controller lost its state, or jobcomp is not readable here).
LOST_POLLS, LOST_S = 10, 30.0
READ_CHUNK = 1 << 20


class Element:
    """A watched element: its last state, and events for its start and its end."""

    __slots__ = ("ended", "final", "key", "last", "misses", "missing_since", "name", "started")

    def __init__(self, key: tuple[int, int], name: str) -> None:
        self.key, self.name = key, name
        self.last: ElementState | None = None
        self.final: ElementState | None = None  # None once ended: lost
        self.started = anyio.Event()  # set when it runs, or ended
        self.ended = anyio.Event()
        self.misses, self.missing_since = 0, 0.0

    @property
    def target(self) -> str:
        return f"{self.key[0]}_{self.key[1]}"

    @property
    def start_time(self) -> float | None:
        return self.last.start_time if self.last is not None else None

    def update(self, state: ElementState) -> None:
        if self.ended.is_set():
            return
        self.last, self.misses = state, 0
        if state.state != PENDING:
            self.started.set()
        if state.final:
            self.final = state
            self.ended.set()

    def lose(self) -> None:
        self.started.set()
        self.ended.set()


class Watcher:
    def __init__(self, prefix: str, poll_s: float, jobcomp: Path | None) -> None:
        self.prefix, self.poll_s, self.jobcomp = prefix, poll_s, jobcomp
        self._elements: dict[tuple[int, int], Element] = {}
        self._changed = anyio.Event()
        self._offset = 0  # how far jobcomp's file has been read
        self._known_ends: dict[tuple[int, int], ElementState] = {}  # found at recovery

    # -- who waits for what ------------------------------------------------------------------

    def watch(self, key: tuple[int, int], name: str) -> Element:
        element = self._elements.get(key)
        if element is None or element.name != name:
            element = self._elements[key] = Element(key, name)
            known = self._known_ends.pop(key, None)
            if known is not None and known.name == name:
                element.update(known)
            self._changed.set()
        return element

    def forget(self, element: Element) -> None:
        if self._elements.get(element.key) is element:
            del self._elements[element.key]

    def remember_ends(self, states: Iterable[ElementState]) -> None:
        """Ends found at recovery (jobcomp), for the elements about to be adopted."""
        for state in states:
            self._known_ends[state.key] = state

    def pending_reason(self, key: tuple[int, int]) -> str | None:
        """The element's pending reason as the last poll saw it (Priority, Resources,
        JobArrayTaskLimit, possibly empty), or None if it was not seen pending."""
        element = self._elements.get(key)
        if element is None or element.last is None or element.last.state != PENDING:
            return None
        return element.last.reason

    # -- polling -----------------------------------------------------------------------------

    async def run(self) -> None:
        self._offset = await anyio.to_thread.run_sync(self._size)  # earlier ends: recovery's
        while True:
            while not self._elements:
                await self._changed.wait()
                self._changed = anyio.Event()
            try:
                await self.poll_once()
            except SlurmError as exc:
                log.warning("slurm_poll_failed", error=str(exc))
            await anyio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        states = await squeue(self.prefix)
        seen: set[tuple[int, int]] = set()
        for state in states:
            element = self._elements.get(state.key)
            if element is not None and element.name == state.name:
                if element.last is None or element.last.reason != state.reason:
                    if state.state == PENDING:
                        log.debug("slurm_pending", element=element.target, reason=state.reason)
                element.update(state)
                seen.add(state.key)
        missing = [e for k, e in self._elements.items() if k not in seen and not e.ended.is_set()]
        if missing and self.jobcomp is not None:
            for state in await self.read_jobcomp():
                if state.task_id == PENDING_REST:
                    # Every element of that array gone from squeue ended so, never started.
                    for element in missing:
                        if element.key[0] == state.array_id and element.name == state.name:
                            element.update(msgspec.structs.replace(state, task_id=element.key[1]))
                    continue
                element = self._elements.get(state.key)
                if element is not None and element.name == state.name:
                    element.update(state)
        now = time.monotonic()
        for element in missing:
            if element.ended.is_set():
                continue
            if element.misses == 0:
                element.missing_since = now
            element.misses += 1
            if element.misses >= LOST_POLLS and now - element.missing_since >= LOST_S:
                log.error("slurm_element_lost", element=element.target, name=element.name)
                element.lose()

    async def read_jobcomp(self) -> list[ElementState]:
        """Ends jobcomp recorded since the last read, of this runtime's elements."""
        return await anyio.to_thread.run_sync(self._read_on)

    def _size(self) -> int:
        try:
            return self.jobcomp.stat().st_size if self.jobcomp is not None else 0
        except OSError:
            return 0

    def _read_on(self) -> list[ElementState]:
        if self.jobcomp is None:
            return []
        try:
            with self.jobcomp.open("rb") as file:
                if file.seek(0, 2) < self._offset:
                    self._offset = 0  # rotated
                file.seek(self._offset)
                data = file.read()
        except OSError as exc:
            log.warning("slurm_jobcomp_unreadable", path=str(self.jobcomp), error=str(exc))
            return []
        complete = data.rfind(b"\n") + 1  # a line being written waits for the next read
        self._offset += complete
        return scan_jobcomp(data[:complete], self.prefix)


def scan_jobcomp(data: bytes, prefix: str) -> list[ElementState]:
    marker = f"Name={prefix}".encode()
    found = []
    for raw in data.splitlines():
        if marker in raw:
            state = parse_jobcomp_line(raw.decode(errors="replace"), prefix)
            if state is not None:
                found.append(state)
    return found


def read_all_jobcomp(path: Path, prefix: str) -> list[ElementState]:
    """Every end jobcomp recorded of this runtime's elements (at recovery: off the loop)."""
    found: list[ElementState] = []
    try:
        with path.open("rb") as file:
            rest = b""
            while chunk := file.read(READ_CHUNK):
                data = rest + chunk
                cut = data.rfind(b"\n") + 1
                found += scan_jobcomp(data[:cut], prefix)
                rest = data[cut:]
    except OSError as exc:
        log.warning("slurm_jobcomp_unreadable", path=str(path), error=str(exc))
    return found
