"""The job spec's structs: as users write it (``JobSpec``, ``TaskSpec``, ``TemplateSpec``) and
as the runtime uses it once resolved (``JobDef``, ``TaskDef``).

Integer fields carry their bounds (``aiobatch.limits``): msgspec checks them while decoding
and the JSON schema shows them. ``spec.py`` decodes, checks and resolves.
"""

from __future__ import annotations

import re
from typing import Literal

from msgspec import UNSET, Struct, UnsetType, field

from aiobatch.limits import MAX_DURATION_S, Count, ExitCode, Int64, RetryLimit
from aiobatch.notify_types import NotifyDef, NotifySpec

EnvValue = str | int | float | bool
Duration = str | int | float
Command = str | tuple[str, ...]
OnFailure = Literal["fail_job", "continue"]
# When a dependency lets its dependent start: it SUCCEEDED (the default); it ended in any
# final state (cleanup, reports); it ended with at least one instance SUCCEEDED.
When = Literal["succeeded", "finished", "partly_succeeded"]
# Failure reasons a retry policy can name: what an attempt's reason starts with.
RetryReason = Literal[
    "timeout",
    "oom",
    "signal",
    "exit_code",
    "engine_error",
    "image_unavailable",
    "stage_in_failed",
    "stage_out_failed",
    "spawn_failed",
    "exec_failed",
    "secret_unavailable",
    "executor_error",
    "runtime_lost_limit",
    "system_limit",
]
PullPolicy = Literal["if_missing", "always", "never"]
OutputWhen = Literal["success", "always"]
# Where a secret's value is read when an attempt starts: ``file:/abs/path`` or ``env:VAR``
# (the runtime's own environment). Only the source is stored, never the value.
SecretSource = str
# The runtime's own variables (they name the attempt): no secret may replace them.
RESERVED_ENV_PREFIX = "AIOBATCH_"

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
URI_SCHEMES = ("s3://", "file://")
# Fields only a container can honour: refused on a task whose compute env is local.
CONTAINER_ONLY = ("image", "workdir", "resources", "network", "pull", "keep_failed")


class InputMapping(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Copy ``from`` (a URI) to ``path`` (relative to the instance's work dir) before start."""

    from_: str = field(name="from")
    path: str


class OutputMapping(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Copy ``path`` (relative to the work dir) to ``to`` (a URI) after the instance exits."""

    path: str
    to: str
    when: OutputWhen = "success"


class Backoff(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The wait before retry n (1, 2, ...): ``delay * factor ** (n - 1)``, at most
    ``max_delay``."""

    delay: Duration
    factor: float = 2.0
    max_delay: Duration | UnsetType = UNSET


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    limit: RetryLimit = 0
    # Retry only on these exit codes (a signal N counts as 128 + N) or these reasons; with
    # neither, any failure is retried.
    on_exit_codes: tuple[ExitCode, ...] | None = None
    on_reasons: tuple[RetryReason, ...] | None = None
    backoff: Backoff | None = None


class Dependency(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``{task, when, by_index}``: a dependency with its condition. ``by_index`` joins two
    tasks of the same instance count instance by instance: index i starts once index i of
    ``task`` SUCCEEDED."""

    task: str
    when: When = "succeeded"
    by_index: bool = False


class BackoffDef(Struct, frozen=True):
    delay_s: float
    factor: float
    max_delay_s: float | None = None

    def wait_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1 for the first), never past the cap
        (``max_delay``, else the longest duration a spec may give)."""
        cap = MAX_DURATION_S if self.max_delay_s is None else self.max_delay_s
        wait = self.delay_s
        for _ in range(retry - 1):  # retries are at most MAX_RETRIES: no float overflow
            wait *= self.factor
            if wait >= cap:
                break
        return min(wait, cap)


class Resources(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    cpus: float | None = None
    memory: str | int | None = None


class TaskFields(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Fields a task shares with templates. UNSET means "take it from the template/default"."""

    command: Command | UnsetType = UNSET
    image: str | UnsetType = UNSET
    instances: Count | UnsetType = UNSET
    env: dict[str, EnvValue] | UnsetType = UNSET
    secrets: dict[str, SecretSource] | UnsetType = UNSET
    inputs: tuple[InputMapping, ...] | UnsetType = UNSET
    outputs: tuple[OutputMapping, ...] | UnsetType = UNSET
    stdout: str | UnsetType = UNSET
    stderr: str | UnsetType = UNSET
    max_parallel: Count | UnsetType = UNSET
    timeout: Duration | UnsetType = UNSET
    retries: RetryLimit | RetryPolicy | UnsetType = UNSET
    on_failure: OnFailure | UnsetType = UNSET
    compute_env: str | UnsetType = UNSET
    resources: Resources | UnsetType = UNSET
    workdir: str | UnsetType = UNSET
    user: str | UnsetType = UNSET
    network: str | UnsetType = UNSET
    pull: PullPolicy | UnsetType = UNSET
    keep_failed: bool | UnsetType = UNSET


class TemplateSpec(TaskFields, frozen=True, kw_only=True):
    """Named task settings that tasks extend: ``env`` and ``secrets`` merge, other fields
    override."""


class TaskSpec(TaskFields, frozen=True, kw_only=True):
    name: str
    template: str | UnsetType = UNSET
    depends_on: tuple[str | Dependency, ...] = ()


class JobSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A job as a user writes it."""

    name: str
    tasks: tuple[TaskSpec, ...]
    priority: Int64 = 0  # stored as SQLite's signed 64-bit INTEGER
    timeout: Duration | UnsetType = UNSET  # the whole job, counted from its start
    env: dict[str, EnvValue] = {}
    secrets: dict[str, SecretSource] = {}
    templates: dict[str, TemplateSpec] = {}
    labels: dict[str, str] = {}  # key -> value, to filter jobs by (limits.py: MAX_LABELS)
    notify: tuple[NotifySpec, ...] = ()  # webhooks for this job's events (notify_types.py)


class TaskDef(Struct, frozen=True, kw_only=True):
    """A task with its template and defaults applied: what the runtime runs and stores."""

    name: str
    command: Command | None
    instances: int = 1
    depends_on: tuple[str, ...] = ()  # names, each once
    # The dependencies not met by SUCCEEDED alone: name -> when.
    conditions: dict[str, When] = {}
    by_index: tuple[str, ...] = ()  # dependencies joined instance by instance
    env: dict[str, str] = {}
    secrets: dict[str, SecretSource] = {}  # name -> source; values are read at each start
    compute_env: str = "local"
    max_parallel: int | None = None
    timeout_s: float | None = None
    retry_limit: int = 0
    retry_exit_codes: tuple[int, ...] | None = None
    retry_reasons: tuple[str, ...] | None = None
    retry_backoff: BackoffDef | None = None
    on_failure: OnFailure = "fail_job"
    image: str | None = None
    inputs: tuple[InputMapping, ...] = ()
    outputs: tuple[OutputMapping, ...] = ()
    stdout: str | None = None
    stderr: str | None = None
    cpus: float | None = None
    memory_bytes: int | None = None
    workdir: str | None = None
    user: str | None = None
    network: str | None = None
    pull: PullPolicy = "if_missing"
    keep_failed: bool = False

    def storage_uris(self) -> list[tuple[str, str]]:
        """Every storage URI of the task, with its field path under the task."""
        uris = [(f"inputs[{k}].from", m.from_) for k, m in enumerate(self.inputs)]
        uris += [(f"outputs[{k}].to", m.to) for k, m in enumerate(self.outputs)]
        redirects = (("stdout", self.stdout), ("stderr", self.stderr))
        return uris + [(name, uri) for name, uri in redirects if uri is not None]


class JobDef(Struct, frozen=True, kw_only=True):
    """A validated job: tasks in spec order, every reference checked."""

    name: str
    tasks: tuple[TaskDef, ...]
    priority: int = 0
    timeout_s: float | None = None  # the job's deadline, from its start (or its retry)
    env: dict[str, str] = {}
    secrets: dict[str, SecretSource] = {}
    labels: dict[str, str] = {}
    notify: tuple[NotifyDef, ...] = ()  # a spec stored before notifications has none
