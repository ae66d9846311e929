"""A runtime in a process of its own, for tests that kill it: it writes its pid, opens the state
dir (recovering what is there), submits a job if given one and prints its id, then prints
``running`` once that many instances run, and waits to be killed (or for its jobs to end).

``--slow-commits [SECONDS]`` holds for 30 s (or SECONDS) every store transaction that changes
instances (but those that accept jobs): a crash then comes, for certain, before the starts of
instances are committed, and nothing else (a write at open) holds the job's submission up
behind it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import anyio
import msgspec

from aiobatch import Runtime
from aiobatch.config import Config
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.logging import configure_logging
from aiobatch.store import Store


def hold_commits(seconds: float) -> None:
    write_pending = Store.write_pending

    async def slow(self: Store) -> None:
        if self._batch.instances and not self._batch.new_jobs:
            await anyio.sleep(seconds)
        await write_pending(self)

    Store.write_pending = slow  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    config = msgspec.convert(json.loads(args.config), Config)
    async with Runtime(args.state_dir, config=config) as rt:
        running: set[int] = set()
        enough = anyio.Event()

        def watch(event: Event) -> None:
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                running.add(event.index)
                if len(running) >= args.running:
                    enough.set()

        rt.on_event(watch)
        if args.spec:
            job = await rt.submit(json.loads(args.spec))
            print(job.id, flush=True)
            if args.running:
                await enough.wait()
                await rt.list_jobs()  # answers once all so far is stored
                print("running", flush=True)
        await anyio.sleep_forever()


parser = argparse.ArgumentParser()
parser.add_argument("state_dir")
parser.add_argument("pidfile")
parser.add_argument("config", help="the Config as JSON")
parser.add_argument("spec", nargs="?", help="a job to submit, as JSON")
parser.add_argument("--running", type=int, default=0)
parser.add_argument("--slow-commits", type=float, nargs="?", const=30.0, metavar="SECONDS")
arguments = parser.parse_args()
if arguments.slow_commits is not None:
    hold_commits(arguments.slow_commits)
Path(arguments.pidfile).write_text(f"{os.getpid()}\n")
configure_logging("json", "info", sys.stderr)  # stdout carries only what the test reads
anyio.run(main, arguments)
