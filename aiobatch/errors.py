"""One error root for the package; each subclass also inherits the builtin it resembles."""

from __future__ import annotations

from collections.abc import Sequence


class AiobatchError(Exception):
    """Root of every error aiobatch raises on purpose."""


class SpecError(AiobatchError, ValueError):
    """A job spec is invalid. ``errors`` holds every problem, each prefixed by its field path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


class ConfigError(AiobatchError, ValueError):
    """The configuration file is invalid."""


class InvalidTransition(AiobatchError, RuntimeError):
    """A state change that the transition table forbids."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        self.kind, self.old, self.new = kind, old, new
        super().__init__(f"illegal {kind} transition {old} -> {new}")


class JobNotFound(AiobatchError, LookupError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")


class TaskNotFound(AiobatchError, LookupError):
    def __init__(self, job_id: str, task: str) -> None:
        super().__init__(f"job {job_id!r} has no task {task!r}")


class InstanceNotFound(AiobatchError, LookupError):
    def __init__(self, job_id: str, task: str, index: int) -> None:
        super().__init__(f"task {task!r} of job {job_id!r} has no instance {index}")


class JobFailed(AiobatchError):
    """Raised by ``wait_for_success`` when a job ends in any state but SUCCEEDED."""

    def __init__(self, job_id: str, status: str, failed_tasks: Sequence[str]) -> None:
        self.job_id, self.status, self.failed_tasks = job_id, status, tuple(failed_tasks)
        names = ", ".join(self.failed_tasks) or "none"
        super().__init__(f"job {job_id} ended {status}; failed tasks: {names}")


class StartupError(AiobatchError, RuntimeError):
    """The runtime or service cannot start, for a reason that starting again would not fix.

    The message is one line: what (a file, an address) and what to do about it. It is known
    before any job is recovered; the CLI prints it and exits 2 (systemd does not restart)."""


class DatabaseUnusable(StartupError):
    """The state dir's database is corrupt, of another application, or of a newer aiobatch.
    It is left exactly as it was found."""

    def __init__(self, path: object, problem: str, remedy: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"database {path} {problem}; {remedy}")


class StateDirUnusable(StartupError):
    """The state dir cannot be made or written for a reason that lasts (read-only file
    system, permissions); a full disk is StateDirUnwritable."""

    def __init__(self, state_dir: object, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"state dir {state_dir} cannot be written ({reason}); "
            "make it writable or use another --state-dir"
        )


class StateDirBusy(StartupError):
    """Another runtime holds the state dir."""

    def __init__(self, state_dir: object, holder_pid: str) -> None:
        super().__init__(
            f"state dir {state_dir} is in use by another aiobatch runtime (pid {holder_pid}); "
            "stop that one or use another --state-dir"
        )


class StateDirUnwritable(AiobatchError, OSError):
    """The state dir cannot be written (its disk is full, read-only or failing): nothing new
    is accepted until it can; what runs goes on, its state changes held in memory."""

    def __init__(self, state_dir: object, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot write the state dir {state_dir}: {reason}")


class RuntimeClosed(AiobatchError, RuntimeError):
    """The runtime is not open (or is shutting down) and takes no new work."""


class JobNotRetryable(AiobatchError, ValueError):
    """Only a FAILED or CANCELLED job can be retried (and not one that failed to be recovered)."""

    def __init__(self, job_id: str, status: str, why: str | None = None) -> None:
        self.job_id, self.status = job_id, status
        why = why or "only FAILED or CANCELLED jobs can be retried"
        super().__init__(f"job {job_id} is {status}; {why}")


class EnvNotFound(AiobatchError, LookupError):
    def __init__(self, name: str) -> None:
        self.env = name
        super().__init__(f"no compute env named {name!r}")


class JobNotFinal(AiobatchError, ValueError):
    """Only a job that has ended can be deleted (or one stopped first: ``stop=True``)."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id, self.status = job_id, status
        super().__init__(
            f"job {job_id} is {status}; only a job that has ended can be deleted "
            "(stop it first, or delete with --stop)"
        )


class ServiceUnavailable(AiobatchError, ConnectionError):
    """The service's control socket cannot be reached."""
