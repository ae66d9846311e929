"""A real ``aiobatch serve`` process for tests, started the way systemd starts it: a datagram
socket is its NOTIFY_SOCKET, and READY=1 is waited for before anyone talks to it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process, UNIXDatagramSocket

from aiobatch import Client, JobHandle
from aiobatch.events import InstanceStateChanged, event_decoder
from tests.helpers import kill_leftovers

AIOBATCH = Path(sys.executable).with_name("aiobatch")


class Service:
    """One ``aiobatch serve`` process with its notify socket, state dir and control socket."""

    def __init__(
        self, root: Path, state_dir: Path, config: str = "", *, log: Path | None = None
    ) -> None:
        """``log``: a file its stdout and stderr are appended to (else they are the test's)."""
        self.root = root
        self.log = log
        self.state_dir = state_dir
        self.socket = root / "ctl.sock"
        self.config = root / "aiobatch.toml"
        self.config.write_text(config)
        self.process: Process | None = None
        self.notify: UNIXDatagramSocket | None = None

    async def start(self, **env: str) -> None:
        notify_path = self.root / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self.notify = await anyio.create_unix_datagram_socket(local_path=notify_path)
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(self.log.open("ab")) if self.log is not None else None
            self.process = await anyio.open_process(
                [
                    *(str(AIOBATCH), "serve", "--config", str(self.config)),
                    *("--state-dir", str(self.state_dir), "--socket", str(self.socket)),
                ],
                env={**os.environ, "NOTIFY_SOCKET": str(notify_path), **env},
                stdout=log,
                stderr=log,
            )
        assert await self.message() == "READY=1"
        assert await self.message() == f"STATUS=listening on {self.socket}"

    def log_text(self) -> bytes:
        """What the service wrote to its ``log`` file so far."""
        assert self.log is not None, "started without a log file"
        return self.log.read_bytes()

    async def message(self) -> str:
        assert self.notify is not None
        with anyio.fail_after(30):
            data, _ = await self.notify.receive()
        return data.decode()

    def client(self) -> Client:
        return Client(self.socket)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            assert await self.process.wait() == -signal.SIGKILL
        await self.close()

    async def close(self) -> None:
        if self.notify is not None:
            await self.notify.aclose()
            self.notify = None
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        if self.process is not None:
            await self.process.aclose()
            self.process = None

    def clean_up(self) -> None:
        """After the test: nothing of this service's runtime may outlive it, and its root
        (sockets, config, tokens: a temp dir of its own) goes."""
        kill_leftovers(self.state_dir)
        shutil.rmtree(self.root, ignore_errors=True)


async def submit_and_see_running(
    client: Client, spec: dict[str, Any], count: int
) -> tuple[JobHandle, list[InstanceStateChanged]]:
    """Submit, wait for ``count`` instances to run, then for the service to commit that."""
    seen: list[InstanceStateChanged] = []
    with anyio.fail_after(30):
        async with client.subscribe() as events:  # before submitting: nothing is missed
            job = await client.submit(spec)
            async for event in events:
                if isinstance(event, InstanceStateChanged) and event.job_id == job.id:
                    if event.state == "RUNNING":
                        seen.append(event)
                        if len(seen) == count:
                            break
    await client.list_jobs()  # answers after everything so far is committed
    return job, seen


def stored_events(state_dir: Path, job_id: str) -> list[Any]:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        rows = db.execute("SELECT body FROM events WHERE job_id = ? ORDER BY seq", (job_id,))
        return [event_decoder.decode(body) for (body,) in rows]
