"""Docker executor: each attempt one container, through aiodocker, on one of the env's hosts.

Imported only when a job uses a docker compute env, so a local-only run never pays for
aiodocker. The instance work dir is bind-mounted (at ``/aiobatch`` unless the task's
``workdir`` says otherwise) and is the container's working dir; stdout and stderr are
followed while the container runs and appended to the same log files local instances use.
"""

from __future__ import annotations

import errno
import json
import os
import ssl
import time
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiodocker
import anyio
import structlog
from aiodocker.containers import DockerContainer
from anyio.abc import TaskGroup
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from aiobatch.attempt import AttemptKey, FoundAttempt, InstanceContext, Outcome
from aiobatch.config import ComputeEnvConfig
from aiobatch.spec import TaskDef
from aiobatch.units import parse_duration

CONTAINER_WORKDIR = "/aiobatch"
LABEL_PREFIX = "aiobatch."
_UNSUPPORTED: tuple[str, ...] = ()  # every task field has a meaning for a container
NO_CONNECTION = 900  # aiodocker's status for "cannot connect to the engine"
DRAIN_S = 10.0  # a host that did not answer gets no new attempt for this long
HEALTH_TIMEOUT_S = 5.0
CREATE_LIMIT_S = 60.0  # a container create the engine has not answered by then has failed
STOP_MARGIN_S = 30.0  # beyond kill_grace, how long a stop may take before we give up on it
OOM_FLAG_CHECKS, OOM_FLAG_WAIT_S = 10, 0.1  # how long a late OOM flag is waited for

log = structlog.get_logger("aiobatch.docker")


class DockerExecutor:
    kind = "docker"

    def __init__(
        self, env_name: str, config: ComputeEnvConfig, runtime_id: Callable[[], str]
    ) -> None:
        self.env_name = env_name
        self.config = config
        # Read when opened: validating a spec must not write into the state dir.
        self._runtime_id_source = runtime_id
        self.runtime_id = ""
        self._clients: dict[str, aiodocker.Docker] = {}
        self._in_flight = dict.fromkeys(config.hosts, 0)
        self._down_until: dict[str, float] = {}  # drained hosts: monotonic time to re-check
        # Containers of attempts that ended, until their end is stored (then ``release``).
        self._ended: dict[AttemptKey, tuple[DockerContainer, bool]] = {}

    def unsupported(self, task: TaskDef) -> list[str]:
        return [name for name in _UNSUPPORTED if getattr(task, name)]

    async def open(self, background: TaskGroup) -> None:
        self.runtime_id = self._runtime_id_source()
        for host in self.config.hosts:
            context = self._ssl_context(host)
            # aiodocker speaks plain HTTP to tcp:// even when given a TLS context.
            url = "https://" + host.removeprefix("tcp://") if context is not None else host
            self._clients[host] = aiodocker.Docker(url=url, ssl_context=context)
        await self._check_hosts()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    def _ssl_context(self, host: str) -> ssl.SSLContext | None:
        if not host.startswith(("tcp://", "https://")) or self.config.tls_ca_cert is None:
            return None
        context = ssl.create_default_context(cafile=self.config.tls_ca_cert)
        if self.config.tls_cert is not None:
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def _engine_retrying(self) -> AsyncRetrying:
        """Retry an engine that does not answer, with exponential backoff, for a while."""
        return AsyncRetrying(
            retry=retry_if_exception(_no_connection),
            wait=wait_exponential(multiplier=0.1, max=5),
            stop=stop_after_delay(parse_duration(self.config.engine_retry)),
            sleep=anyio.sleep,
            reraise=True,
        )

    def _pick_host(self) -> str:
        """The healthy host with the fewest attempts in flight (the scheduler caps the total).

        When every host is drained, the one that comes back soonest: its attempt is retried
        until ``engine_retry`` runs out.
        """
        now = time.monotonic()
        healthy = [host for host in self._in_flight if self._down_until.get(host, 0) <= now]
        if not healthy:
            return min(self._in_flight, key=lambda host: self._down_until.get(host, 0))
        return min(healthy, key=self._in_flight.__getitem__)

    def _drain(self, host: str, why: str) -> None:
        """Place nothing on ``host`` for a while; the next attempt that picks it re-checks."""
        if self._down_until.get(host, 0) <= time.monotonic():
            log.warning("docker_host_drained", env=self.env_name, host=host, why=why)
        self._down_until[host] = time.monotonic() + DRAIN_S

    async def _check_hosts(self) -> None:
        """Ask every engine for its version, at once; drain those that do not answer."""

        async def check(host: str) -> None:
            try:
                with anyio.fail_after(HEALTH_TIMEOUT_S):
                    await self._clients[host].version()
            except (aiodocker.DockerError, TimeoutError, OSError) as exc:
                self._drain(host, _message(exc))

        async with anyio.create_task_group() as tg:
            for host in self._clients:
                tg.start_soon(check, host)

    def labels(self, ctx: InstanceContext, offsets: tuple[int, int] = (0, 0)) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}runtime": self.runtime_id,
            f"{LABEL_PREFIX}job": ctx.job_id,
            f"{LABEL_PREFIX}task": ctx.task.name,
            f"{LABEL_PREFIX}index": str(ctx.index),
            f"{LABEL_PREFIX}attempt": str(ctx.attempt),
            # Where this attempt's output begins in the instance's log files (earlier
            # attempts come before it): a re-adoption rewrites the logs from there.
            f"{LABEL_PREFIX}stdout_offset": str(offsets[0]),
            f"{LABEL_PREFIX}stderr_offset": str(offsets[1]),
        }

    def container_config(
        self, ctx: InstanceContext, offsets: tuple[int, int] = (0, 0)
    ) -> dict[str, Any]:
        """``offsets``: the log files' sizes, where this attempt's output will begin."""
        task = ctx.task
        workdir = task.workdir or CONTAINER_WORKDIR
        command = task.command
        host_config: dict[str, Any] = {"Binds": [f"{ctx.work_dir}:{workdir}"]}
        if task.cpus is not None:
            host_config["NanoCpus"] = int(task.cpus * 1e9)
        if task.memory_bytes is not None:
            host_config["Memory"] = task.memory_bytes
        if task.network is not None:
            host_config["NetworkMode"] = task.network
        config: dict[str, Any] = {
            "Image": task.image,
            "Env": [f"{key}={value}" for key, value in ctx.env.items()],
            "WorkingDir": workdir,
            "Labels": self.labels(ctx, offsets),
            "HostConfig": host_config,
            "AttachStdin": False,
            "Tty": False,
        }
        if command is not None:
            config["Cmd"] = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        if task.user is not None:
            config["User"] = task.user
        return config

    async def _image_ready(self, docker: aiodocker.Docker, image: str, pull: str) -> bool:
        """Whether the image is there, pulling it as the task's policy says.

        A missing image or a failed pull is False; an engine that does not answer raises.
        """
        if pull != "always":
            try:
                await docker.images.inspect(image)
                return True
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                if pull == "never":
                    return False
        try:
            await docker.images.pull(image)
        except aiodocker.DockerError as exc:
            if exc.status == NO_CONNECTION:
                raise
            return False
        return True

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        host = ""
        try:
            # An engine that does not answer is drained, and the retry goes to another host
            # if there is a healthy one, else back to it after a backoff.
            async for attempt in self._engine_retrying():
                with attempt:
                    host = self._pick_host()
                    self._in_flight[host] += 1
                    try:
                        prepared = await self._prepare(host, ctx)
                    except BaseException:
                        self._in_flight[host] -= 1
                        raise
        except (aiodocker.DockerError, OSError) as exc:
            return Outcome(reason=f"engine_error: {host}: {_message(exc)}")
        try:
            if isinstance(prepared, Outcome):
                return prepared
            return await self._run_container(prepared, ctx, on_started)
        finally:
            self._in_flight[host] -= 1

    async def _prepare(self, host: str, ctx: InstanceContext) -> DockerContainer | Outcome:
        """Check the image and create the container on ``host``."""
        docker = self._clients[host]
        image = ctx.task.image or ""
        try:
            if not await self._image_ready(docker, image, ctx.task.pull):
                return Outcome(reason=f"image_unavailable: {image}")
            offsets = await anyio.to_thread.run_sync(_prepare_files, ctx)
            config = self.container_config(ctx, offsets)
            # Shielded: a container the engine made must come back to us, to be removed (one
            # made after the limit is found at the next start, by its labels).
            with anyio.CancelScope(shield=True), anyio.fail_after(CREATE_LIMIT_S):
                container = await docker.containers.create(config)
            return container
        except aiodocker.DockerError as exc:
            if exc.status == NO_CONNECTION:
                self._drain(host, _message(exc))
            raise

    async def _run_container(
        self,
        container: DockerContainer,
        ctx: InstanceContext,
        on_started: Callable[[int | None], None],
    ) -> Outcome:
        outcome, started = None, False
        try:
            # Open the logs first: they exist once the instance is RUNNING, as for a process.
            out, err = await anyio.to_thread.run_sync(_open_logs, ctx)
            with out, err:
                began = time.monotonic()
                await container.start()
                started = True
                on_started(None)
                outcome = await self._follow_and_wait(container, ctx, began, out, err)
            return outcome
        finally:
            await self._after(container, ctx, outcome, started=started)

    async def _after(
        self,
        container: DockerContainer,
        ctx: InstanceContext,
        outcome: Outcome | None,
        *,
        started: bool,
    ) -> None:
        """An attempt that ended keeps its container until its end is stored (``release``):
        a crash before that finds it and adopts it, rather than running it again."""
        if started and ctx.control.detach:
            return  # left running on purpose: the next start re-adopts it
        if outcome is not None:
            self._ended[_key(ctx)] = (container, not outcome.succeeded)
        else:  # interrupted or never started: nothing to keep it for
            await self._remove_unless_kept(container, ctx, failed=True)

    async def release(self, ctx: InstanceContext) -> None:
        ended = self._ended.pop(_key(ctx), None)
        if ended is not None:
            container, failed = ended
            await self._remove_unless_kept(container, ctx, failed=failed)

    @staticmethod
    async def _remove_unless_kept(
        container: DockerContainer, ctx: InstanceContext, *, failed: bool
    ) -> None:
        if not (failed and ctx.task.keep_failed):
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await _remove(container)

    # -- after a restart --------------------------------------------------------------------

    async def find_attempts(self, job_ids: Collection[str]) -> list[FoundAttempt]:
        """This runtime's containers on every host (running or not), from their labels: all
        of them, so that those of no job are found too."""
        found: list[FoundAttempt] = []
        filters = json.dumps({"label": [f"{LABEL_PREFIX}runtime={self.runtime_id}"]})
        for host, docker in self._clients.items():
            try:
                # An engine still starting (at boot) is waited for as runs wait for it:
                # its containers must not be taken for lost.
                async for attempt in self._engine_retrying():
                    with attempt:
                        containers = await docker.containers.list(all=True, filters=filters)
            except (aiodocker.DockerError, OSError) as exc:
                log.warning("docker_list_failed", env=self.env_name, host=host, error=_message(exc))
                continue
            for container in containers:
                labels = container["Labels"] or {}
                try:
                    found.append(
                        FoundAttempt(
                            job_id=labels[f"{LABEL_PREFIX}job"],
                            task=labels[f"{LABEL_PREFIX}task"],
                            index=int(labels[f"{LABEL_PREFIX}index"]),
                            attempt=int(labels[f"{LABEL_PREFIX}attempt"]),
                            handle=f"{host} {container.id}",
                        )
                    )
                except (KeyError, ValueError):
                    found.append(FoundAttempt("", "", -1, 0, f"{host} {container.id}"))
        return found

    def _container(self, found: FoundAttempt) -> tuple[str, DockerContainer]:
        host, _, container_id = found.handle.rpartition(" ")
        return host, self._clients[host].containers.container(container_id)

    async def discard(self, found: FoundAttempt) -> bool:
        _, container = self._container(found)
        await _remove(container)
        return True

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Follow a container this runtime started before it stopped; its logs are rewritten
        from the attempt's own beginning, so nothing is lost or repeated."""
        host, container = self._container(found)
        outcome: Outcome | None = None
        self._in_flight[host] += 1
        try:
            info = await container.show()
            labels = info["Config"]["Labels"]
            await anyio.to_thread.run_sync(_rewind_logs, ctx, labels)
            out, err = await anyio.to_thread.run_sync(_open_logs, ctx)
            with out, err:
                began = time.monotonic() - _seconds_since(info["State"].get("StartedAt"))
                if info["State"].get("Status") == "created":
                    # Made but not started when the runtime died: this attempt starts now.
                    await container.start()
                outcome = await self._follow_and_wait(container, ctx, began, out, err)
            return outcome
        except aiodocker.DockerError as exc:
            return Outcome(reason=f"engine_error: {host}: {_message(exc)}")
        finally:
            self._in_flight[host] -= 1
            await self._after(container, ctx, outcome, started=True)

    async def _follow_and_wait(
        self,
        container: DockerContainer,
        ctx: InstanceContext,
        began: float,
        stdout: BinaryIO,
        stderr: BinaryIO,
    ) -> Outcome:
        scope = ctx.control.scope
        async with anyio.create_task_group() as followers:
            followers.start_soon(_follow, container, "stdout", stdout)
            followers.start_soon(_follow, container, "stderr", stderr)
            try:
                with scope:
                    if ctx.task.timeout_s is not None:
                        # From the attempt's start: an adopted one has run for a while.
                        ran = time.monotonic() - began
                        deadline = anyio.current_time() + ctx.task.timeout_s - ran
                        scope.deadline = min(scope.deadline, deadline)
                    await container.wait()
                if scope.cancelled_caught:
                    await self._stop(container, ctx.kill_grace_s)
            except BaseException:
                if not ctx.control.detach:
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(ctx.kill_grace_s + STOP_MARGIN_S),
                    ):
                        await self._stop(container, ctx.kill_grace_s)
                raise
            # The followers end with the container's output; do not wait on a slow engine.
            with anyio.move_on_after(5):
                await container.wait()
            followers.cancel_scope.deadline = anyio.current_time() + 5
        state = (await container.show())["State"]
        if _maybe_oom(state, ctx) and not scope.cancelled_caught:
            state = await _settled_oom_state(container, state)
        # The engine's own times decide, not when we heard: a runtime that was stalled past
        # the deadline must not call an exit before it a timeout (nor one after it a success).
        ran_s = _ran_seconds(state)
        duration = ran_s if ran_s is not None else time.monotonic() - began
        timeout = ctx.task.timeout_s
        if ctx.control.stop_reason is not None or timeout is None:
            timed_out = False
        else:
            timed_out = ran_s > timeout if ran_s is not None else scope.cancelled_caught
        reason = None
        if timed_out:
            reason = "timeout"
        elif state.get("OOMKilled"):
            reason = "oom"
        return Outcome(exit_code=int(state["ExitCode"]), reason=reason, duration_s=duration)

    @staticmethod
    async def _stop(container: DockerContainer, grace: float) -> None:
        """TERM the container's init, KILL after ``grace`` (the engine does both)."""
        try:
            await container.stop(t=max(1, round(grace)))
        except aiodocker.DockerError:
            pass  # already gone


async def _follow(container: DockerContainer, stream: str, out: BinaryIO) -> None:
    """Append one stream of the container to ``out`` as it comes.

    While the state dir's disk is full, output is counted, not written; once a write fits
    again, a line says how much was lost, so nothing goes missing without a word."""
    lost, why = 0, ""
    async for chunk in container.log(follow=True, **{stream: True}):
        body = chunk.encode()
        data = body
        if lost:
            data = f"\n[aiobatch: {lost} bytes of {stream} lost: {why}]\n".encode() + body
        try:
            # Off the event loop: a slow or full disk must not stall everything else.
            await anyio.to_thread.run_sync(out.write, data)
            lost = 0
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if not lost:
                log.warning("log_lost", stream=stream, error=exc.strerror)
            lost, why = lost + len(body), exc.strerror or str(exc)
    if lost:
        log.error("log_lost", stream=stream, bytes=lost, error=why)


async def _remove(container: DockerContainer) -> None:
    try:
        await container.delete(force=True)
    except aiodocker.DockerError:
        pass


def _maybe_oom(state: dict[str, Any], ctx: InstanceContext) -> bool:
    """SIGKILLed (137) under a memory limit, but not (yet) flagged OOMKilled."""
    limited = ctx.task.memory_bytes is not None
    return limited and int(state.get("ExitCode", 0)) == 137 and not state.get("OOMKilled")


async def _settled_oom_state(container: DockerContainer, state: dict[str, Any]) -> dict[str, Any]:
    """containerd's shim may send a container's exit event before its OOM event (fixed
    upstream late in 2025: containerd/containerd#12714), and the engine flags
    OOMKilled only when the OOM event comes: look again, briefly, before calling it a
    plain kill."""
    for _ in range(OOM_FLAG_CHECKS):
        await anyio.sleep(OOM_FLAG_WAIT_S)
        state = (await container.show())["State"]
        if state.get("OOMKilled"):
            break
    return state


def _key(ctx: InstanceContext) -> AttemptKey:
    return (ctx.job_id, ctx.task.name, ctx.index, ctx.attempt)


def _prepare_files(ctx: InstanceContext) -> tuple[int, int]:
    """Make the work and log dirs; the logs' sizes, where this attempt's output begins."""
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    ctx.stdout_path.parent.mkdir(parents=True, exist_ok=True)
    return _size(ctx.stdout_path), _size(ctx.stderr_path)


def _open_logs(ctx: InstanceContext) -> tuple[BinaryIO, BinaryIO]:
    out = ctx.stdout_path.open("ab", buffering=0)
    try:
        return out, ctx.stderr_path.open("ab", buffering=0)
    except BaseException:
        out.close()
        raise


def _rewind_logs(ctx: InstanceContext, labels: dict[str, str]) -> None:
    """Cut the logs back to where the adopted attempt's output began (its labels say)."""
    for path, stream in ((ctx.stdout_path, "stdout"), (ctx.stderr_path, "stderr")):
        offset = int(labels.get(f"{LABEL_PREFIX}{stream}_offset", _size(path)))
        with path.open("ab") as f:
            f.truncate(min(offset, _size(path)))


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _ran_seconds(state: dict[str, Any]) -> float | None:
    """From the container's start to its end, as the engine recorded them."""
    started, finished = state.get("StartedAt"), state.get("FinishedAt")
    if not started or not finished or started.startswith("0001-") or finished.startswith("0001-"):
        return None
    # fromisoformat reads the engine's nanoseconds (cut to microseconds) since Python 3.11.
    ended_at = datetime.fromisoformat(finished).timestamp()
    return max(0.0, ended_at - datetime.fromisoformat(started).timestamp())


def _seconds_since(timestamp: str | None) -> float:
    """Seconds since an engine timestamp (RFC 3339, nanoseconds), 0 if there is none."""
    if not timestamp or timestamp.startswith("0001-"):
        return 0.0
    return max(0.0, time.time() - datetime.fromisoformat(timestamp).timestamp())


def _no_connection(exc: BaseException) -> bool:
    return isinstance(exc, aiodocker.DockerError) and exc.status == NO_CONNECTION


def _message(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        return str(exc.message)
    return str(exc)
