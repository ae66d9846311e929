"""Compute envs that change while the runtime runs: slots, and a Docker env's engines.

The config is the starting point; each change (``aiobatch env set``, ``PATCH /v1/envs/NAME``,
``Runtime.update_env``) applies at once and is stored in ``STATE/envs.json`` (written whole,
then renamed over the old one), which the next start applies over the config. More slots
dispatch at once; fewer let running attempts finish and start nothing until under the
new count. A drained engine gets no new attempt; a removed one is drained, then dropped
once its last attempt has ended. ``reload`` (SIGHUP of the service) takes the config
file's envs as a change of each, replacing what was stored for them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import replace

from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.documents import DocumentError, read_bounded
from aiobatch.engine import Engine
from aiobatch.errors import EnvNotFound, SpecError
from aiobatch.host_set import HostSet
from aiobatch.layout import StateLayout
from aiobatch.limits import MAX_SLOTS
from aiobatch.logging import get_logger
from aiobatch.resources import Resources
from aiobatch.states import JobState, TaskState
from aiobatch.units import shown
from aiobatch.wire import EnvChange, EnvInfo, HostInfo

log = get_logger("aiobatch.envs")

MAX_HOSTS = 256  # engines per Docker env
MAX_HOST_CHARS = 2048
MAX_ENVS_FILE = 1 << 20
HOST_SCHEMES = ("unix://", "tcp://", "http://", "https://")
_DISPATCHABLE = (TaskState.READY, TaskState.RUNNING)


class EnvControl:
    def __init__(
        self,
        *,
        resources: Resources,
        engine: Engine,
        layout: StateLayout,
        on_change: Callable[[], None],
    ) -> None:
        self._resources, self._engine = resources, engine
        self._path = layout.root / "envs.json"
        self._on_change = on_change  # dispatch what more slots allow
        self._stored: dict[str, dict[str, Any]] = {}
        for name, env in resources.envs.items():
            if env.kind == "docker":
                hosts = resources.host_sets[name] = HostSet(list(env.hosts))
                hosts.on_drop = partial(self._dropped, name)

    def open(self) -> None:
        """Apply what was stored over the config (a file that cannot be read: the config)."""
        stored = _read(self._path)
        for name, saved in stored.items():
            if name not in self._resources.envs or not isinstance(saved, dict):
                continue
            try:
                self._restore(name, saved)
            except (TypeError, ValueError) as exc:
                log.warning("env_settings_ignored", env=name, error=str(exc))
                continue
            self._stored[name] = saved
        for name in self._resources.envs:
            self._set_slots(name)

    def _restore(self, name: str, saved: Mapping[str, Any]) -> None:
        slots = saved.get("slots")
        if not (isinstance(slots, int) and 1 <= slots <= MAX_SLOTS):
            raise ValueError(f"slots: {slots!r}")
        env = self._resources.envs[name]
        hosts = self._resources.host_sets.get(name)
        if hosts is not None:
            listed = [str(h) for h in saved.get("hosts", env.hosts)][:MAX_HOSTS]
            hosts.hosts[:] = listed
            hosts.held = {str(h) for h in saved.get("held", ())} & set(listed)
            hosts.removing = {str(h) for h in saved.get("removing", ())} & set(listed)
        self._resources.envs[name] = replace(env, slots=slots, hosts=tuple(self._hosts(name)))

    # -- reading ------------------------------------------------------------------------------

    def describe(self) -> list[EnvInfo]:
        queued: dict[str, int] = {}
        for job in self._engine.jobs.values():
            if job.state is not JobState.RUNNING or job.stopping is not None:
                continue
            for task in job.tasks.values():
                if task.state in _DISPATCHABLE:
                    env = task.defn.compute_env
                    queued[env] = queued.get(env, 0) + task.dispatchable
        return [self._info(name, queued.get(name, 0)) for name in sorted(self._resources.envs)]

    def info(self, name: str) -> EnvInfo:
        return next(info for info in self.describe() if info.name == name)

    def _info(self, name: str, queued: int) -> EnvInfo:
        env = self._resources.envs[name]
        scheduler = self._engine.scheduler
        hosts = None
        host_set = self._resources.host_sets.get(name)
        if host_set is not None:
            states = {}
            executor = self._resources.executors.get(name)
            if executor is not None and hasattr(executor, "host_states"):
                states = {host: (n, ok) for host, n, ok in executor.host_states()}
            hosts = [
                HostInfo(
                    url=host,
                    attempts=states.get(host, (0, None))[0],
                    healthy=states.get(host, (0, None))[1],
                    drained=host in host_set.held,
                    removing=host in host_set.removing,
                )
                for host in host_set.hosts
            ]
        return EnvInfo(
            name=name,
            kind=env.kind,
            slots=scheduler.slots.get(name, 0),
            slots_per_host=env.slots if env.kind == "docker" else None,
            used=scheduler.used.get(name, 0),
            queued=queued,
            hosts=hosts,
        )

    # -- changing -----------------------------------------------------------------------------

    def update(self, name: str, change: EnvChange) -> EnvInfo:
        """Check the whole change (SpecError naming each problem), then apply and store it."""
        env = self._resources.envs.get(name)
        if env is None:
            raise EnvNotFound(name)
        problems = self._problems(name, env, change)
        if problems:
            raise SpecError(problems)
        self._apply(name, change)
        self._store()
        log.info("env_changed", env=name, change=_shown_change(change))
        self._on_change()
        return self.info(name)

    def _problems(self, name: str, env: ComputeEnvConfig, change: EnvChange) -> list[str]:
        host_set = self._resources.host_sets.get(name)
        asks = [*change.add_hosts, *change.drain_hosts, *change.remove_hosts]
        if host_set is None:
            return [f"$.hosts: {name!r} is a {env.kind} env: it has no hosts"] if asks else []
        problems = []
        for i, host in enumerate(change.add_hosts):
            printable = host.isprintable() and not any(c.isspace() for c in host)
            if not host.startswith(HOST_SCHEMES) or len(host) > MAX_HOST_CHARS or not printable:
                problems.append(
                    f"$.add_hosts[{i}]: {shown(host)} is not a Docker endpoint "
                    f"(unix:///path/docker.sock or tcp://host:port, at most {MAX_HOST_CHARS} "
                    "characters)"
                )
        for field, hosts in (
            ("drain_hosts", change.drain_hosts),
            ("remove_hosts", change.remove_hosts),
        ):
            for i, host in enumerate(hosts):
                if host not in host_set.hosts and host not in change.add_hosts:
                    problems.append(f"$.{field}[{i}]: {shown(host)} is not a host of {name!r}")
        added = set(host_set.hosts) | set(change.add_hosts)
        if len(added) > MAX_HOSTS:
            problems.append(f"$.add_hosts: at most {MAX_HOSTS} hosts in an env")
        return problems

    def _apply(self, name: str, change: EnvChange) -> None:
        env = self._resources.envs[name]
        host_set = self._resources.host_sets.get(name)
        if host_set is not None:
            for host in change.add_hosts:
                host_set.add(host)
            for host in change.drain_hosts:
                host_set.drain(host)
            for host in change.remove_hosts:
                host_set.remove(host)
            executor = self._resources.executors.get(name)
            reap = getattr(executor, "reap_hosts", None)
            if reap is not None:
                reap()  # a removed host with no attempt goes at once
            elif host_set.removing:  # no executor yet: nothing runs there
                for host in list(host_set.removing):
                    host_set.drop(host)
        slots = change.slots if change.slots is not None else env.slots
        self._resources.envs[name] = replace(env, slots=slots, hosts=tuple(self._hosts(name)))
        self._set_slots(name)
        self._stored[name] = self._saved(name)

    def _saved(self, name: str) -> dict[str, Any]:
        saved: dict[str, Any] = {"slots": self._resources.envs[name].slots}
        host_set = self._resources.host_sets.get(name)
        if host_set is not None:
            saved |= {
                "hosts": list(host_set.hosts),
                "held": sorted(host_set.held),
                "removing": sorted(host_set.removing),
            }
        return saved

    def _dropped(self, name: str) -> None:
        """A removed host went (its last attempt ended): store the env as it is now."""
        if name in self._stored:
            self._stored[name] = self._saved(name)
            self._store()
        self._set_slots(name)

    def reload(self, config: Config) -> None:
        """The config file's envs as they are now (SIGHUP): each one's slots and hosts taken
        as a change, replacing what was stored for it. A new env needs a restart."""
        for name, env in config.effective_envs().items():
            current = self._resources.envs.get(name)
            if current is None or current.kind != env.kind:
                log.warning("env_not_reloaded", env=name, why="added or changed kind: restart")
                continue
            host_set = self._resources.host_sets.get(name)
            hosts = host_set.hosts if host_set is not None else []
            change = EnvChange(
                slots=env.slots,
                add_hosts=[h for h in env.hosts if h not in hosts] if host_set else [],
                remove_hosts=[h for h in hosts if h not in env.hosts] if host_set else [],
            )
            if host_set is not None:
                host_set.held -= set(env.hosts)  # the config undrains what it lists
            self._apply(name, change)
            self._stored.pop(name, None)
        self._store()
        log.info("envs_reloaded")
        self._on_change()

    def _hosts(self, name: str) -> list[str]:
        host_set = self._resources.host_sets.get(name)
        return list(host_set.hosts) if host_set is not None else []

    def _set_slots(self, name: str) -> None:
        env = self._resources.envs[name]
        per_host = env.slots or 1
        host_set = self._resources.host_sets.get(name)
        total = per_host * len(host_set.open_hosts) if host_set is not None else per_host
        scheduler = self._engine.scheduler
        scheduler.slots[name] = total
        scheduler.used.setdefault(name, 0)

    def _store(self) -> None:
        """Write what differs from the config, whole, then rename it into place."""
        tmp = self._path.with_suffix(".json.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(self._stored, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path)
        except OSError as exc:  # a full disk: the change holds until the next start
            log.error("env_settings_not_stored", error=str(exc))


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(read_bounded(path, MAX_ENVS_FILE, "env settings"))
    except (DocumentError, ValueError, OSError) as exc:
        log.warning("env_settings_unreadable", path=str(path), error=str(exc))
        return {}
    return data if isinstance(data, dict) else {}


def _shown_change(change: EnvChange) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(change).items() if v not in (None, [])}
