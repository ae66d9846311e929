"""Every bound the job spec and the config file are checked against, with the reason for it.

Bounds are checked once, where input enters (``spec.py``, ``config.py``), against what stores
or uses the value: SQLite's signed 64-bit INTEGER, the kernel's limits on exec, finite
floats for deadlines. The README's table of limits is this module.
"""

from __future__ import annotations

import os
from typing import Annotated

from msgspec import Meta

# -- storage -----------------------------------------------------------------------------------

# SQLite stores integers as signed 64-bit; a larger one is an OverflowError in the writer.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# -- files -------------------------------------------------------------------------------------

# A config file is read whole before it is checked; anything this big is not a config.
MAX_CONFIG_BYTES = 1024 * 1024
# A YAML document's size once its aliases are expanded: every node counts 1, a scalar its
# length. A "billion laughs" expands to 10**9 from a few hundred bytes; a spec of 1 MiB
# written out in full weighs about as much as its bytes.
MAX_YAML_EXPANDED = 16 * 1024 * 1024

# -- the shape of a job ------------------------------------------------------------------------

# Instances of a task, and of a job over all its tasks: the config's `max_instances` (default
# here), itself at most MAX_INSTANCES_CEILING. A declared instance costs 8 bytes at submit (a
# slot in its task's list; measured: 1M add 8 MB of RSS, 10M 78 MB), but each one is
# dispatched, run and stored one by one: a job far beyond this is a mistake, or an attack.
DEFAULT_MAX_INSTANCES = 1_000_000
MAX_INSTANCES_CEILING = 10_000_000
# Tasks per job: each is a vertex the resolver checks and a row the store writes.
MAX_TASKS = 100_000
# Templates per job or config.
MAX_TEMPLATES = 10_000
# A job's name is printed in every listing and passed to every instance (AIOBATCH_JOB_NAME).
MAX_JOB_NAME_CHARS = 256
# Retries per instance: each is an attempt with its own record and logs.
MAX_RETRIES = 1000
# A retry backoff's growth per attempt; the wait itself is capped at MAX_DURATION_S.
MAX_BACKOFF_FACTOR = 100.0
# Exit statuses as wait(2) gives them; a signal N counts as 128 + N.
EXIT_CODE_MIN, EXIT_CODE_MAX = 0, 255
# CPUs a container may be given (Docker's NanoCpus is cpus * 10**9 in a signed 64-bit int).
MAX_CPUS = 4096.0
# The fewest: the engine refuses less than 0.01 CPU, and a NanoCpus that rounds to 0 means
# no limit at all.
MIN_CPUS = 0.01
# A container's work dir path (its bind mount's target).
MAX_WORKDIR_CHARS = 4096
# Every duration (timeout, kill_grace, shutdown_grace, engine_retry): finite, more than
# zero, at most a year. NaN or infinity would mean "never" where a deadline is computed.
MAX_DURATION_S = 365 * 86400.0

# -- exec --------------------------------------------------------------------------------------

# The kernel refuses (E2BIG) any single argv or environment string longer than this
# (MAX_ARG_STRLEN: 32 pages of 4 KiB on Linux).
MAX_ARG_STRLEN = 131072
# argv and environment together must fit ARG_MAX. A spec may use at most half of it: the
# other half is kept for the environment a local instance inherits from the service.
try:
    ARG_MAX = os.sysconf("SC_ARG_MAX")
except (ValueError, OSError):  # not known here: the usual Linux value
    ARG_MAX = 2 * 1024 * 1024
if ARG_MAX <= 0:
    ARG_MAX = 2 * 1024 * 1024
SPEC_ARG_BUDGET = ARG_MAX // 2
# What the runtime adds to each instance's environment besides the job name (AIOBATCH_JOB_ID,
# _TASK_NAME, _INSTANCE_INDEX, _INSTANCE_COUNT, _ATTEMPT, _RUNTIME), counted generously.
AIOBATCH_ENV_BYTES = 1024

# -- secrets -----------------------------------------------------------------------------------

# A secret's value, read when an attempt starts: a password, a token, a key file. Read whole
# into the instance's environment, where the kernel takes at most MAX_ARG_STRLEN per entry.
MAX_SECRET_BYTES = 64 * 1024
# Secrets a job, a template or a task declares: each is a file or variable read at each start.
MAX_SECRETS = 100
# A `file:` source's path (PATH_MAX on Linux, its NUL included).
MAX_SECRET_PATH_BYTES = 4095

# -- labels ------------------------------------------------------------------------------------

# A job's labels are rows of `job_labels`, each indexed and listed with the job: a label is a
# short tag to filter by (team=ml, run=nightly), not a place for data. Keys are as Kubernetes
# label keys are made of: 1 to 63 of ASCII letters, digits, '-', '_', '.', '/', starting with
# a letter or digit (they are typed in `--label k=v` and query strings: no '=', no spaces).
MAX_LABELS = 64
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256

# -- config ------------------------------------------------------------------------------------

# Instances at once per local env or per Docker host.
MAX_SLOTS = 100_000
# Attempts lost with the runtime (a crash) that are re-run uncharged, per instance.
MAX_LOST_LIMIT = 1000
# S3 objects in flight at once, and botocore's attempts per request.
MAX_TRANSFERS = 1024
MAX_S3_ATTEMPTS = 100
# uid_t is 32 bits; (uid_t)-1 means "no change" to the kernel, never a user.
UID_MIN, UID_MAX = 0, 2**32 - 2
PORT_MIN, PORT_MAX = 0, 65535

# -- bounded types (msgspec checks them while decoding; the JSON schema shows them) ------------

Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
# At least 1 (checked with the task, which says so) and, for instances, max_instances.
Count = Annotated[int, Meta(le=INT64_MAX)]
RetryLimit = Annotated[int, Meta(ge=0, le=MAX_RETRIES)]
ExitCode = Annotated[int, Meta(ge=EXIT_CODE_MIN, le=EXIT_CODE_MAX)]
Slots = Annotated[int, Meta(ge=1, le=MAX_SLOTS)]
Uid = Annotated[int, Meta(ge=UID_MIN, le=UID_MAX)]
