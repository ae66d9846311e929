"""Instances of one task dispatched together become one Slurm job array.

The executor API is per instance, so each ``run`` hands its context to the batcher, which
gathers those of the same job, task and attempt for a moment (``GATHER_S``) and submits them
as one ``sbatch --array``, in chunks when they are many. An element's array task id is its
instance index (less the chunk's ``base`` when indices reach the cluster's MaxArraySize).

The job's name carries aiobatch's ids (``aiobatch.RUNTIME.JOB.ATTEMPT.BASE.TASK``): the
controller stores it with the job before ``sbatch`` answers, and keeps it in jobcomp when
the job ends, so it is the durable record a restart finds the array by.

What an element runs is a small shell script, the same for the whole array: it appends its
output to the instance's log files, reads the instance's environment from a file (mode 0600,
removed once read: secrets do not linger), changes to the instance's work dir and execs the
task's command. Those paths must name the same files on the nodes as here.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import msgspec
from anyio.abc import TaskGroup

from aiobatch.attempt import InstanceContext
from aiobatch.executors.slurm_commands import SlurmError, scancel

GATHER_S = 0.05  # how long the first instance of a batch waits for the others
NAME_PREFIX = "aiobatch."
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Slurm sets these for each element; an inherited value must not replace them.
_SLURM_OWN = ("SLURM_", "SBATCH_")
MIB = 1 << 20

BatchKey = tuple[str, str, int, int]  # job, task, attempt, base
Submit = Callable[[list[InstanceContext], int], Awaitable[tuple[int, str]]]


class Submitted(msgspec.Struct, frozen=True):
    """Where an instance's attempt runs: one element of an array."""

    array_id: int
    task_id: int
    name: str

    @property
    def target(self) -> str:
        """What scancel names it by."""
        return f"{self.array_id}_{self.task_id}"


def runtime_prefix(runtime_id: str) -> str:
    return f"{NAME_PREFIX}{runtime_id}."


def job_name(runtime_id: str, job_id: str, attempt: int, base: int, task: str) -> str:
    # The task last: its name may hold dots, the ids before it do not.
    return f"{runtime_prefix(runtime_id)}{job_id}.{attempt}.{base}.{task}"


def parse_job_name(name: str, prefix: str) -> tuple[str, int, int, str] | None:
    """(job id, attempt, base, task) from a name ``job_name`` made, or None."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix) :].split(".", 3)
    if len(parts) != 4:
        return None
    job, attempt, base, task = parts
    try:
        return job, int(attempt), int(base), task
    except ValueError:
        return None


# -- what sbatch is given ----------------------------------------------------------------------


def env_file_text(env: dict[str, str]) -> str:
    """The instance's environment as POSIX shell ``export`` lines (values quoted)."""
    lines = [
        f"export {key}={shlex.quote(value)}\n"
        for key, value in env.items()
        if _IDENTIFIER.fullmatch(key) and not key.startswith(_SLURM_OWN)
    ]
    return "".join(lines)


def command_words(command: str | Sequence[str] | None) -> str:
    if isinstance(command, str):
        return f"/bin/sh -c {shlex.quote(command)}"
    return " ".join(shlex.quote(word) for word in command or ("true",))


def wrapper_script(work_parent: Path, log_dir: Path, base: int, command: str) -> str:
    """The script every element of the array runs (``$i`` is its instance index)."""
    logs, work = shlex.quote(str(log_dir)), shlex.quote(str(work_parent))
    return (
        "#!/bin/sh\n"
        f"i=$((SLURM_ARRAY_TASK_ID + {base}))\n"
        f'exec >>{logs}/"$i.stdout" 2>>{logs}/"$i.stderr"\n'
        f'. {logs}/"$i.env" || exit 70\n'
        f'rm -f {logs}/"$i.env"\n'
        f'cd {work}/"$i" || exit 71\n'
        f"exec {command}\n"
    )


def shared_dirs(ctxs: Sequence[InstanceContext]) -> tuple[Path, Path]:
    """The work dirs' parent and the log dir the batch's instances share, as the wrapper
    names their files (``WORK/INDEX``, ``LOGS/INDEX.stdout``)."""
    work, logs = ctxs[0].work_dir.parent, ctxs[0].stdout_path.parent
    for ctx in ctxs:
        i = ctx.index
        if (ctx.work_dir, ctx.stdout_path, ctx.stderr_path) != (
            work / str(i),
            logs / f"{i}.stdout",
            logs / f"{i}.stderr",
        ):
            raise SlurmError(f"instance {i}: its files are not laid out as the wrapper expects")
    return work, logs


def env_path(ctx: InstanceContext) -> Path:
    return ctx.stdout_path.with_name(f"{ctx.index}.env")


def write_files(ctxs: Sequence[InstanceContext]) -> None:
    """The instances' dirs, and each one's environment file (0600, written whole)."""
    for ctx in ctxs:
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        ctx.stdout_path.parent.mkdir(parents=True, exist_ok=True)
        path = env_path(ctx)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(env_file_text(ctx.env))


def remove_env_file(ctx: InstanceContext) -> None:
    env_path(ctx).unlink(missing_ok=True)


def resource_args(ctx: InstanceContext) -> list[str]:
    """``--time`` in whole minutes (Slurm's unit, rounded up), CPUs and memory (MB)."""
    task, args = ctx.task, []
    if task.timeout_s is not None:
        args.append(f"--time={max(1, math.ceil(task.timeout_s / 60))}")
    if task.cpus is not None:
        args.append(f"--cpus-per-task={max(1, math.ceil(task.cpus))}")
    if task.memory_bytes is not None:
        args.append(f"--mem={max(1, math.ceil(task.memory_bytes / MIB))}M")
    return args


def slurm_output(log_dir: Path, base: int) -> str:
    """Where Slurm writes its own words about an element (cancelled, out of memory): the
    instance's stderr log when the array task id is the index, else nowhere."""
    if base == 0 and not set(str(log_dir)) & {"%", "\\"}:
        return f"{log_dir}/%a.stderr"
    return "/dev/null"


# -- gathering ---------------------------------------------------------------------------------


class _Batch:
    __slots__ = ("array_id", "ctxs", "done", "error", "flushing", "full", "name")

    def __init__(self) -> None:
        self.ctxs: dict[int, InstanceContext] = {}
        self.full = anyio.Event()
        self.done = anyio.Event()
        self.flushing = False
        self.array_id: int | None = None
        self.name = ""
        self.error: SlurmError | None = None


class Batcher:
    """Gathers instances into arrays; ``submit`` makes one array of a batch."""

    def __init__(self, submit: Submit, *, chunk: int, max_array: int) -> None:
        self._submit = submit
        self.chunk = chunk
        self.max_array = max_array  # array task ids are below it (the cluster's MaxArraySize)
        self._open: dict[BatchKey, _Batch] = {}
        self._group: TaskGroup | None = None

    def open(self, group: TaskGroup) -> None:
        self._group = group

    async def enqueue(self, ctx: InstanceContext) -> Submitted:
        """Submit the instance's attempt with the others gathered with it; where it runs."""
        assert self._group is not None, "opened before the first run"
        base = ctx.index // self.max_array * self.max_array
        key = (ctx.job_id, ctx.task.name, ctx.attempt, base)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch()
            self._group.start_soon(self._flush_later, key, batch)
        batch.ctxs[ctx.index] = ctx
        if len(batch.ctxs) >= self.chunk:
            self._open.pop(key, None)  # the next one starts another chunk
            batch.full.set()
        try:
            await batch.done.wait()
        except anyio.get_cancelled_exc_class():
            if not batch.flushing:
                del batch.ctxs[ctx.index]  # never submitted
                raise
            with anyio.CancelScope(shield=True), anyio.move_on_after(120):
                await batch.done.wait()  # submitted meanwhile: it must not run unwatched
                if batch.array_id is not None:
                    await scancel(f"{batch.array_id}_{ctx.index - base}")
            raise
        if batch.error is not None or batch.array_id is None:
            raise batch.error or SlurmError("sbatch: not submitted")
        return Submitted(batch.array_id, ctx.index - base, batch.name)

    async def _flush_later(self, key: BatchKey, batch: _Batch) -> None:
        with anyio.move_on_after(GATHER_S):
            await batch.full.wait()
        batch.flushing = True
        if self._open.get(key) is batch:
            del self._open[key]
        try:
            if batch.ctxs:
                ctxs = [batch.ctxs[i] for i in sorted(batch.ctxs)]
                batch.array_id, batch.name = await self._submit(ctxs, key[3])
        except SlurmError as exc:
            batch.error = exc
        except OSError as exc:
            batch.error = SlurmError(f"files: {exc.strerror or exc}")
        finally:
            batch.done.set()
