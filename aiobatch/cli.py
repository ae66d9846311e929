"""The ``aiobatch`` command.

Exit codes: 0 job SUCCEEDED; 1 job FAILED or CANCELLED; 2 invalid spec, config or usage, or
``run``/``serve`` cannot start (one line says why and what to do: the database, the state dir,
the socket or the address); 3 the service cannot be reached; 4 the state dir's disk is full:
nothing was accepted, try again once there is space; 120 stdout could not be written (its
reader went), whatever the result; 130 interrupted (the job is stopped cleanly first).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anyio
import msgspec

from aiobatch import cli_client, views
from aiobatch.api import JobHandle, JobSnapshot, TaskProgress
from aiobatch.config import load_config
from aiobatch.errors import (
    ConfigError,
    JobNotFinal,
    JobNotRetryable,
    RuntimeClosed,
    ServiceUnavailable,
    SpecError,
    StartupError,
    StateDirUnwritable,
)
from aiobatch.events import Event, InstanceStateChanged, TaskStateChanged
from aiobatch.logging import configure_logging
from aiobatch.lossy_stream import lossy
from aiobatch.model import TaskRec
from aiobatch.progress import ProgressView
from aiobatch.runtime import Runtime
from aiobatch.spec import JobDef, json_schema, load_spec
from aiobatch.spec_convert import printable
from aiobatch.states import JobState

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_UNWRITABLE = 4
# After the job, how long ``run`` waits for its webhook deliveries (a Ctrl-C stops waiting);
# those not made by then stay stored, for the next start on the same state dir.
NOTIFY_WAIT_S = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiobatch", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one job in this process and exit with its result")
    run.add_argument("spec", type=Path, help="job spec (.yaml, .yml, .json or .toml)")
    run.add_argument("--state-dir", type=Path, help="where state, logs and work dirs live")
    run.add_argument("--config", type=Path, help="configuration file (TOML)")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--verbose", action="store_true", help="log runtime events too")
    run.add_argument(
        "--ui",
        nargs="?",
        const="127.0.0.1:0",
        metavar="HOST:PORT",
        help="serve the job's page in a browser while it runs (default 127.0.0.1, any port)",
    )

    validate = commands.add_parser("validate", help="check a job spec and list every problem")
    validate.add_argument("spec", type=Path)
    validate.add_argument("--config", type=Path, help="configuration file (TOML)")

    commands.add_parser("schema", help="print the JSON Schema of the job spec")

    serve = commands.add_parser("serve", help="run the service: jobs submitted over a socket")
    serve.add_argument("--config", type=Path, help="configuration file (TOML)")
    serve.add_argument("--state-dir", type=Path, help="where state, logs and work dirs live")
    serve.add_argument("--socket", type=Path, help="control socket (default: see README)")

    cli_client.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aiobatch`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "schema":
            sys.stdout.write(msgspec.json.format(msgspec.json.encode(json_schema())).decode())
            sys.stdout.write("\n")
            return EXIT_OK
        if args.command == "validate":
            return _validate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command in cli_client.COMMANDS:
            return cli_client.run_command(args)
        return _run(args)
    except (SpecError, ConfigError) as exc:
        print(f"aiobatch: invalid input:\n{_indent(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except StartupError as exc:  # before anything was recovered; starting again cannot help
        print(f"aiobatch: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (LookupError, JobNotRetryable, JobNotFinal) as exc:
        # LookupError: an unknown job, task or instance.
        print(f"aiobatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ServiceUnavailable, RuntimeClosed) as exc:
        print(f"aiobatch: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except StateDirUnwritable as exc:
        print(f"aiobatch: {exc}", file=sys.stderr)
        return EXIT_UNWRITABLE
    except KeyboardInterrupt:  # before any job was submitted: nothing to stop
        print("aiobatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    defn = load_spec(
        args.spec,
        compute_envs=config.env_kinds(),
        templates=config.templates,
        max_instances=config.max_instances,
    )
    instances = sum(task.instances for task in defn.tasks)
    print(f"{args.spec}: valid: job {defn.name!r}, {len(defn.tasks)} tasks, {instances} instances")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from aiobatch.service import serve

    config = load_config(args.config)
    configure_logging(config.logging.format, config.logging.level)
    anyio.run(
        partial(
            serve, config, state_dir=args.state_dir, socket=args.socket, config_path=args.config
        )
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # The progress view already tells what the info log would; show warnings and worse.
    configure_logging(config.logging.format, config.logging.level if args.verbose else "warning")
    runtime = Runtime(args.state_dir, config=config, logview=args.ui)
    defn = runtime.resolve(args.spec)  # bad input fails here, before any state is written
    return anyio.run(_run_job, runtime, defn, args)


async def _run_job(runtime: Runtime, defn: JobDef, args: argparse.Namespace) -> int:
    interrupted = False

    async def stop_on_signal(signals: AsyncIterator[int], job: JobHandle) -> None:
        nonlocal interrupted
        async for _ in signals:
            interrupted = True
            await job.stop()

    # Listen before anything starts: a Ctrl-C at any point from here on stops the job cleanly.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with runtime:
            job = await runtime.submit(defn)
            if args.ui is not None:
                print(f"aiobatch: job page: {await job.get_logview_address()}", file=sys.stderr)
            with _progress(runtime, job, enabled=not args.quiet):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_on_signal, signals, job)
                    await job.wait_for_completion()
                    tg.cancel_scope.cancel()
            await _deliveries_sent(runtime, signals)
            snapshot = await job.snapshot(instances=True)
    # Written once the runtime is closed: a reader gone now cannot touch its shutdown.
    if args.json:
        sys.stdout.write(msgspec.json.encode(snapshot).decode() + "\n")
    elif not args.quiet:
        _print_summary(runtime, snapshot)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if snapshot.status == JobState.SUCCEEDED else EXIT_FAILED


async def _deliveries_sent(runtime: Runtime, signals: AsyncIterator[int]) -> None:
    """Wait, bounded, for the webhooks of what happened (a job's end above all) to go out."""
    async with anyio.create_task_group() as tg:

        async def stop_waiting_on_signal() -> None:
            async for _ in signals:
                tg.cancel_scope.cancel()

        tg.start_soon(stop_waiting_on_signal)
        with anyio.move_on_after(NOTIFY_WAIT_S):
            await runtime.notifications_settled()
        tg.cancel_scope.cancel()
    pending = runtime.pending_notifications
    if pending:
        print(
            f"aiobatch: webhook deliveries of {pending} job(s) not made yet; they are kept "
            "and made at the next start on this state dir",
            file=sys.stderr,
        )


def progress_of(task: TaskRec) -> TaskProgress:
    return TaskProgress(name=task.name, running=task.active, terminated=task.done, total=task.total)


@contextmanager
def _progress(runtime: Runtime, job: JobHandle, *, enabled: bool) -> Iterator[None]:
    """Show the job's progress on stderr while the context is open."""
    if not enabled:
        yield
        return
    records = runtime.live_tasks(job.id)
    view = ProgressView(
        {name: task.total for name, task in records.items()},
        lossy(sys.stderr),  # a reader gone (a pipe into head) must not end the run
        bars=sys.stderr.isatty(),
    )

    def show(event: Event) -> None:
        if event.job_id != job.id:
            return
        progress = None
        if isinstance(event, TaskStateChanged | InstanceStateChanged):
            progress = progress_of(records[event.task])
        view.update(event, progress)

    view.start(
        {
            name: (task.state.value, runtime.waiting_reason(task), progress_of(task))
            for name, task in records.items()
        }
    )
    unsubscribe = runtime.on_event(show)
    try:
        yield
    finally:
        unsubscribe()
        view.close()


def _print_summary(runtime: Runtime, snapshot: JobSnapshot) -> None:
    took = (snapshot.ended_at or 0) - (snapshot.started_at or snapshot.submitted_at)
    print(f"job {snapshot.id} ({snapshot.name}) {snapshot.status} in {took:.2f}s")
    for name, task in snapshot.tasks.items():
        why = f" ({printable(task.reason)})" if task.reason else ""
        print(f"  {TaskProgress.of(name, task).stage_string()} {task.status}{why}")
        for inst in task.instances or ():
            if inst.status == "FAILED":
                print(f"    [{inst.index}] attempts={inst.attempts} {printable(inst.reason or '')}")
                log = runtime.log_path(snapshot.id, name, inst.index, "stderr")
                for line in views.tail(log, 3):  # the task's own text: shown, never obeyed
                    print(f"      | {printable(line)}")
