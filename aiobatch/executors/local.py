"""Local executor: each attempt a subprocess in its own session and process group.

The child writes straight into the per-instance log files (no pipes to pump), and its end
is awaited on a pidfd, which needs no child watcher thread and no SIGCHLD handler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from aiobatch.engine import Outcome
from aiobatch.executors.base import InstanceContext
from aiobatch.spec import TaskDef

_LOCAL_UNSUPPORTED = ("image",)


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_orphan(pid: int, job_id: str, task: str, index: int) -> bool:
    """Kill the process group of an attempt left running by a runtime that died.

    The pid is only trusted if the process's environment names this very instance, so a
    reused pid never gets an unrelated process killed.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    expected = {
        f"AIOBATCH_JOB_ID={job_id}".encode(),
        f"AIOBATCH_TASK_NAME={task}".encode(),
        f"AIOBATCH_INSTANCE_INDEX={index}".encode(),
    }
    if not expected.issubset(environ):
        return False
    _kill_group(pid, signal.SIGKILL)
    return True


class LocalExecutor:
    kind = "local"

    async def open(self) -> None:
        pass  # nothing to acquire: processes need no client

    async def aclose(self) -> None:
        pass

    def unsupported(self, task: TaskDef) -> list[str]:
        return [name for name in _LOCAL_UNSUPPORTED if getattr(task, name)]

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        command = ctx.task.command
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command or ())
        # Opening two files and forking in the event loop is deliberate: it is what asyncio's
        # own subprocess support does, minus its pipes and transports, and takes ~0.2 ms.
        with open(ctx.stdout_path, "ab") as out, open(ctx.stderr_path, "ab") as err:  # noqa: ASYNC230
            try:
                process = subprocess.Popen(  # noqa: ASYNC220
                    argv,
                    cwd=ctx.work_dir,
                    env=ctx.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                return Outcome(reason=f"exec_failed: {argv[0]}: {exc.strerror}")
        began = time.monotonic()
        pidfd = os.pidfd_open(process.pid)
        try:
            on_started(process.pid)
            return await self._wait(ctx, process, pidfd, began)
        finally:
            os.close(pidfd)

    async def _wait(
        self, ctx: InstanceContext, process: subprocess.Popen[bytes], pidfd: int, began: float
    ) -> Outcome:
        timeout = ctx.task.timeout_s
        scope = ctx.control.scope
        try:
            with scope:
                if timeout is not None:
                    scope.deadline = min(scope.deadline, anyio.current_time() + timeout)
                await anyio.wait_readable(pidfd)
            if scope.cancelled_caught:
                await self._terminate(process.pid, pidfd, ctx.kill_grace_s)
        except BaseException:
            # Cancelled from outside (shutdown, Ctrl-C): never leave the process behind.
            with anyio.CancelScope(shield=True):
                await self._terminate(process.pid, pidfd, ctx.kill_grace_s)
                self._reap(process)
            raise
        returncode = self._reap(process)
        duration = time.monotonic() - began
        reason = None
        if scope.cancelled_caught and ctx.control.stop_reason is None:
            reason = "timeout"
        if returncode < 0:
            return Outcome(signal=-returncode, reason=reason, duration_s=duration)
        return Outcome(exit_code=returncode, reason=reason, duration_s=duration)

    @staticmethod
    async def _terminate(pid: int, pidfd: int, grace: float) -> None:
        """TERM the process group, KILL it after ``grace`` if the leader is still there."""
        _kill_group(pid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            await anyio.wait_readable(pidfd)
            return
        _kill_group(pid, signal.SIGKILL)
        await anyio.wait_readable(pidfd)

    @staticmethod
    def _reap(process: subprocess.Popen[bytes]) -> int:
        # The leader is a zombie here, so its pid still names the group: clear out anything
        # it left running, then collect its status (immediate, it has exited).
        _kill_group(process.pid, signal.SIGKILL)
        return process.wait()
