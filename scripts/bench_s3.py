"""S3 staging benchmark: aiobatch's S3 backend against a plain aiobotocore loop.

Against moto's S3 server on loopback (started here), in the same run: 1,000 small objects
in and back out with the same concurrency (16), and one 256 MiB object in and out. Each
measurement runs in a fresh process so its peak RSS can be read; for the large object the
peak is reported above the process's RSS just before the transfer.

    .venv/bin/python scripts/bench_s3.py [--small 1000] [--big-mib 256] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from aiobatch.config import S3Settings
from aiobatch.storage.base import Local, StorageURI
from aiobatch.storage.s3 import PART_SIZE, S3Backend, create_client

CONCURRENCY = 16
BUCKET = "bench"
MIB = 2**20


def settings(endpoint: str) -> S3Settings:
    return S3Settings(
        endpoint_url=endpoint,
        region="us-east-1",
        addressing_style="path",
        access_key_id="bench",
        secret_access_key="bench",
        max_transfers=CONCURRENCY,
    )


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def plain(
    endpoint: str, src: Path, dest: Path, prefix: str, opened: Callable[[], None]
) -> None:
    """Upload every file under ``src``, then download the prefix into ``dest``: by hand."""
    s = settings(endpoint)
    limit = anyio.CapacityLimiter(CONCURRENCY)
    async with create_client(s) as client:
        opened()

        async def put(path: Path) -> None:
            key = prefix + path.relative_to(src).as_posix()
            async with limit:
                if path.stat().st_size <= PART_SIZE:
                    await client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
                    return
                upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
                parts: list[dict[str, Any]] = []
                with path.open("rb") as f:
                    while chunk := f.read(PART_SIZE):
                        number = len(parts) + 1
                        part = await client.upload_part(
                            Bucket=BUCKET,
                            Key=key,
                            UploadId=upload["UploadId"],
                            PartNumber=number,
                            Body=chunk,
                        )
                        parts.append({"ETag": part["ETag"], "PartNumber": number})
                await client.complete_multipart_upload(
                    Bucket=BUCKET,
                    Key=key,
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": parts},
                )

        async def get(key: str) -> None:
            async with limit:
                response = await client.get_object(Bucket=BUCKET, Key=key)
                target = dest / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                async with response["Body"] as body:
                    with target.open("wb") as out:
                        while chunk := await body.read(PART_SIZE):
                            out.write(chunk)

        async with anyio.create_task_group() as tg:
            for path in sorted(src.rglob("*")):
                if path.is_file():
                    tg.start_soon(put, path)
        keys = []
        async for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix
        ):
            keys += [item["Key"] for item in page.get("Contents", [])]
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(get, key)


async def ours(
    endpoint: str, src: Path, dest: Path, prefix: str, opened: Callable[[], None]
) -> None:
    backend = S3Backend(settings(endpoint))
    await backend.open()
    opened()
    try:
        uri = StorageURI("s3", BUCKET, prefix)
        await backend.upload(Local(src.parent, src.name), uri)
        await backend.download(uri, Local(dest.parent, dest.name))
    finally:
        await backend.aclose()


def child(mode: str, endpoint: str, src: str, dest: str, prefix: str) -> None:
    """One measurement in this fresh process: seconds, RSS once the client is open, peak RSS."""
    before: list[float] = []
    began = time.perf_counter()
    run = ours if mode == "ours" else plain
    anyio.run(run, endpoint, Path(src), Path(dest), prefix, lambda: before.append(rss_mib()))
    took = time.perf_counter() - began
    print(json.dumps({"seconds": took, "rss_before_mib": before[0], "rss_peak_mib": rss_mib()}))


def measure(mode: str, endpoint: str, src: Path, work: Path, tag: str) -> dict[str, float]:
    dest = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    prefix = f"{tag}/{dest.name}/"
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, endpoint, str(src), str(dest), prefix],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def start_endpoint() -> tuple[subprocess.Popen[str], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    for line in server.stderr:
        if "Running on" in line:
            break
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


async def make_bucket(endpoint: str) -> None:
    s = settings(endpoint)
    async with create_client(s) as client:
        await client.create_bucket(Bucket=BUCKET)


def main(args: argparse.Namespace) -> dict[str, Any]:
    server, endpoint = start_endpoint()
    results: dict[str, Any] = {"concurrency": CONCURRENCY}
    try:
        anyio.run(make_bucket, endpoint)
        with tempfile.TemporaryDirectory(prefix="aiobatch-bench-s3-") as tmp:
            work = Path(tmp)
            small = work / "small"
            small.mkdir()
            for i in range(args.small):
                (small / f"{i:05d}.txt").write_bytes(os.urandom(1024))
            big = work / "big"
            big.mkdir()
            with (big / "blob.bin").open("wb") as f:
                for _ in range(args.big_mib):
                    f.write(os.urandom(MIB))
            for name, src in (("small", small), ("big", big)):
                runs: dict[str, list[dict[str, float]]] = {"ours": [], "plain": []}
                for _ in range(args.reps):
                    for mode in ("plain", "ours"):
                        runs[mode].append(measure(mode, endpoint, src, work, name))
                results[name] = runs
    finally:
        server.terminate()
        server.wait(timeout=10)
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| what (in and back out) | aiobatch | plain aiobotocore loop | throughput ratio |",
        "|---|---|---|---|",
    ]
    for name, what, size in (
        ("small", f"{args.small:,} objects of 1 KiB", args.small * 1024 * 2),
        ("big", f"one {args.big_mib} MiB object", args.big_mib * MIB * 2),
    ):
        ours_s = statistics.median(r["seconds"] for r in results[name]["ours"])
        plain_s = statistics.median(r["seconds"] for r in results[name]["plain"])
        lines.append(
            f"| {what}, {CONCURRENCY} in flight | {ours_s:.2f} s ({size / ours_s / MIB:.1f} MiB/s)"
            f" | {plain_s:.2f} s ({size / plain_s / MIB:.1f} MiB/s) | {plain_s / ours_s:.2f}x |"
        )
    peaks = [r["rss_peak_mib"] - r["rss_before_mib"] for r in results["big"]["ours"]]
    lines.append(
        f"| peak RSS above the process's own while moving the {args.big_mib} MiB object "
        f"| {max(peaks):.0f} MiB | | |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:7])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=Path("bench-results/s3.json"))
    arguments = parser.parse_args()
    measured = main(arguments)
    out = arguments.json_out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(measured, indent=2) + "\n")
    print(report(measured, arguments))
