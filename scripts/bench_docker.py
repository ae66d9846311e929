"""Docker benchmarks: aiobatch's docker compute env against a plain aiodocker loop.

Both sides run in this process against the same engine, interleaved, in the same run:
40 containers of ``true`` at 4 in flight (with no network and on the default bridge), and
one container alone. The engine comes from ``$AIOBATCH_TEST_DOCKER_HOSTS`` (first host) or
the default socket, with the image that ``scripts/docker-engine up`` imports.

    .venv/bin/python scripts/bench_docker.py [--count 40] [--slots 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiodocker
import anyio

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.logging import configure_logging

REPO = Path(__file__).resolve().parent.parent
IMAGE = "aiobatch-test:busybox"


async def plain_loop(docker: aiodocker.Docker, count: int, slots: int, network: str) -> float:
    """Create, start, wait for and delete ``count`` containers, ``slots`` at a time."""
    limit = anyio.Semaphore(slots)
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": network},
    }

    async def one() -> None:
        async with limit:
            container = await docker.containers.create(config)
            await container.start()
            await container.wait()
            await container.delete(force=True)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return time.perf_counter() - began


async def aiobatch_job(host: str, root: Path, count: int, slots: int, network: str) -> float:
    """Submit one task of ``count`` containers to a fresh runtime; time submit to the end."""
    env = ComputeEnvConfig(kind="docker", hosts=(host,), slots=slots)
    spec = {
        "name": "bench",
        "tasks": [
            {"name": "t", "image": IMAGE, "command": ["true"], "instances": count,
             "network": network}
        ],
    }  # fmt: skip
    state = Path(tempfile.mkdtemp(prefix="state-", dir=root))
    async with Runtime(state, config=Config(compute_envs={"docker": env})) as rt:
        began = time.perf_counter()
        job = await rt.submit(spec)
        snapshot = await job.wait_for_completion()
        took = time.perf_counter() - began
    if snapshot.status != "SUCCEEDED":
        raise SystemExit(f"bench_docker: the aiobatch job ended {snapshot.status}")
    return took


async def interleaved(reps: int, *runs: Callable[[], Awaitable[float]]) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in runs]
    for _ in range(reps):
        for i, run in enumerate(runs):
            samples[i].append(await run())
    return samples


async def main(args: argparse.Namespace) -> dict[str, Any]:
    host = os.environ.get("AIOBATCH_TEST_DOCKER_HOSTS", "unix:///var/run/docker.sock").split()[0]
    docker = aiodocker.Docker(url=host)
    results: dict[str, Any] = {"host": host, "count": args.count, "slots": args.slots}
    try:
        await docker.images.inspect(IMAGE)
        with tempfile.TemporaryDirectory(prefix="aiobatch-bench-docker-") as tmp:
            root = Path(tmp)
            for network in ("none", "bridge"):

                async def plain(network: str = network) -> float:
                    return await plain_loop(docker, args.count, args.slots, network)

                async def ours(network: str = network) -> float:
                    return await aiobatch_job(host, root, args.count, args.slots, network)

                base, mine = await interleaved(args.reps, plain, ours)
                results[f"many_{network}"] = {"plain_s": base, "aiobatch_s": mine}

            async def plain_one() -> float:
                return await plain_loop(docker, 1, 1, "none")

            async def ours_one() -> float:
                return await aiobatch_job(host, root, 1, 1, "none")

            base, mine = await interleaved(max(args.reps, 5), plain_one, ours_one)
            results["one"] = {"plain_s": base, "aiobatch_s": mine}
    finally:
        await docker.close()
    return results


def report(results: dict[str, Any]) -> str:
    count = results["count"]
    lines = [
        "| what | aiobatch | plain aiodocker loop, same run | ratio |",
        "|---|---|---|---|",
    ]
    for network in ("none", "bridge"):
        section = results[f"many_{network}"]
        ours, base = statistics.median(section["aiobatch_s"]), statistics.median(section["plain_s"])
        lines.append(
            f"| {count} x `true`, {results['slots']} in flight, network {network} "
            f"| {ours:.2f} s ({count / ours:.1f}/s) | {base:.2f} s ({count / base:.1f}/s) "
            f"| {ours / base:.2f}x |"
        )
    one = results["one"]
    ours, base = statistics.median(one["aiobatch_s"]), statistics.median(one["plain_s"])
    lines.append(
        f"| one container, job end to end | {ours * 1000:.0f} ms | {base * 1000:.0f} ms "
        f"| +{(ours - base) * 1000:.0f} ms |"
    )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=Path("bench-results/docker.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    configure_logging("json", "warning")
    measured = anyio.run(main, arguments)
    out = arguments.json_out if arguments.json_out.is_absolute() else REPO / arguments.json_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(measured, indent=2) + "\n")
    print(report(measured))
