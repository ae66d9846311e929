"""The ``aiobatch`` commands that talk to a running service through its control socket.

Each command is one ``Client`` call and a printout (or JSON with ``--json``). Exit codes
as for ``run``, plus 3 when the service cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from aiobatch import cli_envs
from aiobatch.api import (
    JobSnapshot,
    LogStream,
    TaskProgress,
    TaskResult,
    stage_progress_formatted_string,
)
from aiobatch.errors import JobNotFinal
from aiobatch.events import JobStateChanged, TaskStateChanged
from aiobatch.labels import label_filters, parse_label_filter
from aiobatch.limits import INT64_MAX  # SQLite INTEGER, off_t: no request number is larger
from aiobatch.links import DEFAULT_LINK_HOURS, MAX_LINK_HOURS, check_hours
from aiobatch.progress import ProgressView
from aiobatch.states import JOB_TERMINAL, JobState

if TYPE_CHECKING:
    from aiobatch.client import Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
WATCH_REFRESH_S = 0.1  # --watch asks for fresh counts at most this often


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
    from aiobatch.client import Client, RequestRefused  # aiohttp only for these commands

    handler = _HANDLERS[args.command]

    async def main() -> int:
        async with Client(args.socket) as client:
            return await handler(client, args)

    try:
        return anyio.run(main)
    except RequestRefused as exc:  # the service refused what was asked: a usage error
        print(f"aiobatch {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _result(snapshot: JobSnapshot) -> int:
    return EXIT_OK if snapshot.status == JobState.SUCCEEDED else EXIT_FAILED


async def _submit(client: Client, args: argparse.Namespace) -> int:
    job = await client.submit(args.spec)
    if not (args.wait or args.watch):
        if args.json:
            _print_json({"id": job.id, "name": job.name, "status": job.state.value})
        else:
            print(job.id)
        return EXIT_OK
    if not args.json:
        print(job.id, flush=True)
    if args.watch:
        await _watch(client, job.id)
    snapshot = await job.wait_for_completion()
    if args.json:
        _print_json(snapshot)
    else:
        _print_status(snapshot)
    return _result(snapshot)


async def _jobs(client: Client, args: argparse.Namespace) -> int:
    try:
        labels = label_filters(args.label)
    except ValueError as exc:  # one key given two values
        print(f"aiobatch: --{exc}", file=sys.stderr)
        return EXIT_USAGE
    jobs = await client.list_jobs(status=args.status, limit=args.limit, labels=labels)
    if args.json:
        _print_json(jobs)
        return EXIT_OK
    now = time.time()
    for job in jobs:
        ended = job.ended_at or now
        took = ended - (job.started_at or job.submitted_at)
        why = f" ({job.reason})" if job.reason else ""
        tags = "".join(f"  {key}={value}" for key, value in sorted(job.labels.items()))
        print(f"{job.id}  {job.status:<9}  {took:8.1f}s  {job.name}{why}{tags}")
    return EXIT_OK


def _progress(name: str, task: TaskResult) -> TaskProgress:
    return TaskProgress.of(name, task)


def _print_status(snapshot: JobSnapshot) -> None:
    why = f" ({snapshot.reason})" if snapshot.reason else ""
    print(f"job {snapshot.id} ({snapshot.name}) {snapshot.status}{why}")
    for name, task in snapshot.tasks.items():
        stage = _progress(name, task).stage_string()
        reason = f" ({task.reason})" if task.reason else ""
        print(f"  {stage} {task.status}{reason}")


async def _status(client: Client, args: argparse.Namespace) -> int:
    snapshot = await client.job_snapshot(args.job)
    logview = await client.logview_address(args.job)
    if args.json:
        _print_json({**msgspec.structs.asdict(snapshot), "logview": logview})
    else:
        _print_status(snapshot)
        if logview is not None:
            print(f"logview: {logview}")
    return EXIT_OK


async def _logview(client: Client, args: argparse.Namespace) -> int:
    if args.rotate == (args.job is not None):
        print("aiobatch logview: give a JOB, or --rotate (not both)", file=sys.stderr)
        return EXIT_USAGE
    if args.rotate:
        rotated = await client.rotate_logview_links()
        if args.json:
            _print_json({"rotated": rotated})
        else:
            print("every log-view link made so far is revoked" if rotated else "no log view")
        return EXIT_OK
    address = await client.logview_address(args.job, hours=args.hours)
    if args.json:
        _print_json({"url": address})
    elif address is None:
        print("aiobatch logview: the service serves no log view ([server] http)", file=sys.stderr)
        return EXIT_USAGE
    else:
        print(address)
    return EXIT_OK


async def _show_progress(client: Client, args: argparse.Namespace) -> int:
    snapshot = await client.job_snapshot(args.job)
    stages = [_progress(name, task) for name, task in snapshot.tasks.items()]
    if args.json:
        _print_json({s.name: s.stage_string() for s in stages})
    else:
        # PyODPS' exact string over the whole job, each task a stage (each ends with a tab).
        print(stage_progress_formatted_string(stage for s in stages for stage in s.stages))
    return EXIT_OK


async def _wait(client: Client, args: argparse.Namespace) -> int:
    snapshot = await client.wait_job(args.job)
    if args.json:
        _print_json(snapshot)
    else:
        _print_status(snapshot)
    return _result(snapshot)


def _action(name: str, method: str) -> Handler:
    """A command that calls ``Client.METHOD(job)`` and prints the job's status after."""

    async def act(client: Client, args: argparse.Namespace) -> int:
        call: Callable[[str], Awaitable[bool | None]] = getattr(client, method)
        changed = await call(args.job)
        status = client.cached_status(args.job).value  # as the action's answer left it
        if args.json:
            _print_json({"id": args.job, "action": name, "status": status})
        else:
            note = "" if changed is not False else " (nothing to change)"
            print(f"job {args.job} {status}{note}")
        return EXIT_OK

    return act


async def _stop(client: Client, args: argparse.Namespace) -> int:
    if args.task is None:
        return await _action("stop", "stop_job")(client, args)
    if args.index is None:
        print("aiobatch stop: give both TASK and INDEX to stop one instance", file=sys.stderr)
        return EXIT_USAGE
    await client.stop_instance(args.job, args.task, args.index)
    if args.json:
        _print_json({"id": args.job, "task": args.task, "index": args.index, "action": "stop"})
    else:
        print(f"instance {args.task}[{args.index}] of job {args.job} stopping")
    return EXIT_OK


async def _delete(client: Client, args: argparse.Namespace) -> int:
    """Each job in turn; one that cannot be deleted is named, the others still go."""
    results: list[dict[str, object]] = []
    for job_id in dict.fromkeys(args.jobs):
        try:
            await client.delete_job(job_id, stop=args.stop)
        except (LookupError, JobNotFinal) as exc:
            results.append({"id": job_id, "deleted": False, "error": str(exc)})
            if not args.json:
                print(f"aiobatch: {exc}", file=sys.stderr)
            continue
        results.append({"id": job_id, "deleted": True})
        if not args.json:
            print(f"job {job_id} deleted")
    if args.json:
        _print_json(results)
    return EXIT_OK if all(r["deleted"] for r in results) else EXIT_USAGE


async def _logs(client: Client, args: argparse.Namespace) -> int:
    stream: LogStream = "stderr" if args.stderr else "stdout"
    out = sys.stdout.buffer
    if args.follow:
        async for chunk in client.follow_log(args.job, args.task, args.index, stream=stream):
            out.write(chunk)
            out.flush()
    else:  # written as it comes: a log of any size costs one chunk of memory
        async for chunk in client.log_chunks(args.job, args.task, args.index, stream=stream):
            out.write(chunk)
    out.flush()
    return EXIT_OK


async def _watch(client: Client, job_id: str) -> None:
    """A bar per task on a terminal (lines otherwise), fed by the job's event stream."""
    async with client.subscribe(job_id) as events:
        snapshot = await client.job_snapshot(job_id)
        view = ProgressView(
            {name: task.total for name, task in snapshot.tasks.items()},
            sys.stderr,
            bars=sys.stderr.isatty(),
        )
        try:
            view.start(
                {
                    name: (task.status, task.reason, _progress(name, task))
                    for name, task in snapshot.tasks.items()
                }
            )
            if snapshot.status in JOB_TERMINAL:
                return
            fetched = time.monotonic()
            async for event in events:
                task = getattr(event, "task", None)
                progress = None
                if task is not None:
                    # Counts come from the service; a burst of events shares one request.
                    stale = time.monotonic() - fetched > WATCH_REFRESH_S
                    if stale or isinstance(event, TaskStateChanged):
                        snapshot = await client.job_snapshot(job_id)
                        fetched = time.monotonic()
                    progress = _progress(task, snapshot.tasks[task])
                view.update(event, progress)
                if isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
                    snapshot = await client.job_snapshot(job_id)
                    view.refresh([_progress(n, t) for n, t in snapshot.tasks.items()])
        finally:
            view.close()


Handler = Callable[["Client", argparse.Namespace], Awaitable[int]]

_HANDLERS: dict[str, Handler] = {
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "progress": _show_progress,
    "wait": _wait,
    "suspend": _action("suspend", "suspend_job"),
    "resume": _action("resume", "resume_job"),
    "retry": _action("retry", "retry_job"),
    "stop": _stop,
    "delete": _delete,
    **cli_envs.HANDLERS,
    "logs": _logs,
    "logview": _logview,
}

COMMANDS = frozenset(_HANDLERS)
