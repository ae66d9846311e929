"""S3 mappings against a real S3-compatible HTTP endpoint on loopback (moto's server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import Runtime, SpecError
from aiobatch.config import Config, S3Settings, StorageConfig
from tests.integration.conftest import BUCKET, read, settings

pytestmark = pytest.mark.anyio


def config(endpoint: str) -> Config:
    return Config(storage=StorageConfig(s3=settings(endpoint)))


async def test_split_render_with_s3_inputs_outputs_and_logs(
    s3: Any, s3_endpoint: str, state_dir: Path
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="assets/a.txt", Body=b"A")
    await s3.put_object(Bucket=BUCKET, Key="assets/sub/b.txt", Body=b"B")
    spec = {
        "name": "frames",
        "tasks": [
            {
                "name": "split",
                "command": "seq 0 3 > parts.txt",
                "outputs": [{"path": "parts.txt", "to": "s3://bkt/{job_id}/parts.txt"}],
            },
            {
                "name": "render",
                "depends_on": ["split"],
                "instances": 4,
                "inputs": [
                    {"from": "s3://bkt/{job_id}/parts.txt", "path": "in/parts.txt"},
                    {"from": "s3://bkt/assets/", "path": "assets/"},
                ],
                "command": "mkdir out; sed -n $((AIOBATCH_INSTANCE_INDEX + 1))p in/parts.txt "
                "> out/frame.txt; cat assets/a.txt assets/sub/b.txt >> out/frame.txt; "
                "echo rendered $AIOBATCH_INSTANCE_INDEX",
                "outputs": [{"path": "out/", "to": "s3://bkt/{job_id}/frames/{index}/"}],
                "stdout": "s3://bkt/{job_id}/logs/",
            },
        ],
    }
    async with Runtime(state_dir, config=config(s3_endpoint)) as rt:
        job = await rt.submit(spec)
        await job.wait_for_success()
    for index in range(4):
        assert await read(s3, f"{job.id}/frames/{index}/frame.txt") == f"{index}\nAB".encode()
        assert (
            await read(s3, f"{job.id}/logs/render.{index}.stdout") == f"rendered {index}\n".encode()
        )


async def test_missing_object_fails_staging(s3: Any, s3_endpoint: str, state_dir: Path) -> None:
    spec = {
        "name": "missing",
        "tasks": [
            {"name": "t", "command": "true", "inputs": [{"from": "s3://bkt/nope", "path": "x"}]}
        ],
    }
    async with Runtime(state_dir, config=config(s3_endpoint)) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    assert (inst.status, inst.reason) == ("FAILED", "stage_in_failed: s3://bkt/nope not found")


async def test_a_key_escaping_the_work_dir_is_refused(
    s3: Any, s3_endpoint: str, state_dir: Path
) -> None:
    await s3.put_object(Bucket=BUCKET, Key="evil/../../../escaped.txt", Body=b"x")
    spec = {
        "name": "evil",
        "tasks": [
            {"name": "t", "command": "true", "inputs": [{"from": "s3://bkt/evil/", "path": "in/"}]}
        ],
    }
    async with Runtime(state_dir, config=config(s3_endpoint)) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    assert inst.status == "FAILED"
    assert inst.reason is not None and "would land outside" in inst.reason
    assert not [p async for p in anyio.Path(state_dir).rglob("escaped.txt")]


async def test_large_output_goes_up_in_parts(s3: Any, s3_endpoint: str, state_dir: Path) -> None:
    spec = {
        "name": "big",
        "tasks": [
            {
                "name": "t",
                "command": "head -c 20000000 /dev/zero > big.bin",
                "outputs": [{"path": "big.bin", "to": "s3://bkt/big.bin"}],
            }
        ],
    }
    async with Runtime(state_dir, config=config(s3_endpoint)) as rt:
        await (await rt.submit(spec)).wait_for_success()
    head = await s3.head_object(Bucket=BUCKET, Key="big.bin")
    assert head["ContentLength"] == 20_000_000
    assert head["ETag"].strip('"').endswith("-3")  # three 8 MiB parts: a multipart upload


async def test_a_uri_names_a_storage_profile(s3: Any, s3_endpoint: str, state_dir: Path) -> None:
    await s3.put_object(Bucket=BUCKET, Key="profiled/in.txt", Body=b"via profile")
    storage = StorageConfig(
        s3=S3Settings(endpoint_url="http://127.0.0.1:9", region="us-east-1"),  # unused here
        profiles={"local": settings(s3_endpoint)},
    )
    spec = {
        "name": "profiled",
        "tasks": [
            {
                "name": "t",
                "inputs": [{"from": "s3://local@bkt/profiled/in.txt", "path": "in.txt"}],
                "outputs": [{"path": "in.txt", "to": "s3://local@bkt/profiled/out.txt"}],
                "command": "cat in.txt",
            }
        ],
    }
    async with Runtime(state_dir, config=Config(storage=storage)) as rt:
        await (await rt.submit(spec)).wait_for_success()
        bad = {"name": "bad", "tasks": [{"name": "t", "command": "true", "stdout": "s3://nope@b/"}]}
        with pytest.raises(SpecError, match=r"\$\.tasks\[0\]\.stdout: unknown storage profile"):
            await rt.submit(bad)
    assert await read(s3, "profiled/out.txt") == b"via profile"


async def test_an_unreachable_endpoint_fails_staging_after_retries(state_dir: Path) -> None:
    dead = S3Settings(
        endpoint_url="http://127.0.0.1:9",  # loopback, nothing listens
        region="us-east-1",
        access_key_id="k",
        secret_access_key="s",
        max_attempts=2,
    )
    spec = {
        "name": "nowhere",
        "tasks": [
            {"name": "t", "command": "true", "inputs": [{"from": "s3://bkt/k", "path": "k"}]}
        ],
    }
    async with Runtime(state_dir, config=Config(storage=StorageConfig(s3=dead))) as rt:
        job = await rt.submit(spec)
        with anyio.fail_after(60):
            await job.wait_for_completion()
        [inst] = (await job.get_task_result("t")).instances or []
    assert inst.status == "FAILED"
    assert inst.reason is not None
    assert inst.reason.startswith("stage_in_failed: s3://bkt/k ")
    assert "127.0.0.1:9" in inst.reason


async def test_an_output_that_is_a_fifo_or_a_device_is_refused_at_once(
    s3: Any, s3_endpoint: str, state_dir: Path
) -> None:
    """Read as a file, a FIFO would block the upload (and its transfer slot) for ever and a
    device would never end: neither is opened; a folder's regular files go up alone."""
    made = "mkfifo fifo; ln -s /dev/zero zero; mkdir d; echo kept > d/kept; mkfifo d/fifo"
    tasks = [
        {"name": name, "command": made, "on_failure": "continue", "outputs": [output]}
        for name, output in (
            ("fifo", {"path": "fifo", "to": "s3://bkt/fifo"}),
            ("zero", {"path": "zero", "to": "s3://bkt/zero"}),
            ("folder", {"path": "d/", "to": "s3://bkt/d/"}),
        )
    ]
    async with Runtime(state_dir, config=config(s3_endpoint)) as rt:
        job = await rt.submit({"name": "odd", "tasks": tasks})
        with anyio.fail_after(60):
            await job.wait_for_completion()
        reasons = {
            name: ((await job.get_task_result(name)).instances or [])[0].reason
            for name in ("fifo", "zero", "folder")
        }
    refused = "stage_out_failed: output {} is a link or not a regular file"
    assert reasons == {
        "fifo": refused.format("fifo"),
        "zero": refused.format("zero"),
        "folder": None,
    }
    listed = (await s3.list_objects_v2(Bucket=BUCKET)).get("Contents", [])
    ours = [item["Key"] for item in listed if item["Key"].startswith(("fifo", "zero", "d/"))]
    assert ours == ["d/kept"]
    assert await read(s3, "d/kept") == b"kept\n"
