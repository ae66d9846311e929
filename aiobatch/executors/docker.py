"""Docker executor: each attempt one container, through aiodocker, on one of the env's hosts.

Imported only when a job uses a docker compute env, so a local-only run never pays for
aiodocker. The instance work dir is bind-mounted (at ``/aiobatch`` unless the task's
``workdir`` says otherwise) and is the container's working dir; stdout and stderr are
followed while the container runs and appended to the same log files local instances use.
The container asked for (its config and labels) is in ``docker_containers.py``, the env's
engines and the choice among them in ``docker_hosts.py``, the log files in
``docker_logs.py``, how an attempt ended (the engine's record) in ``docker_outcome.py``,
removals the engine refused in ``docker_leftovers.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Collection
from http import HTTPStatus
from typing import Any, BinaryIO

import aiodocker
import anyio
import msgspec
from aiodocker.containers import DockerContainer
from anyio.abc import TaskGroup

from aiobatch.attempt import AttemptKey, FoundAttempt, InstanceContext, Outcome
from aiobatch.config import ComputeEnvConfig
from aiobatch.executors.base import any_attempt
from aiobatch.executors.docker_containers import (
    container_config,
    found_attempt,
    log_offsets,
    runtime_filter,
)
from aiobatch.executors.docker_hosts import NO_CONNECTION, DockerHosts, message
from aiobatch.executors.docker_leftovers import Leftovers
from aiobatch.executors.docker_logs import (
    follow,
    note_cut,
    open_logs,
    prepare_files,
    rewind_logs,
)
from aiobatch.executors.docker_outcome import container_outcome, seconds_since
from aiobatch.executors.docker_usage import UsageMeter
from aiobatch.host_set import HostSet
from aiobatch.logging import get_logger
from aiobatch.spec import TaskDef
from aiobatch.spec_convert import printable

_UNSUPPORTED: tuple[str, ...] = ()  # every task field has a meaning for a container
CREATE_LIMIT_S = 60.0  # a container create the engine has not answered by then has failed
LIST_LIMIT_S = 30.0  # after a restart, a list of our containers an engine has not answered
LOG_QUIET_S = 5.0  # after a container's end, how long the engine may send nothing of its logs
STOP_MARGIN_S = 30.0  # beyond kill_grace, how long a stop may take before we give up on it

log = get_logger("aiobatch.docker")


class DockerExecutor:
    kind = "docker"

    def __init__(
        self,
        env_name: str,
        config: ComputeEnvConfig,
        runtime_id: Callable[[], str],
        hosts: HostSet | None = None,
    ) -> None:
        self.env_name = env_name
        self.config = config
        # Read when opened: validating a spec must not write into the state dir.
        self._runtime_id_source = runtime_id
        self.runtime_id = ""
        self._hosts = DockerHosts(env_name, config, hosts)
        # Containers of attempts that ended, until their end is stored (then ``release``).
        self._ended: dict[AttemptKey, tuple[DockerContainer, bool]] = {}
        self.leftovers = Leftovers(env_name)  # those the engine did not let us remove

    def host_states(self) -> list[tuple[str, int, bool]]:
        """Each engine: attempts in flight on it, and whether it is healthy."""
        return self._hosts.states()

    def reap_hosts(self) -> None:
        """Drop the engines being removed that have no attempt left."""
        self._hosts.reap()

    def unsupported(self, task: TaskDef) -> list[str]:
        return [name for name in _UNSUPPORTED if getattr(task, name)]

    async def open(self, background: TaskGroup) -> None:
        self.runtime_id = self._runtime_id_source()
        await self._hosts.open()
        await self.leftovers.open(background)

    async def aclose(self) -> None:
        await self.leftovers.close()  # before the clients it removes through
        await self._hosts.close()

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
        prepared: DockerContainer | Outcome | None = None
        try:
            # A stop (or a job's timeout) ends a pull or a wait for an engine too.
            with ctx.control.before_start():
                # An engine that does not answer is drained, and the retry goes to another
                # host if there is a healthy one, else back to it after a backoff.
                async for attempt in self._hosts.retrying():
                    with attempt:
                        host = self._hosts.pick()
                        self._hosts.take(host)
                        try:
                            prepared = await self._prepare(host, ctx)
                        except BaseException:
                            self._hosts.give_back(host)
                            raise
        except (aiodocker.DockerError, OSError) as exc:
            return Outcome(reason=f"engine_error: {host}: {message(exc)}")
        if prepared is None:  # stopped before a container was made (a host taken is back)
            return Outcome(reason=ctx.control.stop_reason)
        try:
            if isinstance(prepared, Outcome):
                return prepared
            if ctx.control.stop_reason is not None:  # stopped while it was made: not started
                await self.leftovers.remove(prepared)
                return Outcome(reason=ctx.control.stop_reason)
            return await self._run_container(prepared, ctx, on_started)
        finally:
            self._hosts.give_back(host)

    async def _prepare(self, host: str, ctx: InstanceContext) -> DockerContainer | Outcome:
        """Check the image and create the container on ``host``."""
        docker = self._hosts.client(host)
        image = ctx.task.image or ""
        try:
            if not await self._image_ready(docker, image, ctx.task.pull):
                return Outcome(reason=f"image_unavailable: {image}")
            offsets = await anyio.to_thread.run_sync(prepare_files, ctx)
            config = container_config(self.runtime_id, ctx, offsets)
            # Shielded: a container the engine made must come back to us, to be removed (one
            # made after the limit is found at the next start, by its labels).
            with anyio.CancelScope(shield=True), anyio.fail_after(CREATE_LIMIT_S):
                container = await self._create(docker, config, ctx)
            return container
        except aiodocker.DockerError as exc:
            if exc.status == NO_CONNECTION:
                self._hosts.drain(host, message(exc))
            raise

    async def _create(
        self, docker: aiodocker.Docker, config: dict[str, Any], ctx: InstanceContext
    ) -> DockerContainer:
        """The attempt's container, named after it: a create tried again because its answer
        was lost finds the one the engine made then, rather than making a second one (which
        a restart could adopt and start: the program twice)."""
        name = f"aiobatch-{self.runtime_id}-{ctx.job_id}-{ctx.task.name}-{ctx.index}-{ctx.attempt}"
        try:
            return await docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status != HTTPStatus.CONFLICT:
                raise
            return await docker.containers.get(name)

    async def _run_container(
        self,
        container: DockerContainer,
        ctx: InstanceContext,
        on_started: Callable[[int | None], None],
    ) -> Outcome:
        outcome, started = None, False
        try:
            # Open the logs first: they exist once the instance is RUNNING, as for a process.
            out, err = await anyio.to_thread.run_sync(open_logs, ctx)
            with out, err:
                began = time.monotonic()
                try:
                    await container.start()
                except aiodocker.DockerError as exc:
                    # The engine could not start the program (no such user, no such file):
                    # the attempt's failure, said as such, not the executor's.
                    kind = "engine_error" if exc.status == NO_CONNECTION else "exec_failed"
                    return Outcome(reason=f"{kind}: {printable(message(exc))}")
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

    async def _remove_unless_kept(
        self, container: DockerContainer, ctx: InstanceContext, *, failed: bool
    ) -> None:
        if not (failed and ctx.task.keep_failed):
            await self.leftovers.remove(container)

    # -- after a restart --------------------------------------------------------------------

    async def find_attempts(
        self, job_ids: Collection[str], claimable: Callable[[AttemptKey], bool] = any_attempt
    ) -> list[FoundAttempt]:
        """This runtime's containers on every host (running or not), from their labels: all
        of them, so that those of no job are found too."""
        found: list[FoundAttempt] = []
        filters = json.dumps(runtime_filter(self.runtime_id))
        for host, docker in list(self._hosts.clients.items()):
            try:
                # An engine still starting (at boot) is waited for as runs wait for it:
                # its containers must not be taken for lost.
                async for attempt in self._hosts.retrying():
                    with attempt, anyio.fail_after(LIST_LIMIT_S):
                        containers = await docker.containers.list(all=True, filters=filters)
            except (aiodocker.DockerError, OSError) as exc:  # TimeoutError is an OSError
                # An engine that accepts and never answers must not keep the runtime from
                # starting (nor its other envs' jobs from running).
                log.warning("docker_list_failed", env=self.env_name, host=host, error=message(exc))
                continue
            for container in containers:
                handle = f"{host} {container.id}"
                found.append(found_attempt(container["Labels"] or {}, handle))
        return found

    def _container(self, found: FoundAttempt) -> tuple[str, DockerContainer]:
        host, _, container_id = found.handle.rpartition(" ")
        return host, self._hosts.client(host).containers.container(container_id)

    async def discard(self, found: FoundAttempt) -> bool:
        """Have an orphan found at a start removed in the background: a start must not wait
        for an engine that answers lists but not removals (its end is logged there)."""
        _, container = self._container(found)
        self.leftovers.remove_soon(container)
        return False

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Follow a container this runtime started before it stopped; its logs are rewritten
        from the attempt's own beginning, so nothing is lost or repeated."""
        host, container = self._container(found)
        outcome: Outcome | None = None
        self._hosts.take(host)
        try:
            info = await container.show()
            offsets = log_offsets(info["Config"]["Labels"])
            await anyio.to_thread.run_sync(rewind_logs, ctx, offsets)
            out, err = await anyio.to_thread.run_sync(open_logs, ctx)
            with out, err:
                began = time.monotonic() - seconds_since(info["State"].get("StartedAt"))
                if info["State"].get("Status") == "created":
                    # Made but not started when the runtime died: this attempt starts now.
                    await container.start()
                outcome = await self._follow_and_wait(container, ctx, began, out, err)
            return outcome
        except aiodocker.DockerError as exc:
            return Outcome(reason=f"engine_error: {host}: {message(exc)}")
        finally:
            self._hosts.give_back(host)
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
        meter = UsageMeter()
        ended = False

        def progress() -> None:  # after the end, the copy goes on while the engine sends
            if ended:
                followers.cancel_scope.deadline = anyio.current_time() + LOG_QUIET_S

        async with anyio.create_task_group() as followers:
            followers.start_soon(follow, container, "stdout", stdout, progress)
            followers.start_soon(follow, container, "stderr", stderr, progress)
            sampling = anyio.CancelScope()
            followers.start_soon(_within, sampling, meter.follow, container)
            try:
                with scope:
                    if ctx.task.timeout_s is not None:
                        # From the attempt's start: an adopted one has run for a while.
                        ran = time.monotonic() - began
                        deadline = anyio.current_time() + ctx.task.timeout_s - ran
                        scope.deadline = min(scope.deadline, deadline)
                    await container.wait()
                # Stopped at its deadline while it still ran: a timeout, however soon the
                # engine's init then ended it (the engine's start came a little after ours).
                cut_short = scope.cancelled_caught and await self._stop(container, ctx.kill_grace_s)
            except BaseException:
                if not ctx.control.detach:
                    with (
                        anyio.CancelScope(shield=True),
                        anyio.move_on_after(ctx.kill_grace_s + STOP_MARGIN_S),
                    ):
                        await self._stop(container, ctx.kill_grace_s)
                raise
            sampling.cancel()  # the engine's stats stream goes on after the container's end
            # The followers end with the container's output: they copy what is left for as
            # long as the engine sends some, not waiting on one that sends nothing.
            with anyio.move_on_after(LOG_QUIET_S):
                await container.wait()
            ended = True
            followers.cancel_scope.deadline = anyio.current_time() + LOG_QUIET_S
        if followers.cancel_scope.cancelled_caught:
            for out, name in ((stdout, "stdout"), (stderr, "stderr")):
                await anyio.to_thread.run_sync(note_cut, out, name, LOG_QUIET_S)
            log.warning("log_copy_given_up", job_id=ctx.job_id, task=ctx.task.name)
        outcome = await container_outcome(container, ctx, began, cut_short=cut_short)
        return msgspec.structs.replace(outcome, usage=meter.usage())

    @staticmethod
    async def _stop(container: DockerContainer, grace: float) -> bool:
        """TERM the container's init, KILL after ``grace`` (the engine does both). Whether
        it was still running to be stopped."""
        try:
            await container.stop(t=max(1, round(grace)))
        except aiodocker.DockerError:
            return False  # it had ended (304), or is gone
        return True


async def _within(
    scope: anyio.CancelScope,
    func: Callable[[DockerContainer], Awaitable[None]],
    container: DockerContainer,
) -> None:
    with scope:
        await func(container)


def _key(ctx: InstanceContext) -> AttemptKey:
    return (ctx.job_id, ctx.task.name, ctx.index, ctx.attempt)
