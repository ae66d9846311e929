"""What each client command does: one ``Client`` call and its printout (or JSON with
``--json``), and the live progress of ``submit --watch``.

Imported only when a client command runs (``cli_client.run_command``), not at start.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from aiobatch import cli_envs
from aiobatch.api import (
    JobSnapshot,
    LogStream,
    TaskProgress,
    TaskResult,
    stage_progress_formatted_string,
)
from aiobatch.cli_client import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from aiobatch.errors import JobNotFinal
from aiobatch.events import JobStateChanged, TaskStateChanged
from aiobatch.labels import label_filters
from aiobatch.progress import ProgressView
from aiobatch.states import JOB_TERMINAL, JobState

if TYPE_CHECKING:
    from aiobatch.client import Client

WATCH_REFRESH_S = 0.1  # --watch asks for fresh counts at most this often


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

HANDLERS: dict[str, Handler] = {
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
