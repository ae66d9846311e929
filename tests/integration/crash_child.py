"""Runs a job in a runtime, reports once two instances run, then waits to be killed."""

from __future__ import annotations

import sys

import anyio

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.logging import configure_logging


async def main(state_dir: str, gate: str) -> None:
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})
    spec = {
        "name": "survivor",
        "tasks": [
            # No retries: attempts lost with the runtime must not be charged to them.
            {"name": "first", "instances": 6, "command": f'test -e "{gate}" || exec sleep 60'},
            {"name": "then", "depends_on": ["first"], "command": "true"},
        ],
    }  # fmt: skip
    async with Runtime(state_dir, config=config) as rt:
        running: set[int] = set()
        both = anyio.Event()

        def watch(event: Event) -> None:
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                running.add(event.index)
                if len(running) == 2:
                    both.set()

        rt.bus.subscribe(watch)
        job = await rt.submit(spec)
        await both.wait()
        await rt.store.flush()
        print(job.id, flush=True)
        await anyio.sleep_forever()


configure_logging("json", "info", sys.stderr)  # stdout carries only the job id
anyio.run(main, sys.argv[1], sys.argv[2])
