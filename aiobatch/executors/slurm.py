"""Slurm executor: a task's instances run as elements of Slurm job arrays.

Submission and gathering into arrays are in ``slurm_batch.py``, the poller that follows
elements in ``slurm_watch.py``, the commands and their output in ``slurm_commands.py``. Here
an attempt is followed from its submission to its end: it is RUNNING once Slurm runs it, a stop
or the task's exact timeout scancels its element, and after a restart the elements this
runtime submitted are found again by their job names, in squeue while the controller keeps
them and in jobcomp/filetxt's file after that, and adopted: never submitted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated

import anyio
import msgspec
from anyio.abc import TaskGroup

from aiobatch.attempt import RUNTIME_LOST, AttemptKey, FoundAttempt, InstanceContext, Outcome
from aiobatch.executors import slurm_batch as batch
from aiobatch.executors.base import any_attempt
from aiobatch.executors.slurm_commands import (
    PENDING_REST,
    ElementState,
    SlurmError,
    array_spec,
    sbatch,
    scancel,
    show_config,
    squeue,
)
from aiobatch.executors.slurm_watch import Element, Watcher, read_all_jobcomp
from aiobatch.logging import get_logger
from aiobatch.spec import TaskDef
from aiobatch.units import parse_duration

log = get_logger("aiobatch.slurm")

# Beyond kill_grace, how long a scancelled element may take to be seen ended (Slurm's own
# KillWait, 30 s by default, passes between its TERM and its KILL).
STOP_MARGIN_S = 60.0
MAX_CHUNK = 100_000
QUEUED = "slurm_pending"  # an attempt's reason while its element waits in Slurm's queue
# Task fields an array element cannot honour: it runs on a node as the submitting user.
_UNSUPPORTED = ("image", "workdir", "network", "user", "keep_failed")


class SlurmSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A Slurm env's settings (``[compute_envs.NAME]`` with ``kind = "slurm"``)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_options: tuple[str, ...] = ()  # more sbatch arguments, as given
    poll: str | int | float = "1s"  # how often squeue is asked, while elements are watched
    chunk: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK)] = 1000  # elements per array

    @property
    def poll_s(self) -> float:
        return parse_duration(self.poll)

    def sbatch_args(self) -> list[str]:
        args = [f"--{name}={value}" for name, value in self._named() if value is not None]
        return [*args, *self.sbatch_options]

    def _named(self) -> list[tuple[str, str | None]]:
        return [("partition", self.partition), ("account", self.account), ("qos", self.qos)]


class SlurmExecutor:
    kind = "slurm"

    def __init__(
        self, env_name: str, settings: SlurmSettings, runtime_id: Callable[[], str]
    ) -> None:
        self.env_name, self.settings = env_name, settings
        self._runtime_id_source = runtime_id  # read when opened, as the Docker executor does
        self.runtime_id = self.prefix = ""
        self.jobcomp: Path | None = None
        self._watcher: Watcher | None = None
        self._batcher: batch.Batcher | None = None
        self._elements: dict[AttemptKey, Element] = {}  # attempts in flight, by key
        self.submitted = 0  # arrays submitted (a statistic, and for tests)

    def unsupported(self, task: TaskDef) -> list[str]:
        found = [name for name in _UNSUPPORTED if getattr(task, name)]
        if task.pull != "if_missing":
            found.append("pull")
        return found

    async def open(self, background: TaskGroup) -> None:
        self.runtime_id = self._runtime_id_source()
        self.prefix = batch.runtime_prefix(self.runtime_id)
        config = await show_config()
        if config.get("JobCompType") == "jobcomp/filetxt" and config.get("JobCompLoc"):
            self.jobcomp = Path(config["JobCompLoc"])
        else:
            log.warning("slurm_no_jobcomp", env=self.env_name, jobcomp=config.get("JobCompType"))
        max_array = int(config.get("MaxArraySize", "1001").split()[0])
        self._watcher = Watcher(self.prefix, self.settings.poll_s, self.jobcomp)
        self._batcher = batch.Batcher(self._submit, chunk=self.settings.chunk, max_array=max_array)
        self._batcher.open(background)
        background.start_soon(self._watcher.run)

    async def aclose(self) -> None:
        pass  # the poller ends with the background group; elements end with their runs

    def _queued_reason(self, key: AttemptKey) -> str | None:
        """``slurm_pending: REASON`` while the attempt's element waits in Slurm's queue, with
        Slurm's reason (Priority, Resources, JobArrayTaskLimit, ...) when it gives one."""
        element = self._elements.get(key)
        if element is None or self._watcher is None:
            return None
        reason = self._watcher.pending_reason(element.key)
        if reason is None:
            return None
        return f"{QUEUED}: {reason}" if reason else QUEUED

    def queued_of(self, job_id: str, task: str) -> dict[int, str]:
        found = {}
        for key in self._elements:  # the attempts in flight: at most the env's slots
            if key[0] == job_id and key[1] == task:
                reason = self._queued_reason(key)
                if reason is not None:
                    found[key[2]] = reason
        return found

    # -- submission --------------------------------------------------------------------------

    async def _submit(self, ctxs: list[InstanceContext], base: int) -> tuple[int, str]:
        """One array of these instances (same job, task and attempt): its job id and name."""
        first = ctxs[0]
        work, logs = batch.shared_dirs(ctxs)
        await anyio.to_thread.run_sync(batch.write_files, ctxs)
        name = batch.job_name(self.runtime_id, first.job_id, first.attempt, base, first.task.name)
        args = [
            f"--job-name={name}",
            f"--array={array_spec([c.index - base for c in ctxs], first.task.max_parallel)}",
            "--chdir=/",
            "--no-requeue",  # a requeued element would run again unseen (its env file is gone)
            "--open-mode=append",
            f"--output={batch.slurm_output(logs, base)}",
            *batch.resource_args(first),
            *self.settings.sbatch_args(),
        ]
        script = batch.wrapper_script(work, logs, base, batch.command_words(first.task.command))
        array_id = await sbatch(args, script)
        self.submitted += 1
        log.info("slurm_submitted", env=self.env_name, array=array_id, name=name, n=len(ctxs))
        return array_id, name

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        assert self._batcher is not None and self._watcher is not None
        try:
            # A stop while it is gathered or submitted scancels it once submitted (the
            # control's scope, cancelled already, is entered in _follow).
            where = await self._batcher.enqueue(ctx)
        except SlurmError as exc:
            await anyio.to_thread.run_sync(batch.remove_env_file, ctx)
            return Outcome(reason=f"submit_failed: {exc}")
        element = self._watcher.watch((where.array_id, where.task_id), where.name)
        try:
            return await self._follow(ctx, element, on_started)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(batch.remove_env_file, ctx)

    async def _follow(
        self,
        ctx: InstanceContext,
        element: Element,
        on_started: Callable[[int | None], None] | None,
    ) -> Outcome:
        """Wait for the element's end; a stop, or the task's timeout from its start,
        scancels it. Cancelled from outside, it is scancelled too, unless detached."""
        assert self._watcher is not None
        key = (ctx.job_id, ctx.task.name, ctx.index, ctx.attempt)
        self._elements[key] = element
        scope, told = ctx.control.scope, False
        try:
            with scope:
                await element.started.wait()
                if on_started is not None and not element.ended.is_set():
                    on_started(None)
                    told = True
                start, timeout = element.start_time, ctx.task.timeout_s
                if timeout is not None and start is not None:
                    deadline = anyio.current_time() + start + timeout - time.time()
                    scope.deadline = min(scope.deadline, deadline)
                await element.ended.wait()
            if scope.cancelled_caught:
                await self._cancel(element, ctx.kill_grace_s)
        except BaseException:
            if not ctx.control.detach:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await scancel(element.target)
            raise
        finally:
            self._elements.pop(key, None)
            self._watcher.forget(element)
        final = element.final
        if final is None:
            return Outcome(reason=RUNTIME_LOST)  # how it ended is known nowhere
        if on_started is not None and not told and final.ran:
            on_started(None)  # it started and ended between two polls
        outcome = final.outcome()
        if scope.cancelled_caught and ctx.control.stop_reason is None:
            outcome = msgspec.structs.replace(
                outcome, exit_code=None, signal=None, reason="timeout"
            )
        return outcome

    async def _cancel(self, element: Element, grace: float) -> None:
        try:
            await scancel(element.target)
        except SlurmError as exc:
            log.warning("slurm_scancel_failed", element=element.target, error=str(exc))
        with anyio.move_on_after(grace + STOP_MARGIN_S):
            await element.ended.wait()

    # -- after a restart ---------------------------------------------------------------------

    async def find_attempts(
        self, job_ids: Collection[str], claimable: Callable[[AttemptKey], bool] = any_attempt
    ) -> list[FoundAttempt]:
        """This runtime's elements: those squeue knows (running, pending or ended), and those
        of ``job_ids`` that jobcomp recorded ended after the controller forgot them."""
        assert self._watcher is not None
        try:
            live = await squeue(self.prefix)
        except SlurmError as exc:
            log.error("slurm_find_failed", env=self.env_name, error=str(exc))
            return []
        states = {(s.key, s.name): s for s in live}
        ended: list[ElementState] = []
        if self.jobcomp is not None:
            wanted = set(job_ids)
            for state in await anyio.to_thread.run_sync(
                read_all_jobcomp, self.jobcomp, self.prefix
            ):
                parsed = batch.parse_job_name(state.name, self.prefix)
                if state.task_id == PENDING_REST:
                    continue  # never started: an attempt found nowhere else is lost
                if parsed and parsed[0] in wanted and (state.key, state.name) not in states:
                    states[(state.key, state.name)] = state
                    ended.append(state)
        self._watcher.remember_ends(ended)
        found = []
        for state in states.values():
            parsed = batch.parse_job_name(state.name, self.prefix)
            handle = f"{state.array_id}_{state.task_id} {state.name}"
            if parsed is None:
                found.append(FoundAttempt("", "", -1, 0, handle))
                continue
            job, attempt, base, task = parsed
            found.append(FoundAttempt(job, task, base + state.task_id, attempt, handle))
        return found

    @staticmethod
    def _element_of(found: FoundAttempt) -> tuple[tuple[int, int], str]:
        target, _, name = found.handle.partition(" ")
        array_id, _, task_id = target.partition("_")
        return (int(array_id), int(task_id)), name

    async def discard(self, found: FoundAttempt) -> bool:
        key, _ = self._element_of(found)
        await scancel(f"{key[0]}_{key[1]}")  # one that ended already: no error
        return True

    async def adopt(self, ctx: InstanceContext, found: FoundAttempt) -> Outcome:
        """Follow an element a runtime before this one submitted: it is never submitted
        again. Its output goes on into the instance's log files by itself."""
        assert self._watcher is not None
        key, name = self._element_of(found)
        return await self._follow(ctx, self._watcher.watch(key, name), None)
