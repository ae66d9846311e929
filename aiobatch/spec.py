"""The job spec as users write it (msgspec structs) and as the runtime uses it (resolved).

``load_spec``/``resolve_spec`` decode YAML, JSON, TOML, a dict or a ``JobSpec``, apply
templates and defaults, and check everything that can be checked before a job is stored.
All problems are collected and raised together as one ``SpecError``.
"""

from __future__ import annotations

import posixpath
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from aiobatch.dag import find_cycles
from aiobatch.errors import SpecError
from aiobatch.units import parse_duration, parse_size

EnvValue = str | int | float | bool
Duration = str | int | float
Command = str | tuple[str, ...]
OnFailure = Literal["fail_job", "continue"]
PullPolicy = Literal["if_missing", "always", "never"]

PLACEHOLDERS = frozenset({"job_id", "job", "task", "index", "attempt"})
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
URI_SCHEMES = ("s3://", "file://")


class InputMapping(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Copy ``from`` (a URI) to ``path`` (relative to the instance's work dir) before start."""

    from_: str = field(name="from")
    path: str


class OutputMapping(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Copy ``path`` (relative to the work dir) to ``to`` (a URI) after the instance exits."""

    path: str
    to: str
    when: Literal["success", "always"] = "success"


class RetryPolicy(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    limit: int = 0
    # Retry only on these exit codes (a signal N counts as 128 + N); None retries any failure.
    on_exit_codes: tuple[int, ...] | None = None


class Resources(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    cpus: float | None = None
    memory: str | int | None = None


class TaskFields(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Fields a task shares with templates. UNSET means "take it from the template/default"."""

    command: Command | UnsetType = UNSET
    image: str | UnsetType = UNSET
    instances: int | UnsetType = UNSET
    env: dict[str, EnvValue] | UnsetType = UNSET
    inputs: tuple[InputMapping, ...] | UnsetType = UNSET
    outputs: tuple[OutputMapping, ...] | UnsetType = UNSET
    stdout: str | UnsetType = UNSET
    stderr: str | UnsetType = UNSET
    max_parallel: int | UnsetType = UNSET
    timeout: Duration | UnsetType = UNSET
    retries: int | RetryPolicy | UnsetType = UNSET
    on_failure: OnFailure | UnsetType = UNSET
    compute_env: str | UnsetType = UNSET
    resources: Resources | UnsetType = UNSET
    workdir: str | UnsetType = UNSET
    user: str | UnsetType = UNSET
    network: str | UnsetType = UNSET
    pull: PullPolicy | UnsetType = UNSET
    keep_failed: bool | UnsetType = UNSET


class TemplateSpec(TaskFields, frozen=True, kw_only=True):
    """Named task settings that tasks extend: ``env`` merges, other fields override."""


class TaskSpec(TaskFields, frozen=True, kw_only=True):
    name: str
    template: str | UnsetType = UNSET
    depends_on: tuple[str, ...] = ()


class JobSpec(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """A job as a user writes it."""

    name: str
    tasks: tuple[TaskSpec, ...]
    priority: int = 0
    env: dict[str, EnvValue] = {}
    templates: dict[str, TemplateSpec] = {}


class TaskDef(Struct, frozen=True, kw_only=True):
    """A task with its template and defaults applied: what the runtime runs and stores."""

    name: str
    command: Command | None
    instances: int = 1
    depends_on: tuple[str, ...] = ()
    env: dict[str, str] = {}
    compute_env: str = "local"
    max_parallel: int | None = None
    timeout_s: float | None = None
    retry_limit: int = 0
    retry_exit_codes: tuple[int, ...] | None = None
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
    env: dict[str, str] = {}


class _Envelope(Struct, kw_only=True, forbid_unknown_fields=True):
    """The top level only, so each task and template is checked on its own and all errors show."""

    name: str
    tasks: list[Any]
    priority: int = 0
    env: dict[str, EnvValue] = {}
    templates: dict[str, Any] = {}


def read_spec_file(path: str | Path) -> Any:
    """Parse a spec file by extension: .yaml/.yml, .json, .toml. Raises SpecError."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        if suffix in (".yaml", ".yml"):
            import yaml  # only YAML specs pay for importing PyYAML

            return yaml.safe_load(data)
        if suffix == ".json":
            return msgspec.json.decode(data)
        if suffix == ".toml":
            return msgspec.toml.decode(data)
    except Exception as exc:  # each parser has its own error type; all mean "not parseable"
        raise SpecError([f"{path}: not valid {suffix[1:].upper()}: {exc}"]) from None
    raise SpecError([f"{path}: unknown spec format {suffix!r}: use .yaml, .yml, .json or .toml"])


def msgspec_error(prefix: str, exc: msgspec.ValidationError) -> str:
    """Turn msgspec's message into ``$.field.path: problem`` under ``prefix``."""
    text = str(exc)
    message, _, where = text.partition(" - at `")
    path = prefix + where.rstrip("`")[1:] if where else prefix
    for pattern, template in (
        (r"Object missing required field `(.+)`", "{path}.{0}: required field is missing"),
        (r"Object contains unknown field `(.+)`", "{path}.{0}: unknown field"),
    ):
        match = re.fullmatch(pattern, message)
        if match:
            return template.format(match.group(1), path=path)
    return f"{path}: {message[:1].lower()}{message[1:]}"


def convert_at(data: Any, kind: type[Any], prefix: str, errors: list[str]) -> Any:
    """``msgspec.convert``, or None with the error (under ``prefix``) added to ``errors``."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        errors.append(msgspec_error(prefix, exc))
        return None


def decode_spec(data: Any) -> JobSpec:
    """Type-check a parsed document (dict) into a ``JobSpec``, reporting every task's errors."""
    if isinstance(data, JobSpec):
        return data
    errors: list[str] = []
    envelope = convert_at(data, _Envelope, "$", errors)
    if envelope is None:
        raise SpecError(errors)
    templates = {
        name: convert_at(raw, TemplateSpec, f"$.templates.{name}", errors)
        for name, raw in envelope.templates.items()
    }
    tasks = [
        convert_at(raw, TaskSpec, f"$.tasks[{i}]", errors) for i, raw in enumerate(envelope.tasks)
    ]
    if errors:
        raise SpecError(errors)
    return JobSpec(
        name=envelope.name,
        tasks=tuple(tasks),
        priority=envelope.priority,
        env=envelope.env,
        templates=templates,
    )


def _env_str(value: EnvValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_placeholders(value: str, where: str, errors: list[str]) -> None:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        errors.append(f"{where}: bad placeholder syntax in {value!r}: {exc}")
        return
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in PLACEHOLDERS:
            known = " ".join("{" + p + "}" for p in sorted(PLACEHOLDERS))
            errors.append(f"{where}: unknown placeholder {{{field_name}}} (known: {known})")
        elif spec or conversion:
            errors.append(f"{where}: placeholder {{{field_name}}} takes no format or conversion")


def _check_uri(value: str, where: str, errors: list[str]) -> None:
    _check_placeholders(value, where, errors)
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not bucket:
            errors.append(f"{where}: URI {value!r} names no bucket (s3://bucket/key)")
    elif value.startswith("file://"):
        if not value[7:].startswith("/"):
            errors.append(f"{where}: URI {value!r} must be absolute (file:///abs/path)")
    else:
        errors.append(f"{where}: URI {value!r} must start with s3:// or file://")


def _check_relative_path(value: str, where: str, errors: list[str]) -> None:
    _check_placeholders(value, where, errors)
    if not value or value.startswith("/"):
        errors.append(f"{where}: path {value!r} must be relative to the instance work dir")
        return
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        errors.append(f"{where}: path {value!r} escapes the instance work dir")


def _merge(task: TaskSpec, template: TemplateSpec | None) -> dict[str, Any]:
    """Field values of the task over those of its template; env is merged key by key."""
    merged: dict[str, Any] = {}
    for name in TaskFields.__struct_fields__:
        value = getattr(task, name)
        base = getattr(template, name) if template is not None else UNSET
        if name == "env" and value is not UNSET and base is not UNSET:
            value = {**base, **value}
        merged[name] = base if value is UNSET else value
    return merged


def resolve_spec(
    spec: JobSpec | Mapping[str, Any],
    *,
    compute_envs: Mapping[str, str] | None = None,
    templates: Mapping[str, TemplateSpec] | None = None,
) -> JobDef:
    """Validate a spec and apply templates and defaults.

    ``compute_envs`` maps each known compute env name to its kind (``local``/``docker``);
    ``templates`` are the ones registered by configuration (job-local ones win).
    Raises SpecError listing every problem found.
    """
    job = decode_spec(spec)
    envs = (
        dict(compute_envs) if compute_envs is not None else {"local": "local", "docker": "docker"}
    )
    all_templates = {**(templates or {}), **job.templates}
    errors: list[str] = []

    if not job.name.strip():
        errors.append("$.name: must not be empty")
    if not job.tasks:
        errors.append("$.tasks: a job needs at least one task")

    index_of: dict[str, int] = {}
    for i, task in enumerate(job.tasks):
        if not NAME_PATTERN.fullmatch(task.name):
            errors.append(
                f"$.tasks[{i}].name: {task.name!r} is not a valid task name "
                "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"
            )
        if task.name in index_of:
            errors.append(
                f"$.tasks[{i}].name: duplicate task name {task.name!r} "
                f"(first at $.tasks[{index_of[task.name]}])"
            )
        else:
            index_of[task.name] = i

    resolved: list[TaskDef] = []
    for i, task in enumerate(job.tasks):
        resolved_task = _resolve_task(task, f"$.tasks[{i}]", all_templates, envs, job, errors)
        for j, dep in enumerate(task.depends_on):
            if dep not in index_of:
                errors.append(f"$.tasks[{i}].depends_on[{j}]: unknown task {dep!r}")
            elif dep == task.name:
                errors.append(f"$.tasks[{i}].depends_on[{j}]: task {dep!r} depends on itself")
        if resolved_task is not None:
            resolved.append(resolved_task)

    # First task of each name only: duplicates are reported above.
    edges = {name: job.tasks[i].depends_on for name, i in index_of.items()}
    for cycle in find_cycles(edges):
        if len(cycle) == 2:
            continue  # a self-dependency, reported above in plainer words
        # Point at the edge that closes the cycle; "a -> b" reads "a depends on b".
        last, first = cycle[-2], cycle[-1]
        j = job.tasks[index_of[last]].depends_on.index(first)
        errors.append(
            f"$.tasks[{index_of[last]}].depends_on[{j}]: dependency cycle {' -> '.join(cycle)}"
        )
    if errors:
        raise SpecError(errors)
    return JobDef(
        name=job.name,
        priority=job.priority,
        env={k: _env_str(v) for k, v in job.env.items()},
        tasks=tuple(resolved),
    )


def _resolve_task(
    task: TaskSpec,
    where: str,
    templates: Mapping[str, TemplateSpec],
    envs: Mapping[str, str],
    job: JobSpec,
    errors: list[str],
) -> TaskDef | None:
    template = None
    if task.template is not UNSET:
        template = templates.get(task.template)
        if template is None:
            known = ", ".join(sorted(templates)) or "none defined"
            errors.append(f"{where}.template: unknown template {task.template!r} (known: {known})")
    fields = _merge(task, template)
    count = len(errors)

    command, image = fields["command"], fields["image"]
    if command is UNSET and image is UNSET:
        errors.append(f"{where}.command: required (a task without an image needs a command)")
    elif isinstance(command, tuple) and not command:
        errors.append(f"{where}.command: an argv list must not be empty")
    elif isinstance(command, str) and not command.strip():
        errors.append(f"{where}.command: must not be empty")

    instances = fields["instances"]
    if instances is not UNSET and instances < 1:
        errors.append(f"{where}.instances: must be at least 1, got {instances}")
    max_parallel = fields["max_parallel"]
    if max_parallel is not UNSET and max_parallel < 1:
        errors.append(f"{where}.max_parallel: must be at least 1, got {max_parallel}")

    timeout_s = None
    if fields["timeout"] is not UNSET:
        try:
            timeout_s = parse_duration(fields["timeout"])
        except ValueError as exc:
            errors.append(f"{where}.timeout: {exc}")

    retries = fields["retries"]
    policy = RetryPolicy(limit=retries) if isinstance(retries, int) else retries
    if policy is UNSET:
        policy = RetryPolicy()
    if policy.limit < 0:
        errors.append(f"{where}.retries: must be 0 or more, got {policy.limit}")

    default_env = "docker" if image is not UNSET else "local"
    env_name = fields["compute_env"] if fields["compute_env"] is not UNSET else default_env
    if env_name not in envs:
        known = ", ".join(sorted(envs))
        errors.append(f"{where}.compute_env: unknown compute env {env_name!r} (known: {known})")

    memory_bytes = None
    resources = fields["resources"]
    if resources is not UNSET:
        if resources.cpus is not None and resources.cpus <= 0:
            errors.append(f"{where}.resources.cpus: must be greater than zero")
        if resources.memory is not None:
            try:
                memory_bytes = parse_size(resources.memory)
            except ValueError as exc:
                errors.append(f"{where}.resources.memory: {exc}")

    inputs = fields["inputs"] if fields["inputs"] is not UNSET else ()
    for k, mapping in enumerate(inputs):
        _check_uri(mapping.from_, f"{where}.inputs[{k}].from", errors)
        _check_relative_path(mapping.path, f"{where}.inputs[{k}].path", errors)
    outputs = fields["outputs"] if fields["outputs"] is not UNSET else ()
    for k, out in enumerate(outputs):
        _check_relative_path(out.path, f"{where}.outputs[{k}].path", errors)
        _check_uri(out.to, f"{where}.outputs[{k}].to", errors)
    for stream in ("stdout", "stderr"):
        if fields[stream] is not UNSET:
            _check_uri(fields[stream], f"{where}.{stream}", errors)

    if len(errors) > count:
        return None

    def value(name: str, default: Any = None) -> Any:
        return default if fields[name] is UNSET else fields[name]

    env = {k: _env_str(v) for k, v in value("env", {}).items()}
    return TaskDef(
        name=task.name,
        command=value("command"),
        instances=value("instances", 1),
        depends_on=tuple(task.depends_on),
        env=env,
        compute_env=env_name,
        max_parallel=value("max_parallel"),
        timeout_s=timeout_s,
        retry_limit=policy.limit,
        retry_exit_codes=policy.on_exit_codes,
        on_failure=value("on_failure", "fail_job"),
        image=value("image"),
        inputs=inputs,
        outputs=outputs,
        stdout=value("stdout"),
        stderr=value("stderr"),
        cpus=resources.cpus if resources is not UNSET else None,
        memory_bytes=memory_bytes,
        workdir=value("workdir"),
        user=value("user"),
        network=value("network"),
        pull=value("pull", "if_missing"),
        keep_failed=value("keep_failed", False),
    )


def load_spec(
    source: str | Path | JobSpec | Mapping[str, Any],
    *,
    compute_envs: Mapping[str, str] | None = None,
    templates: Mapping[str, TemplateSpec] | None = None,
) -> JobDef:
    """Read (when given a path) and resolve a spec. Raises SpecError."""
    data = read_spec_file(source) if isinstance(source, str | Path) else source
    if not isinstance(data, JobSpec | Mapping):
        raise SpecError([f"$: expected a mapping at the top level, got {type(data).__name__}"])
    return resolve_spec(data, compute_envs=compute_envs, templates=templates)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the job spec."""
    return msgspec.json.schema(JobSpec)
