"""aiobatch: batch jobs as durable DAGs of local processes and containers, for async Python."""

from aiobatch.api import (
    InstanceResult,
    JobHandle,
    JobSnapshot,
    JobSummary,
    TaskProgress,
    TaskResult,
)
from aiobatch.config import ComputeEnvConfig, Config, load_config
from aiobatch.errors import (
    AiobatchError,
    ConfigError,
    InstanceNotFound,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    JobNotRetryable,
    RuntimeClosed,
    ServiceUnavailable,
    SpecError,
    StateDirBusy,
    TaskNotFound,
)
from aiobatch.events import (
    Event,
    InstanceStateChanged,
    JobStateChanged,
    JobStopRequested,
    JobSubmitted,
    TaskStateChanged,
)
from aiobatch.runtime import Runtime
from aiobatch.spec import JobDef, JobSpec, TaskDef, TaskSpec, TemplateSpec, load_spec
from aiobatch.states import InstanceState, JobState, TaskState

__all__ = [
    "AiobatchError",
    "ComputeEnvConfig",
    "Config",
    "ConfigError",
    "Event",
    "InstanceNotFound",
    "InstanceResult",
    "InstanceState",
    "InstanceStateChanged",
    "InvalidTransition",
    "JobDef",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobNotRetryable",
    "JobSnapshot",
    "JobSpec",
    "JobState",
    "JobStateChanged",
    "JobStopRequested",
    "JobSubmitted",
    "JobSummary",
    "Runtime",
    "RuntimeClosed",
    "ServiceUnavailable",
    "SpecError",
    "StateDirBusy",
    "TaskDef",
    "TaskNotFound",
    "TaskProgress",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TaskStateChanged",
    "TemplateSpec",
    "load_config",
    "load_spec",
]
