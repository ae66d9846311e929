"""Reading, checking and resolving job specs (the structs are in ``spec_types.py``).

``load_spec``/``resolve_spec`` decode YAML, JSON, TOML, a dict or a ``JobSpec``, apply
templates and defaults, and check everything that can be checked before a job is stored,
against the bounds of ``limits.py``. All problems are collected and raised together as one
``SpecError``, each naming its field path (``$.tasks[0].env.FOO``) and the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from aiobatch import spec_checks as checks
from aiobatch.documents import DocumentError, parse, read_bounded
from aiobatch.errors import SpecError
from aiobatch.labels import check_labels
from aiobatch.limits import (
    DEFAULT_MAX_INSTANCES,
    MAX_TASKS,
    MAX_TEMPLATES,
    Int64,
)
from aiobatch.notify_types import NotifySpec
from aiobatch.spec_checks import check_fields, convert_at, msgspec_error
from aiobatch.spec_dependencies import apply_dependencies, check_dependencies
from aiobatch.spec_notify import check_notify, convert_notify
from aiobatch.spec_tasks import TaskRules
from aiobatch.spec_types import (
    NAME_PATTERN,
    Command,
    Duration,
    EnvValue,
    InputMapping,
    JobDef,
    JobSpec,
    OutputMapping,
    RetryPolicy,
    TaskDef,
    TaskFields,
    TaskSpec,
    TemplateSpec,
)
from aiobatch.units import shown
from aiobatch.wire import MAX_BODY_BYTES

__all__ = [
    "Command",
    "EnvValue",
    "InputMapping",
    "JobDef",
    "JobSpec",
    "OutputMapping",
    "RetryPolicy",
    "TaskDef",
    "TaskFields",
    "TaskSpec",
    "TemplateSpec",
    "convert_at",
    "decode_spec",
    "json_schema",
    "load_spec",
    "msgspec_error",
    "read_spec_file",
    "resolve_spec",
]


class _Envelope(Struct, kw_only=True, forbid_unknown_fields=True):
    """The top level only, so each task and template is checked on its own and all errors show."""

    name: str
    tasks: list[Any]
    priority: Int64 = 0
    timeout: Duration | UnsetType = UNSET
    env: dict[str, EnvValue] = {}
    secrets: dict[str, str] = {}
    templates: dict[str, Any] = {}
    labels: dict[str, str] = {}
    notify: list[Any] = []


def read_spec_file(path: str | Path) -> Any:
    """Parse a spec file by extension: .yaml/.yml, .json, .toml. Raises SpecError.

    At most MAX_BODY_BYTES are read, as the API takes in a request: a larger file, or one
    that is not a regular file (a device, a FIFO), is refused before it is read.
    """
    path = Path(path)
    try:
        return parse(path, read_bounded(path, MAX_BODY_BYTES, "spec"))
    except DocumentError as exc:
        raise SpecError([str(exc)]) from None


class _Decoded(msgspec.Struct):
    """A spec decoded as far as it could be: what failed is reported, what did not is still
    checked, so that all of a spec's errors are found at once."""

    name: str | None
    priority: int
    timeout: Duration | UnsetType
    env: dict[str, EnvValue]
    secrets: dict[str, str]
    templates: dict[str, TemplateSpec]
    labels: dict[str, str]
    notify: list[NotifySpec | None]  # None: an entry that was refused
    tasks: list[TaskSpec | None]  # None: not even its name could be read
    bad: set[str]  # field paths whose values were refused


def _decode(data: Any, errors: list[str]) -> _Decoded:
    if isinstance(data, JobSpec):  # made in Python: checked the same way as a document
        data = msgspec.to_builtins(data)
    if not isinstance(data, Mapping):
        raise SpecError([f"$: expected a mapping at the top level, got {type(data).__name__}"])
    bad: set[str] = set()
    checks.check_strings(data, "$", errors)
    top = checks.convert_fields(data, _Envelope, "$", errors, bad)
    raw_tasks, raw_templates = top.get("tasks", []), top.get("templates", {})
    if len(raw_tasks) > MAX_TASKS:
        errors.append(f"$.tasks: at most {MAX_TASKS} tasks in a job, got {len(raw_tasks)}")
        raw_tasks, bad = [], bad | {"$.tasks"}
    if len(raw_templates) > MAX_TEMPLATES:
        errors.append(f"$.templates: at most {MAX_TEMPLATES}, got {len(raw_templates)}")
        raw_templates = {}
    templates = {}
    for name, raw in raw_templates.items():
        where = checks.key_path("$.templates", name)
        template = checks.convert_struct(raw, TemplateSpec, where, errors, bad)
        if template is not None:
            templates[name] = template
    return _Decoded(
        name=top.get("name"),
        priority=top.get("priority", 0),
        timeout=top.get("timeout", UNSET),
        env=top.get("env", {}),
        secrets=top.get("secrets", {}),
        templates=templates,
        labels=top.get("labels", {}),
        notify=convert_notify(top.get("notify", []), "$.notify", errors),
        tasks=[
            checks.convert_struct(raw, TaskSpec, f"$.tasks[{i}]", errors, bad)
            for i, raw in enumerate(raw_tasks)
        ],
        bad=bad | ({"$.tasks"} if "tasks" not in top else set()),
    )


def decode_spec(data: Any) -> JobSpec:
    """Type-check a parsed document (dict) into a ``JobSpec``, reporting every field's errors:
    types and static bounds (msgspec), unknown fields, and strings nothing downstream takes
    (NUL, lone surrogates). A ``JobSpec`` made in Python is checked the same way."""
    errors: list[str] = []
    decoded = _decode(data, errors)
    if errors:
        raise SpecError(checks.capped(errors))
    assert decoded.name is not None
    return JobSpec(
        name=decoded.name,
        tasks=tuple(task for task in decoded.tasks if task is not None),
        priority=decoded.priority,
        timeout=decoded.timeout,
        env=decoded.env,
        secrets=decoded.secrets,
        templates=decoded.templates,
        labels=decoded.labels,
        notify=tuple(spec for spec in decoded.notify if spec is not None),
    )


def resolve_spec(
    spec: JobSpec | Mapping[str, Any],
    *,
    compute_envs: Mapping[str, str] | None = None,
    templates: Mapping[str, TemplateSpec] | None = None,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    switch_user: bool | None = None,
) -> JobDef:
    """Validate a spec and apply templates and defaults.

    ``compute_envs`` maps each known compute env name to its kind (``local``/``docker``);
    ``templates`` are the ones registered by configuration (job-local ones win);
    ``max_instances`` bounds each task's instances and the job's sum of them;
    ``switch_user`` says whether local tasks may run as another ``user`` (None: whether
    this process may, see ``users.may_switch_user``).
    Raises SpecError listing every problem found.
    """
    errors: list[str] = []
    job = _decode(spec, errors)
    envs = (
        dict(compute_envs) if compute_envs is not None else {"local": "local", "docker": "docker"}
    )
    all_templates = {**(templates or {}), **job.templates}

    if job.name is not None:
        checks.check_job_name(job.name, errors)
    timeout_s = checks.check_job_timeout(job.timeout, errors)
    checks.check_env(job.env, "$.env", errors)
    checks.check_secrets(job.secrets, "$.secrets", errors)
    check_labels(job.labels, "$.labels", errors)
    notify = check_notify(job.notify, "$.notify", errors)
    for name in sorted(job.secrets.keys() & job.env.keys()):
        errors.append(
            f"{checks.key_path('$.secrets', name)}: also set in {checks.key_path('$.env', name)}:"
            " a variable is either plain data (env) or a secret, not both"
        )
    if not job.tasks and "$.tasks" not in job.bad:
        errors.append("$.tasks: a job needs at least one task")
    tasks = [(i, task) for i, task in enumerate(job.tasks) if task is not None]
    used = {task.template for _, task in tasks if task.template is not UNSET}
    for name, template in all_templates.items():
        if name in job.templates or name in used:
            check_fields(template, checks.key_path("$.templates", name), errors)

    index_of: dict[str, int] = {}
    for i, task in tasks:
        where = f"$.tasks[{i}]"
        if not NAME_PATTERN.fullmatch(task.name):
            errors.append(
                f"{where}.name: {shown(task.name)} is not a valid task name "
                "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
            )
        if task.name in index_of:
            errors.append(
                f"{where}.name: duplicate task name {shown(task.name)} "
                f"(first at $.tasks[{index_of[task.name]}])"
            )
        else:
            index_of[task.name] = i
        check_fields(task, where, errors)
        if task.template is not UNSET and task.template not in all_templates:
            job.bad.add(f"{where}.command")  # it may come from the template
            known = ", ".join(sorted(all_templates)) or "none defined"
            errors.append(
                f"{where}.template: unknown template {shown(task.template)} (known: {known})"
            )

    check_dependencies(tasks, index_of, errors)

    rules = TaskRules(
        envs, job.name or "", job.env, job.secrets, job.bad, max_instances, switch_user
    )
    resolved = [
        rules.resolve(task, f"$.tasks[{i}]", _template_of(task, all_templates), errors)
        for i, task in tasks
    ]
    resolved = apply_dependencies(tasks, resolved, errors)
    total = sum(task.instances for task in resolved)
    if total > max_instances and all(task.instances <= max_instances for task in resolved):
        errors.append(
            f"$.tasks: the job's instances add up to {total}; at most {max_instances} "
            "(max_instances) in a job"
        )
    if errors:
        raise SpecError(checks.capped(errors))
    assert job.name is not None
    return JobDef(
        name=job.name,
        priority=job.priority,
        timeout_s=timeout_s,
        env={k: checks.env_str(v) for k, v in job.env.items()},
        secrets=dict(job.secrets),
        labels=dict(job.labels),
        notify=notify,
        tasks=tuple(resolved),
    )


def _template_of(task: TaskSpec, templates: Mapping[str, TemplateSpec]) -> TemplateSpec | None:
    return templates.get(task.template) if task.template is not UNSET else None


def load_spec(
    source: str | Path | JobSpec | Mapping[str, Any],
    *,
    compute_envs: Mapping[str, str] | None = None,
    templates: Mapping[str, TemplateSpec] | None = None,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    switch_user: bool | None = None,
) -> JobDef:
    """Read (when given a path) and resolve a spec. Raises SpecError."""
    data = read_spec_file(source) if isinstance(source, str | Path) else source
    if not isinstance(data, JobSpec | Mapping):
        raise SpecError([f"$: expected a mapping at the top level, got {type(data).__name__}"])
    return resolve_spec(
        data,
        compute_envs=compute_envs,
        templates=templates,
        max_instances=max_instances,
        switch_user=switch_user,
    )


def json_schema() -> dict[str, Any]:
    """JSON Schema of the job spec."""
    return msgspec.json.schema(JobSpec)
