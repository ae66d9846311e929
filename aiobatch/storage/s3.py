"""``s3://bucket/key`` backend on aiobotocore, for any S3-compatible endpoint.

Imported only when a job maps an ``s3://`` URI. One client per endpoint, opened with the
runtime's executors and closed after the last instance; botocore's own retry modes; at most
``max_transfers`` objects in flight; files stream in and out in parts, so a large object
never sits in memory.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import Any

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from anyio import AsyncFile
from botocore.exceptions import BotoCoreError, ClientError

from aiobatch.config import S3Settings
from aiobatch.storage import beneath
from aiobatch.storage.base import Local, StorageError, StorageURI

PART_SIZE = 8 * 2**20  # multipart part and read chunk size: bounds memory per transfer
ABORT_LIMIT_S = 30.0  # an abandoned multipart upload is aborted within this, or left to expire


def create_client(settings: S3Settings) -> Any:
    """An aiobotocore S3 client (an async context manager) for one endpoint's settings."""
    config = AioConfig(
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        s3={"addressing_style": settings.addressing_style},
        max_pool_connections=settings.max_transfers,
    )
    keys: dict[str, str] = {}
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        keys = {
            "aws_access_key_id": settings.access_key_id,
            "aws_secret_access_key": settings.secret_access_key,
        }
    return get_session().create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        config=config,
        **keys,  # else botocore's standard chain: env, shared files, ...
    )


class S3Profiles:
    """The ``s3`` backend: one client per configured endpoint, chosen by the URI's profile."""

    scheme = "s3"

    def __init__(self, default: S3Settings, profiles: dict[str, S3Settings]) -> None:
        self._backends = {None: S3Backend(default)} | {
            name: S3Backend(settings) for name, settings in profiles.items()
        }

    async def open(self) -> None:
        for backend in self._backends.values():
            await backend.open()

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()

    def _for(self, uri: StorageURI) -> S3Backend:
        try:
            return self._backends[uri.profile]
        except KeyError:
            raise StorageError(f"{uri}: unknown storage profile {uri.profile!r}") from None

    async def download(self, uri: StorageURI, dest: Local) -> None:
        await self._for(uri).download(uri, dest)

    async def upload(self, src: Local, uri: StorageURI) -> None:
        await self._for(uri).upload(src, uri)


class S3Backend:
    """One endpoint's client."""

    scheme = "s3"

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._limit = anyio.CapacityLimiter(settings.max_transfers)

    async def open(self) -> None:
        self._client = await self._stack.enter_async_context(create_client(self.settings))

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def download(self, uri: StorageURI, dest: Local) -> None:
        if not uri.is_prefix:
            await self._get(uri, dest)
            return
        # Every key is checked before anything is written: a key like "p/../../x" fails the
        # whole download, and nothing lands outside the work dir.
        targets = {key: dest.child(key[len(uri.key) :]) async for key in self._keys(uri)}
        await anyio.to_thread.run_sync(beneath.make_folder, dest)
        async with anyio.create_task_group() as tg:
            for key, target in targets.items():
                tg.start_soon(self._get, uri.child(key), target)

    async def upload(self, src: Local, uri: StorageURI) -> None:
        if await anyio.to_thread.run_sync(beneath.kind, src) != "folder":
            await self._put(src, uri)  # not a regular file (a link, a FIFO): refused there
            return
        files = await anyio.to_thread.run_sync(_files_below, src)
        async with anyio.create_task_group() as tg:
            for relative in files:
                tg.start_soon(self._put, src.child(relative), uri.child(uri.key + relative))

    async def _keys(self, uri: StorageURI) -> Any:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=uri.location, Prefix=uri.key):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        yield item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{uri}: {_why(exc)}") from None

    async def _get(self, uri: StorageURI, dest: Local) -> None:
        async with self._limit:
            try:
                response = await self._client.get_object(Bucket=uri.location, Key=uri.key)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"{uri} {_why(exc)}") from None
            async with response["Body"] as body:  # closed (its connection freed) on any error
                fd = await anyio.to_thread.run_sync(beneath.create_file, dest)
                async with anyio.wrap_file(os.fdopen(fd, "wb")) as out:
                    while chunk := await body.read(PART_SIZE):
                        await out.write(chunk)

    async def _put(self, src: Local, uri: StorageURI) -> None:
        async with self._limit:
            # Opened once, as a regular file (a FIFO would block, a device never end), and
            # read from that descriptor by the size it had then.
            fd, size = await anyio.to_thread.run_sync(beneath.open_regular, src)
            async with anyio.wrap_file(os.fdopen(fd, "rb")) as f:
                try:
                    if size <= PART_SIZE:
                        data = await f.read(size)
                        await self._client.put_object(Bucket=uri.location, Key=uri.key, Body=data)
                    else:
                        await self._multipart(f, size, uri)
                except (ClientError, BotoCoreError) as exc:
                    raise StorageError(f"{uri}: {_why(exc)}") from None

    async def _multipart(self, f: AsyncFile[bytes], size: int, uri: StorageURI) -> None:
        client, bucket, key = self._client, uri.location, uri.key
        upload = await client.create_multipart_upload(Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        parts = []
        try:
            number, left = 1, size  # what it held when opened: a file still growing ends there
            while left > 0 and (chunk := await f.read(min(PART_SIZE, left))):
                left -= len(chunk)
                part = await client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                parts.append({"ETag": part["ETag"], "PartNumber": number})
                number += 1
            await client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(ABORT_LIMIT_S):
                await client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise


def _files_below(src: Local) -> list[str]:
    return [relative for relative, is_folder in beneath.entries(src) if not is_folder]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return "not found"
        if code == "NoSuchBucket":
            return "bucket not found"
        return f"{code}: {exc.response.get('Error', {}).get('Message', '')}".strip()
    return str(exc)
