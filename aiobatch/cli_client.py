"""The ``aiobatch`` commands that talk to a running service through its control socket:
their arguments, and running one.

Each command is one ``Client`` call and a printout (or JSON with ``--json``), done in
``cli_client_handlers``. Exit codes as for ``run``, plus 3 when the service cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import anyio

from aiobatch import cli_envs
from aiobatch.labels import parse_label_filter
from aiobatch.limits import INT64_MAX  # SQLite INTEGER, off_t: no request number is larger
from aiobatch.links import DEFAULT_LINK_HOURS, MAX_LINK_HOURS, check_hours
from aiobatch.states import JobState

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# The commands add_commands registers; cli_client_handlers.HANDLERS has one handler for each
# (a test holds them equal). Named here so that starting ``aiobatch`` loads no handler.
COMMANDS = frozenset(
    {
        "submit",
        "jobs",
        "status",
        "progress",
        "wait",
        "suspend",
        "resume",
        "retry",
        "stop",
        "delete",
        *cli_envs.HANDLERS,
        "logs",
        "logview",
    }
)


def integer(minimum: int, maximum: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: ASCII digits (a sign only for a range below 0), within the range."""

    def parse(raw: str) -> int:
        digits = raw.removeprefix("-") if minimum < 0 else raw
        if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(INT64_MAX)):
            value = None
        else:
            value = int(raw)
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {minimum} to {maximum}, got {_clipped(raw)!r}"
            )
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def _clipped(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def link_hours(text: str) -> float:
    """``--hours``: a finite number above 0 and at most MAX_LINK_HOURS."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    try:
        return check_hours(hours)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("hours: ")) from None


def label_arg(text: str) -> str:
    """``--label KEY=VALUE``, checked as a job's label is."""
    try:
        parse_label_filter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client commands on the ``aiobatch`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", type=Path, help="the service's socket (default: $AIOBATCH_SOCKET, ...)"
    )
    common.add_argument("--json", action="store_true", help="print JSON on stdout")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[common])

    submit = command("submit", "submit a job to the service and print its id")
    submit.add_argument("spec", type=Path, help="job spec (.yaml, .yml, .json or .toml)")
    submit.add_argument("--wait", action="store_true", help="wait for the end; exit as `run`")
    submit.add_argument("--watch", action="store_true", help="show live progress until the end")

    jobs = command("jobs", "list jobs, newest first")
    jobs.add_argument("--status", type=str.upper, choices=[s.value for s in JobState])
    jobs.add_argument("--limit", type=integer(1), default=20, help="at most this many (default 20)")
    jobs.add_argument(
        "--label",
        action="append",
        default=[],
        type=label_arg,
        metavar="KEY=VALUE",
        help="only jobs with this label (repeat: jobs with all of them)",
    )

    for name, help in (
        ("status", "a job's state and each task's progress and reason"),
        (
            "progress",
            "PyODPS' progress line: time, then each task's NAME:RUNNING/TERMINATED/TOTAL[PCT%%]",
        ),
        ("wait", "wait for a job to end; exit 0 if it SUCCEEDED, else 1"),
        ("suspend", "start no new instance of the job (running ones go on)"),
        ("resume", "let a suspended job start instances again"),
        ("retry", "re-run what did not succeed of a FAILED or CANCELLED job"),
    ):
        command(name, help).add_argument("job")

    cli_envs.add_commands(command, integer)

    delete = command(
        "delete", "delete ended jobs: rows, events, work dirs and logs (not what they uploaded)"
    )
    delete.add_argument("jobs", nargs="+", metavar="job")
    delete.add_argument("--stop", action="store_true", help="stop a job that has not ended first")

    stop = command("stop", "stop a job, or one instance of it")
    stop.add_argument("job")
    stop.add_argument("task", nargs="?")
    stop.add_argument("index", nargs="?", type=integer(0))

    logview = command(
        "logview", "print a link to a job's page (that job only, read-only); or revoke them all"
    )
    logview.add_argument("job", nargs="?")
    logview.add_argument(
        "--hours",
        type=link_hours,
        default=DEFAULT_LINK_HOURS,
        help=f"how long the link may be used (default {DEFAULT_LINK_HOURS}, "
        f"at most {MAX_LINK_HOURS})",
    )
    logview.add_argument(
        "--rotate",
        action="store_true",
        help="give the service a new key for links: every link made so far stops working",
    )

    logs = command("logs", "print an instance's stdout (or stderr)")
    logs.add_argument("job")
    logs.add_argument("task")
    logs.add_argument("index", nargs="?", type=integer(0), default=0)
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until it ends")


def run_command(args: argparse.Namespace) -> int:
    # aiohttp, and the handlers, only for these commands
    from aiobatch.cli_client_handlers import HANDLERS
    from aiobatch.client import Client, RequestRefused

    handler = HANDLERS[args.command]

    async def main() -> int:
        async with Client(args.socket) as client:
            return await handler(client, args)

    try:
        return anyio.run(main)
    except RequestRefused as exc:  # the service refused what was asked: a usage error
        print(f"aiobatch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
