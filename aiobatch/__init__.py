"""aiobatch: batch jobs as durable DAGs of local processes and containers, for async Python."""

from typing import TYPE_CHECKING, Any

from aiobatch.api import (
    BatchAPI,
    InstanceResult,
    JobHandle,
    JobSnapshot,
    JobSummary,
    StageProgress,
    TaskProgress,
    TaskResult,
)
from aiobatch.blocking import Connection, ConnectionClosed, WaitTimeoutError, connect
from aiobatch.config import ComputeEnvConfig, Config, load_config
from aiobatch.errors import (
    AiobatchError,
    ConfigError,
    EnvNotFound,
    InstanceNotFound,
    InvalidTransition,
    JobFailed,
    JobNotFinal,
    JobNotFound,
    JobNotRetryable,
    RuntimeClosed,
    ServiceUnavailable,
    SpecError,
    StartupError,
    StateDirBusy,
    StateDirUnwritable,
    TaskNotFound,
)
from aiobatch.events import (
    Event,
    InstanceStateChanged,
    InstanceStopRequested,
    JobStateChanged,
    JobStopRequested,
    JobSubmitted,
    NotificationFailed,
    TaskStateChanged,
)
from aiobatch.runtime import Runtime
from aiobatch.spec import JobDef, JobSpec, TaskDef, TaskSpec, TemplateSpec, load_spec
from aiobatch.states import InstanceState, JobState, Status, TaskState
from aiobatch.wire import EnvChange, EnvInfo, HostInfo

if TYPE_CHECKING:
    from aiobatch.client import Client


def __getattr__(name: str) -> Any:
    # The client pulls in aiohttp: only programs that use it pay for the import.
    if name == "Client":
        from aiobatch.client import Client

        return Client
    raise AttributeError(f"module 'aiobatch' has no attribute {name!r}")


__all__ = [
    "AiobatchError",
    "BatchAPI",
    "Client",
    "ComputeEnvConfig",
    "Config",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "EnvChange",
    "EnvInfo",
    "EnvNotFound",
    "Event",
    "HostInfo",
    "InstanceNotFound",
    "InstanceResult",
    "InstanceState",
    "InstanceStateChanged",
    "InstanceStopRequested",
    "InvalidTransition",
    "JobDef",
    "JobFailed",
    "JobHandle",
    "JobNotFinal",
    "JobNotFound",
    "JobNotRetryable",
    "JobSnapshot",
    "JobSpec",
    "JobState",
    "JobStateChanged",
    "JobStopRequested",
    "JobSubmitted",
    "JobSummary",
    "NotificationFailed",
    "Runtime",
    "RuntimeClosed",
    "ServiceUnavailable",
    "SpecError",
    "StageProgress",
    "StartupError",
    "StateDirBusy",
    "StateDirUnwritable",
    "Status",
    "TaskDef",
    "TaskNotFound",
    "TaskProgress",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TaskStateChanged",
    "TemplateSpec",
    "WaitTimeoutError",
    "connect",
    "load_config",
    "load_spec",
]
