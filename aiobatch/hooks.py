"""Phase hooks: async callables run before an instance starts and after it exits.

Staging inputs, uploading outputs and uploading stdout/stderr are built-in hooks; users add
their own with ``Runtime.hooks.before_start.append(...)``. A hook fails an instance by
raising ``HookFailed`` (or any exception), whose message becomes the attempt's reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import msgspec

from aiobatch.attempt import InstanceContext, Outcome
from aiobatch.errors import AiobatchError
from aiobatch.spec import TaskDef
from aiobatch.spec_convert import printable
from aiobatch.storage import beneath
from aiobatch.storage.base import Local, StorageBackend, StorageError, StorageURI


class HookFailed(AiobatchError, RuntimeError):
    """A hook's failure; ``reason`` is machine-readable (``stage_in_failed: URI ...``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class HookContext(msgspec.Struct, frozen=True):
    """What a hook sees: the attempt, its outcome (after exit) and the storage backends."""

    instance: InstanceContext
    job_name: str
    storage: Mapping[str, StorageBackend]
    outcome: Outcome | None = None

    def expand(self, template: str) -> str:
        """Fill ``{job_id} {job} {task} {index} {attempt}`` (validated at submit)."""
        ctx = self.instance
        return template.format(
            job_id=ctx.job_id,
            job=self.job_name,
            task=ctx.task.name,
            index=ctx.index,
            attempt=ctx.attempt,
        )

    def backend(self, uri: StorageURI) -> StorageBackend:
        try:
            return self.storage[uri.scheme]
        except KeyError:
            raise StorageError(f"{uri}: no storage backend for {uri.scheme}://") from None


Hook = Callable[[HookContext], Awaitable[None]]
# Job-level: called with the job's final snapshot (JobSnapshot) once it has ended.
JobHook = Callable[[Any], Awaitable[None]]


class Hooks(msgspec.Struct):
    """The hooks of each phase, run in order; the built-in ones come first."""

    before_start: list[Hook] = msgspec.field(default_factory=list)
    after_exit: list[Hook] = msgspec.field(default_factory=list)
    on_job_end: list[JobHook] = msgspec.field(default_factory=list)

    @classmethod
    def default(cls) -> Hooks:
        return cls(before_start=[stage_inputs], after_exit=[upload_outputs, upload_logs])

    def need_dirs(self, task: TaskDef) -> bool:
        """Whether a hook before the start may write into the work dir (so it must exist)."""
        return bool(task.inputs) or self.before_start != [stage_inputs]

    async def run_before(self, context: HookContext) -> None:
        for hook in self.before_start:
            await _run(hook, context, "stage_in_failed")

    async def run_after(self, context: HookContext) -> Outcome:
        """Run every after-exit hook; the first failure fails a succeeded attempt."""
        assert context.outcome is not None
        outcome = context.outcome
        for hook in self.after_exit:
            try:
                await _run(hook, context, "stage_out_failed")
            except HookFailed as exc:
                if outcome.succeeded:
                    outcome = msgspec.structs.replace(outcome, reason=exc.reason)
        return outcome


async def _run(hook: Hook, context: HookContext, failure: str) -> None:
    try:
        await hook(context)
    except HookFailed:
        raise
    except Exception as exc:  # any hook error is the attempt's failure, with its message
        leaf = _first_leaf(exc)
        # A file name in it is the task's choice: no control character reaches a terminal.
        raise HookFailed(f"{failure}: {printable(str(leaf) or type(leaf).__name__)}") from exc


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups of concurrent transfers."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def stage_inputs(context: HookContext) -> None:
    """Copy every input mapping into the work dir."""
    ctx = context.instance
    for mapping in ctx.task.inputs:
        uri = StorageURI.parse(context.expand(mapping.from_))
        dest = Local.of(ctx.work_dir, context.expand(mapping.path))
        await context.backend(uri).download(uri, dest)


async def upload_outputs(context: HookContext) -> None:
    """Copy outputs out: ``when: success`` ones only after a success, ``always`` ones always."""
    ctx, outcome = context.instance, context.outcome
    succeeded = outcome is not None and outcome.succeeded
    for mapping in ctx.task.outputs:
        if mapping.when == "success" and not succeeded:
            continue
        src = Local.of(ctx.work_dir, context.expand(mapping.path))
        uri = StorageURI.parse(context.expand(mapping.to))
        found = await anyio.to_thread.run_sync(beneath.kind, src)
        if found is None:
            raise HookFailed(f"stage_out_failed: output {mapping.path} does not exist")
        if found == "other":  # never followed, nor read: a FIFO blocks, a device never ends
            raise HookFailed(
                f"stage_out_failed: output {mapping.path} is a link or not a regular file"
            )
        if uri.is_prefix and found == "file":
            uri = uri.child(uri.key + src.name)  # a file into a folder keeps its name
        await context.backend(uri).upload(src, uri)


async def upload_logs(context: HookContext) -> None:
    """Redirect stdout/stderr after every end; a prefix gets ``<task>.<index>.<stream>``."""
    ctx = context.instance
    for stream, target, path in (
        ("stdout", ctx.task.stdout, ctx.stdout_path),
        ("stderr", ctx.task.stderr, ctx.stderr_path),
    ):
        if target is None:
            continue
        uri = StorageURI.parse(context.expand(target))
        if uri.is_prefix:
            uri = uri.child(f"{uri.key}{ctx.task.name}.{ctx.index}.{stream}")
        await context.backend(uri).upload(Local(path.parent, path.name), uri)
