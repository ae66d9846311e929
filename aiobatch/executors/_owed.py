"""The spawner's journal lines that a full disk refused: kept per journal, in order, and
written once there is room (an attempt's pid and end must reach its journal for a next
runtime). Standard library only, as the spawner (a sibling it imports as a script).
"""

from __future__ import annotations

import errno

TYPE_CHECKING = False  # typing's own flag costs an import of typing
if TYPE_CHECKING:
    from aiobatch.executors._launch import Journals

NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


class OwedLines:
    def __init__(self, journals: Journals) -> None:
        self.journals = journals
        self.owed: dict[str, list[bytes]] = {}  # by journal, oldest first

    def write(self, path: str, line: bytes) -> None:
        """A journal line after an attempt's first. The runtime hears what it says anyway;
        one a full disk refused waits, after those refused before it, for room (a runtime
        that dies meanwhile leaves the next one the journal only); one whose journal went
        (the job's logs were removed) is dropped."""
        waiting = self.owed.get(path)
        if waiting is not None:
            waiting.append(line)
            return
        try:
            self.journals.write(path, line)
        except OSError as exc:
            if exc.errno in NO_ROOM:
                self.owed[path] = [line]

    def write_first(self, path: str, head: bytes) -> None:
        """An attempt's first line, after the lines refused before it: one may take back an
        earlier try of this very attempt, and must not come after it. Raises OSError."""
        self.write_owed(path)
        self.journals.write(path, head, first=True)

    def retry(self) -> None:
        """Try again the lines a full disk refused, each journal's in order."""
        for path in list(self.owed):
            try:
                self.write_owed(path)
            except OSError:
                pass  # still no room: the next try

    def write_owed(self, path: str) -> None:
        """Write the lines refused before for this journal, in order. Raises OSError while
        there is still no room; a line that fails otherwise (its journal went, the disk
        failed) is dropped with those after it."""
        lines = self.owed.get(path)
        if lines is None:
            return
        try:
            while lines:
                self.journals.write(path, lines[0])
                del lines[0]
        except OSError as exc:
            if exc.errno in NO_ROOM:
                raise
        del self.owed[path]
