"""aiobatch: batch jobs as durable DAGs of local processes and containers, for async Python.

The public names are imported when first used (PEP 562), so that ``import aiobatch`` and the
command's start pay only for the modules they touch: the client pulls in aiohttp, the
runtime SQLite (structlog waits for its first line logged).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from aiobatch.blocking import (
        Connection,
        ConnectionClosed,
        WaitTimeoutError,
        connect,
    )
    from aiobatch.client import Client
    from aiobatch.config import (
        ComputeEnvConfig,
        Config,
        load_config,
    )
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
    from aiobatch.spec import (
        JobDef,
        JobSpec,
        TaskDef,
        TaskSpec,
        TemplateSpec,
        load_spec,
    )
    from aiobatch.states import (
        InstanceState,
        JobState,
        Status,
        TaskState,
    )
    from aiobatch.wire import (
        EnvChange,
        EnvInfo,
        HostInfo,
    )

# Where each public name lives.
_HOMES = {
    "BatchAPI": "aiobatch.api",
    "InstanceResult": "aiobatch.api",
    "JobHandle": "aiobatch.api",
    "JobSnapshot": "aiobatch.api",
    "JobSummary": "aiobatch.api",
    "StageProgress": "aiobatch.api",
    "TaskProgress": "aiobatch.api",
    "TaskResult": "aiobatch.api",
    "Connection": "aiobatch.blocking",
    "ConnectionClosed": "aiobatch.blocking",
    "WaitTimeoutError": "aiobatch.blocking",
    "connect": "aiobatch.blocking",
    "ComputeEnvConfig": "aiobatch.config",
    "Config": "aiobatch.config",
    "load_config": "aiobatch.config",
    "AiobatchError": "aiobatch.errors",
    "ConfigError": "aiobatch.errors",
    "EnvNotFound": "aiobatch.errors",
    "InstanceNotFound": "aiobatch.errors",
    "InvalidTransition": "aiobatch.errors",
    "JobFailed": "aiobatch.errors",
    "JobNotFinal": "aiobatch.errors",
    "JobNotFound": "aiobatch.errors",
    "JobNotRetryable": "aiobatch.errors",
    "RuntimeClosed": "aiobatch.errors",
    "ServiceUnavailable": "aiobatch.errors",
    "SpecError": "aiobatch.errors",
    "StartupError": "aiobatch.errors",
    "StateDirBusy": "aiobatch.errors",
    "StateDirUnwritable": "aiobatch.errors",
    "TaskNotFound": "aiobatch.errors",
    "Event": "aiobatch.events",
    "InstanceStateChanged": "aiobatch.events",
    "InstanceStopRequested": "aiobatch.events",
    "JobStateChanged": "aiobatch.events",
    "JobStopRequested": "aiobatch.events",
    "JobSubmitted": "aiobatch.events",
    "NotificationFailed": "aiobatch.events",
    "TaskStateChanged": "aiobatch.events",
    "Runtime": "aiobatch.runtime",
    "JobDef": "aiobatch.spec",
    "JobSpec": "aiobatch.spec",
    "TaskDef": "aiobatch.spec",
    "TaskSpec": "aiobatch.spec",
    "TemplateSpec": "aiobatch.spec",
    "load_spec": "aiobatch.spec",
    "InstanceState": "aiobatch.states",
    "JobState": "aiobatch.states",
    "Status": "aiobatch.states",
    "TaskState": "aiobatch.states",
    "EnvChange": "aiobatch.wire",
    "EnvInfo": "aiobatch.wire",
    "HostInfo": "aiobatch.wire",
    "Client": "aiobatch.client",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'aiobatch' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
