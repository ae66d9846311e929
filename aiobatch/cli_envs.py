"""``aiobatch envs`` and ``aiobatch env set``: the compute envs of a running service."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from aiobatch.limits import MAX_SLOTS
from aiobatch.wire import EnvChange, EnvInfo

if TYPE_CHECKING:
    from aiobatch.client import Client

EXIT_OK = 0


def add_commands(
    command: Callable[[str, str], argparse.ArgumentParser],
    integer: Callable[[int, int], Callable[[str], int]],
) -> None:
    command("envs", "list the compute envs: slots, slots in use, waiting instances, hosts")
    env = command("env", "change a compute env now (kept across restarts): slots, Docker hosts")
    env.add_argument("action", choices=["set"])
    env.add_argument("name")
    env.add_argument(
        "--slots",
        type=integer(1, MAX_SLOTS),
        help="instances at once: in all (local), per host (docker)",
    )
    for flag, what in (
        ("--add-host", "an engine to place attempts on (or a drained one taken back)"),
        ("--drain-host", "an engine that gets no new attempt (those on it finish)"),
        ("--remove-host", "an engine drained, then dropped once its attempts have ended"),
    ):
        env.add_argument(flag, action="append", default=[], metavar="URL", help=what)


def _line(info: EnvInfo) -> str:
    per_host = f" ({info.slots_per_host} per host)" if info.slots_per_host is not None else ""
    return (
        f"{info.name}  {info.kind}  slots={info.slots}{per_host} used={info.used} "
        f"queued={info.queued}"
    )


def _host_lines(info: EnvInfo) -> list[str]:
    lines = []
    for host in info.hosts or ():
        health = {True: "healthy", False: "not answering", None: "not checked yet"}[host.healthy]
        marks = " drained" * host.drained + " removing" * host.removing
        lines.append(f"  {host.url}  attempts={host.attempts} {health}{marks}")
    return lines


def _show(value: object, as_json: bool, lines: list[str]) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    else:
        print("\n".join(lines))


async def _envs(client: Client, args: argparse.Namespace) -> int:
    envs = await client.list_envs()
    _show(envs, args.json, [line for info in envs for line in (_line(info), *_host_lines(info))])
    return EXIT_OK


async def _env_set(client: Client, args: argparse.Namespace) -> int:
    change = EnvChange(
        slots=args.slots,
        add_hosts=args.add_host,
        drain_hosts=args.drain_host,
        remove_hosts=args.remove_host,
    )
    info = await client.update_env(args.name, change)
    _show(info, args.json, [_line(info), *_host_lines(info)])
    return EXIT_OK


HANDLERS: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
    "envs": _envs,
    "env": _env_set,
}
