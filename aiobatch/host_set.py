"""The Docker engines of one compute env as they stand: the config's list, changed at runtime
(``aiobatch env set``). Shared by the env's control (``envs.py``, which stores it) and its
executor (``executors/docker_hosts.py``, which places attempts by it)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec


class HostSet(msgspec.Struct):
    hosts: list[str]
    # Drained by an operator: no new attempt goes there (attempts on it finish).
    held: set[str] = msgspec.field(default_factory=set)
    # Drained, and dropped from ``hosts`` once no attempt is on them.
    removing: set[str] = msgspec.field(default_factory=set)
    # Told when a removed host goes (its env's control stores the new list).
    on_drop: Callable[[], None] | None = None

    @property
    def open_hosts(self) -> list[str]:
        """The hosts that take new attempts."""
        return [host for host in self.hosts if host not in self.held]

    def add(self, host: str) -> None:
        """A new host, or one drained or being removed taken back."""
        if host not in self.hosts:
            self.hosts.append(host)
        self.held.discard(host)
        self.removing.discard(host)

    def drain(self, host: str) -> None:
        self.held.add(host)

    def remove(self, host: str) -> None:
        self.held.add(host)
        self.removing.add(host)

    def drop(self, host: str) -> None:
        """A host being removed has no attempt left: it goes."""
        if host in self.hosts:
            self.hosts.remove(host)
        self.held.discard(host)
        self.removing.discard(host)
        if self.on_drop is not None:
            self.on_drop()
