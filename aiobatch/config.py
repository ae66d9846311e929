"""The configuration file (TOML) and the defaults it falls back on.

Every number has its range (``aiobatch.limits``); the file is read only if it is a regular
file of at most MAX_CONFIG_BYTES, and every problem found is reported, prefixed with the
file's path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from aiobatch.documents import DocumentError, read_bounded
from aiobatch.errors import ConfigError
from aiobatch.limits import (
    DEFAULT_MAX_INSTANCES,
    MAX_CONFIG_BYTES,
    MAX_INSTANCES_CEILING,
    MAX_LOST_LIMIT,
    MAX_S3_ATTEMPTS,
    MAX_TEMPLATES,
    MAX_TRANSFERS,
    PORT_MAX,
    PORT_MIN,
    Slots,
)
from aiobatch.notify_types import NotifyDef, NotifySpec
from aiobatch.server_config import ServerConfig as ServerConfig  # where it always was
from aiobatch.server_config import TokenConfig, server_problems
from aiobatch.spec_checks import (
    capped,
    check_fields,
    check_strings,
    convert_struct,
    key_path,
)
from aiobatch.spec_notify import check_notify, convert_notify
from aiobatch.spec_types import TemplateSpec
from aiobatch.units import parse_duration, shown

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_SLURM_SLOTS = 1000  # elements in flight across a cluster
MAX_SLURM_CHUNK = 100_000  # elements per sbatch --array
MIN_SLURM_POLL_S, MAX_SLURM_POLL_S = 0.1, 3600.0


class ComputeEnvConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["local", "docker", "slurm"] = "local"
    # Instances that may run at once: in all for local (default: CPUs) and slurm (elements in
    # flight across the cluster, default 1000), per host for docker (default: 4).
    slots: Slots | None = None
    # docker only: the engines instances are spread over, and TLS for tcp:// ones.
    hosts: tuple[str, ...] = (DEFAULT_DOCKER_HOST,)
    tls_ca_cert: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # docker only: how long an engine that does not answer is retried (with backoff) before
    # the instance fails with `engine_error: HOST: ...`.
    engine_retry: str | int | float = "30s"
    # slurm only (executors/slurm.py): where and how elements are submitted.
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_options: tuple[str, ...] = ()  # more sbatch arguments, passed as given
    poll: str | int | float = "1s"  # squeue's interval while elements are watched
    chunk: Annotated[int, Meta(ge=1, le=MAX_SLURM_CHUNK)] = 1000  # elements per array

    @property
    def total_slots(self) -> int:
        per_host = self.slots or 1
        return per_host * len(self.hosts) if self.kind == "docker" else per_host


class S3Settings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One S3-compatible endpoint. Credentials: these keys if both are given, else the
    standard AWS chain (AWS_* environment variables, shared credential files, ...)."""

    endpoint_url: str | None = None  # None: AWS itself
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    max_transfers: Annotated[int, Meta(ge=1, le=MAX_TRANSFERS)] = 16  # objects in flight
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"  # botocore's
    max_attempts: Annotated[int, Meta(ge=1, le=MAX_S3_ATTEMPTS)] = 5


class StorageConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    s3: S3Settings = S3Settings()
    # More endpoints or accounts, named: a URI picks one with s3://NAME@bucket/key.
    profiles: dict[str, S3Settings] = {}


class LoggingConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # auto: console renderer on a terminal, JSON lines otherwise (e.g. under systemd).
    format: Literal["auto", "console", "json"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RetentionConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How long a job is kept after it ended, by its final state; unset: forever."""

    succeeded: str | int | float | None = None
    failed: str | int | float | None = None
    cancelled: str | int | float | None = None

    def ages_s(self) -> dict[str, float]:
        """Final state -> seconds a job in it is kept (only the states given)."""
        ages = {"SUCCEEDED": self.succeeded, "FAILED": self.failed, "CANCELLED": self.cancelled}
        return {state: parse_duration(age) for state, age in ages.items() if age is not None}


class Config(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    state_dir: str | None = None
    # Time a process gets between SIGTERM and SIGKILL on timeout or stop.
    kill_grace: str | int | float = "10s"
    # On SIGTERM of the service: how long running instances may finish before they are
    # interrupted (and re-run at the next start).
    shutdown_grace: str | int | float = "30s"
    # On shutdown, leave Docker containers running; the next start re-adopts them.
    detach_on_shutdown: bool = False
    # An attempt lost with the runtime (a crash) is re-run without charging the task's
    # retries, at most this many times per instance; then it fails (`runtime_lost_limit: N`).
    lost_limit: Annotated[int, Meta(ge=0, le=MAX_LOST_LIMIT)] = 3
    # Instances of a task, and of a job over all its tasks, at most.
    max_instances: Annotated[int, Meta(ge=1, le=MAX_INSTANCES_CEILING)] = DEFAULT_MAX_INSTANCES
    compute_envs: dict[str, ComputeEnvConfig] = {}
    templates: dict[str, TemplateSpec] = {}
    logging: LoggingConfig = LoggingConfig()
    storage: StorageConfig = StorageConfig()
    server: ServerConfig = ServerConfig()
    retention: RetentionConfig = RetentionConfig()
    # Webhooks for every job's events ([[notifications]]); a job may add its own (notify:).
    notifications: tuple[NotifySpec, ...] = ()

    @property
    def kill_grace_s(self) -> float:
        return parse_duration(self.kill_grace)

    @property
    def shutdown_grace_s(self) -> float:
        return parse_duration(self.shutdown_grace)

    def env_slots(self) -> dict[str, int]:
        return {name: env.total_slots for name, env in self.effective_envs().items()}

    def effective_envs(self) -> dict[str, ComputeEnvConfig]:
        """Configured envs plus the built-in ``local`` and ``docker`` ones, slots filled in."""
        envs = {
            "local": ComputeEnvConfig(kind="local"),
            "docker": ComputeEnvConfig(kind="docker"),
            **self.compute_envs,
        }
        return {name: _with_default_slots(env) for name, env in envs.items()}

    def env_kinds(self) -> dict[str, str]:
        return {name: env.kind for name, env in self.effective_envs().items()}

    def notify_targets(self) -> tuple[NotifyDef, ...]:
        """The ``[[notifications]]`` targets, checked (a Config made in Python is checked
        here: ConfigError)."""
        errors: list[str] = []
        targets = check_notify(self.notifications, "$.notifications", errors)
        if errors:
            raise ConfigError("\n".join(capped(errors)))
        return targets


def _with_default_slots(env: ComputeEnvConfig) -> ComputeEnvConfig:
    if env.slots is not None:
        return env
    defaults = {"local": os.cpu_count() or 1, "docker": 4, "slurm": DEFAULT_SLURM_SLOTS}
    slots = defaults[env.kind]
    return msgspec.structs.replace(env, slots=slots)


def _validate(config: Config) -> list[str]:
    """What types cannot say: durations, Docker endpoints, the TCP address, templates."""
    problems: list[str] = []
    for name, env in config.compute_envs.items():
        where = key_path("$.compute_envs", name)
        try:
            parse_duration(env.engine_retry)
        except ValueError as exc:
            problems.append(f"{where}.engine_retry: {exc}")
        if env.kind == "docker" and not env.hosts:
            problems.append(f"{where}.hosts: needs at least one host")
        problems += _slurm_problems(env, where)
        for i, host in enumerate(env.hosts):
            if not host.startswith(("unix://", "tcp://", "http://", "https://")):
                problems.append(
                    f"{where}.hosts[{i}]: {shown(host)} is not a Docker "
                    "endpoint (unix:///path/docker.sock or tcp://host:port)"
                )
    for key in ("kill_grace", "shutdown_grace"):
        try:
            parse_duration(getattr(config, key))
        except ValueError as exc:
            problems.append(f"$.{key}: {exc}")
    for key in ("succeeded", "failed", "cancelled"):
        age = getattr(config.retention, key)
        if age is None:
            continue
        try:
            parse_duration(age)
        except ValueError as exc:
            problems.append(f"$.retention.{key}: {exc}")
    server = config.server
    if server.http is not None:
        host, _, port = server.http.rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
            problems.append(f"$.server.http: {shown(server.http)} is not HOST:PORT")
        elif not PORT_MIN <= int(port) <= PORT_MAX:
            problems.append(f"$.server.http: port {port} is not between {PORT_MIN} and {PORT_MAX}")
        if not server.token and not server.tokens:
            problems.append("$.server.tokens: a token is required when $.server.http is set")
    problems += server_problems(server)
    for name, template in config.templates.items():
        check_fields(template, key_path("$.templates", name), problems)
    return problems


# sbatch options the Slurm executor sets itself: given again, they would break it.
_OWN_SBATCH_OPTIONS = ("--array", "--job-name", "--output", "--error", "--parsable", "--wait")
_SLURM_ONLY = ("partition", "account", "qos", "sbatch_options")


def _slurm_problems(env: ComputeEnvConfig, where: str) -> list[str]:
    if env.kind != "slurm":
        return [
            f'{where}.{name}: only for kind = "slurm"' for name in _SLURM_ONLY if getattr(env, name)
        ]
    problems = []
    for name in ("partition", "account", "qos"):
        value = getattr(env, name)
        if value is not None and (not value or any(c.isspace() or c in ",\0" for c in value)):
            problems.append(f"{where}.{name}: {shown(value)} is not a Slurm name")
    for i, option in enumerate(env.sbatch_options):
        if not option or "\0" in option:
            problems.append(f"{where}.sbatch_options[{i}]: must be a non-empty argument")
        elif option.split("=", 1)[0] in _OWN_SBATCH_OPTIONS:
            problems.append(
                f"{where}.sbatch_options[{i}]: {shown(option)} is set by aiobatch itself"
            )
    try:
        poll = parse_duration(env.poll)
    except ValueError as exc:
        problems.append(f"{where}.poll: {exc}")
    else:
        if not MIN_SLURM_POLL_S <= poll <= MAX_SLURM_POLL_S:
            problems.append(
                f"{where}.poll: between {MIN_SLURM_POLL_S:g} s and {MAX_SLURM_POLL_S:g} s"
            )
    return problems


def _table(raw: dict[str, Any], key: str, errors: list[str], at: str = "$") -> dict[str, Any]:
    value = raw.pop(key, {})
    if not isinstance(value, dict):
        errors.append(f"{at}.{key}: expected a table")
        return {}
    return value


def load_config(path: str | Path | None = None) -> Config:
    """Read a TOML config file; ``None`` gives the defaults. Raises ConfigError."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES, "config file")
    except DocumentError as exc:
        raise ConfigError(str(exc)) from None
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    errors: list[str] = []
    check_strings(raw, "$", errors)
    # Tables of named entries are converted one by one so errors name the entry.
    envs = {
        name: convert_struct(value, ComputeEnvConfig, key_path("$.compute_envs", name), errors)
        for name, value in _table(raw, "compute_envs", errors).items()
    }
    raw_templates = _table(raw, "templates", errors)
    if len(raw_templates) > MAX_TEMPLATES:
        errors.append(f"$.templates: at most {MAX_TEMPLATES}, got {len(raw_templates)}")
        raw_templates = {}
    templates = {
        name: convert_struct(value, TemplateSpec, key_path("$.templates", name), errors)
        for name, value in raw_templates.items()
    }
    notifications = convert_notify(raw.pop("notifications", []), "$.notifications", errors)
    check_notify(notifications, "$.notifications", errors)  # by index, refused ones too
    server = raw.get("server")
    raw_tokens = _table(server, "tokens", errors, "$.server") if isinstance(server, dict) else {}
    tokens = {
        name: convert_struct(value, TokenConfig, key_path("$.server.tokens", name), errors)
        for name, value in raw_tokens.items()
    }
    config = convert_struct(raw, Config, "$", errors)
    if config is not None:  # what converted is checked on: every problem is reported at once
        config = msgspec.structs.replace(
            config,
            compute_envs={k: v for k, v in envs.items() if v is not None},
            templates={k: v for k, v in templates.items() if v is not None},
            notifications=tuple(spec for spec in notifications if spec is not None),
            server=msgspec.structs.replace(
                config.server, tokens={k: v for k, v in tokens.items() if v is not None}
            ),
        )
        errors += _validate(config)
    if errors or config is None:
        raise ConfigError("\n".join(f"{path}: {error}" for error in capped(errors)))
    return config


def default_state_dir() -> Path:
    """``$AIOBATCH_STATE_DIR``, else ``$XDG_STATE_HOME/aiobatch``, else ``~/.local/state/...``."""
    if explicit := os.environ.get("AIOBATCH_STATE_DIR"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "aiobatch"
    return Path.home() / ".local" / "state" / "aiobatch"


def default_socket_path() -> Path:
    """``$AIOBATCH_SOCKET``, else ``$XDG_RUNTIME_DIR/aiobatch.sock``, else the system one."""
    if explicit := os.environ.get("AIOBATCH_SOCKET"):
        return Path(explicit)
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "aiobatch.sock"
    return Path("/run/aiobatch/aiobatch.sock")
