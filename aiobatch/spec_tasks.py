"""A task with its template applied, checked against what only the whole can say: its
compute env's kind (a local task takes no container-only field, and its ``user`` must exist
and be one the runtime may become), ``max_instances``, and what fits exec (ARG_MAX)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from msgspec import UNSET

from aiobatch import spec_checks as checks
from aiobatch.limits import AIOBATCH_ENV_BYTES, ARG_MAX, SPEC_ARG_BUDGET
from aiobatch.spec_retries import as_policy, backoff_def
from aiobatch.spec_types import (
    CONTAINER_ONLY,
    Command,
    EnvValue,
    TaskDef,
    TaskFields,
    TaskSpec,
    TemplateSpec,
)
from aiobatch.units import parse_duration, parse_size, shown
from aiobatch.users import may_switch_user, resolve_user

T = TypeVar("T")
MERGED = ("env", "secrets")  # a task's keys over its template's, not the whole field


def merge(task: TaskSpec, template: TemplateSpec | None) -> dict[str, Any]:
    """Field values of the task over those of its template; env and secrets are merged key by
    key (the task's win)."""
    merged: dict[str, Any] = {}
    for name in TaskFields.__struct_fields__:
        value = getattr(task, name)
        base = getattr(template, name) if template is not None else UNSET
        if name in MERGED and value is not UNSET and base is not UNSET:
            value = {**base, **value}
        merged[name] = base if value is UNSET else value
    return merged


class TaskRules:
    """What a task is checked against once its template is applied: its compute env's kind,
    the job's instances, what fits exec, whether its user may be switched to."""

    def __init__(
        self,
        envs: Mapping[str, str],
        job_name: str,
        job_env: Mapping[str, EnvValue],
        job_secrets: Mapping[str, str],
        bad: Collection[str],
        max_instances: int,
        switch_user: bool | None,
    ) -> None:
        self.envs, self.bad = envs, bad  # bad: fields refused already
        self.job_env = {k: checks.env_str(v) for k, v in job_env.items()}
        self.job_secrets = job_secrets
        self.max_instances = max_instances
        self._switch_user = switch_user
        # The job's part of every instance's environment, and what the runtime adds.
        self.env_bytes = checks.exec_size(f"AIOBATCH_JOB_NAME={job_name}") + AIOBATCH_ENV_BYTES

    @property
    def switch_user(self) -> bool:
        if self._switch_user is None:
            self._switch_user = may_switch_user()
        return self._switch_user

    def resolve(
        self, task: TaskSpec, where: str, template: TemplateSpec | None, errors: list[str]
    ) -> TaskDef:
        fields = merge(task, template)

        def value(name: str, default: Any = None) -> Any:
            return default if fields[name] is UNSET else fields[name]

        command, image = value("command"), value("image")
        if command is None and image is None and f"{where}.command" not in self.bad:
            errors.append(f"{where}.command: required (a task without an image needs a command)")
        default_env = "docker" if image is not None else "local"
        env_name = value("compute_env", default_env)
        kind = self.envs.get(env_name)
        if kind is None:
            known = ", ".join(sorted(self.envs))
            errors.append(
                f"{where}.compute_env: unknown compute env {shown(env_name)} (known: {known})"
            )
        elif kind == "local":
            self._check_local(fields, where, env_name, errors)
        instances = value("instances", 1)
        if instances > self.max_instances:
            errors.append(
                f"{where}.instances: at most {self.max_instances} (max_instances), got {instances}"
            )
        env = {k: checks.env_str(v) for k, v in value("env", {}).items()}
        self._check_exec_size(command, {**self.job_env, **env}, where, errors)
        secrets = dict(value("secrets", {}))
        self._check_secret_names({**self.job_env, **env}, secrets, env, where, errors)

        timeout, retries, resources = value("timeout"), value("retries"), value("resources")
        policy = as_policy(retries)
        memory = resources.memory if resources is not None else None
        return TaskDef(
            name=task.name,
            command=command,
            instances=instances,
            depends_on=(),  # set by spec_dependencies.apply_dependencies
            env=env,
            secrets=secrets,
            compute_env=env_name,
            max_parallel=value("max_parallel"),
            timeout_s=_or_none(parse_duration, timeout),
            retry_limit=policy.limit,
            retry_exit_codes=policy.on_exit_codes,
            retry_reasons=policy.on_reasons,
            retry_backoff=backoff_def(policy),
            on_failure=value("on_failure", "fail_job"),
            image=image,
            inputs=value("inputs", ()),
            outputs=value("outputs", ()),
            stdout=value("stdout"),
            stderr=value("stderr"),
            cpus=resources.cpus if resources is not None else None,
            memory_bytes=_or_none(parse_size, memory),
            workdir=value("workdir"),
            user=value("user"),
            network=value("network"),
            pull=value("pull", "if_missing"),
            keep_failed=value("keep_failed", False),
        )

    def _check_local(
        self, fields: Mapping[str, Any], where: str, env_name: str, errors: list[str]
    ) -> None:
        """A local task takes no field only a container honours; its user must exist here,
        and the runtime must be able to become it."""
        for name in CONTAINER_ONLY:
            if fields[name] is not UNSET:
                errors.append(
                    f"{where}.{name}: not supported by compute env {env_name!r} (kind 'local'):"
                    " only a container honours it"
                )
        user = fields["user"]
        if user is UNSET:
            return
        if not self.switch_user:
            errors.append(
                f"{where}.user: a local task runs as another user only when the runtime is "
                "root or has CAP_SETUID, CAP_SETGID and CAP_CHOWN; this one has not"
            )
            return
        try:
            resolve_user(user)
        except (LookupError, ValueError) as exc:  # ValueError: not encodable as a name
            errors.append(f"{where}.user: {exc}")

    def _check_secret_names(
        self,
        env: Mapping[str, str],
        secrets: Mapping[str, str],
        task_env: Mapping[str, str],
        where: str,
        errors: list[str],
    ) -> None:
        """A variable is plain data (env: stored, shown) or a secret (read at each start, never
        stored): never both, so a value meant as a secret is never kept by mistake."""
        for name in {**self.job_secrets, **secrets}:
            if name not in env or (name not in secrets and name not in task_env):
                continue  # not at all, or the job's alone (reported once, for the job)
            secret_at = "$" if name in self.job_secrets and name not in secrets else where
            env_at = where if name in task_env else "$"
            errors.append(
                f"{checks.key_path(f'{secret_at}.secrets', name)}: also set in "
                f"{checks.key_path(f'{env_at}.env', name)}: a variable is either plain data "
                "(env) or a secret, not both"
            )

    def _check_exec_size(
        self, command: Command | None, env: Mapping[str, str], where: str, errors: list[str]
    ) -> None:
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command or ())
        size = sum(checks.exec_size(arg) for arg in argv) + self.env_bytes
        size += checks.env_size(env)
        if size > SPEC_ARG_BUDGET:
            errors.append(
                f"{where}: its command and environment take {size} bytes; at most "
                f"{SPEC_ARG_BUDGET} fit, half the system's ARG_MAX ({ARG_MAX}): the other "
                "half is kept for the environment the service passes on"
            )


def _or_none(parse: Callable[[Any], T], value: Any) -> T | None:
    """A value checked already (its error reported) or absent: None if it does not parse."""
    try:
        return None if value is None else parse(value)
    except ValueError:
        return None
