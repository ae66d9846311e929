"""Slurm's standard commands, run as anyio subprocesses, and what their output means.

``sbatch --parsable``, ``squeue --json``, ``scancel`` and ``scontrol show config`` read and
write the same on every Slurm since 20.11, whereas slurmrestd's paths and schemas change with
each release (and it is often not deployed). Parsing is kept apart from running, so that the
parsers are unit-tested on captured output.

An element is one element of a job array: its array job id and array task id. Job ids alone
are not unique over time (a controller that lost its state counts again), so an element is
always matched by its job name as well.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import msgspec

from aiobatch.attempt import NODE_FAIL, PREEMPTED, Outcome

COMMAND_LIMIT_S = 60.0  # a Slurm command that has not answered by then has failed

# Final states (squeue's long names) and what they mean for an attempt; a reason of None
# means the exit status tells.
FINAL_REASONS: dict[str, str | None] = {
    "COMPLETED": None,
    "FAILED": None,
    "TIMEOUT": "timeout",
    "OUT_OF_MEMORY": "oom",
    "NODE_FAIL": NODE_FAIL,
    "BOOT_FAIL": NODE_FAIL,
    "CANCELLED": "cancelled",
    "PREEMPTED": PREEMPTED,
    "DEADLINE": "timeout",
}
PENDING, RUNNING = "PENDING", "RUNNING"
PENDING_REST = -1  # an array's elements that ended before they started, in one record


class SlurmError(Exception):
    """A Slurm command failed: its words, for the attempt's reason."""


class ElementState(msgspec.Struct, frozen=True):
    """One array element as Slurm reports it."""

    array_id: int
    task_id: int
    name: str
    state: str  # squeue's long name: PENDING, RUNNING, COMPLETED, ...
    reason: str = ""  # why it pends (Priority, Resources, JobArrayTaskLimit, ...)
    exit_code: int | None = None
    signal: int | None = None
    start_time: float | None = None  # epoch seconds, once it started
    end_time: float | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.array_id, self.task_id)

    @property
    def final(self) -> bool:
        return self.state in FINAL_REASONS

    @property
    def ran(self) -> bool:
        """Whether its program started (a cancelled pending element never did)."""
        return self.start_time is not None and self.state != PENDING

    def outcome(self) -> Outcome:
        """How the attempt ended, for a final state."""
        duration = None
        if self.start_time is not None and self.end_time is not None:
            duration = max(0.0, self.end_time - self.start_time)
        reason = FINAL_REASONS.get(self.state, f"slurm: {self.state}")
        if reason is None:
            return Outcome(exit_code=self.exit_code, signal=self.signal, duration_s=duration)
        return Outcome(exit_code=self.exit_code, reason=reason, duration_s=duration)


# -- squeue --json -----------------------------------------------------------------------------


class _Job(msgspec.Struct, forbid_unknown_fields=False):
    """The fields of ``squeue --json`` used here. Types vary between releases (22.05 gives
    plain values, 23.02 on wraps numbers in {set, number} and states in lists): Any."""

    job_id: int
    name: str = ""
    array_job_id: Any = 0
    array_task_id: Any = None
    array_task_string: str = ""
    job_state: Any = ""
    state_reason: str = ""
    exit_code: Any = 0
    start_time: Any = 0
    end_time: Any = 0


class _Squeue(msgspec.Struct, forbid_unknown_fields=False):
    jobs: list[_Job] = []


_squeue = msgspec.json.Decoder(_Squeue)


def _number(value: Any) -> int | None:
    """A number of squeue's JSON: plain (22.05) or {set, infinite, number} (23.02 on)."""
    if isinstance(value, dict):
        return int(value["number"]) if value.get("set", True) else None
    return None if value is None else int(value)


def _state(value: Any) -> str:
    return str(value[0]) if isinstance(value, list) else str(value)


def _exit_status(value: Any) -> tuple[int | None, int | None]:
    """(exit code, signal) from squeue's exit_code: a raw wait status in 22.05 (768 is exit
    3, 9 is SIGKILL), {return_code, signal} from 23.02 on."""
    if isinstance(value, dict):
        code = _number(value.get("return_code"))
        signal = value.get("signal") or {}
        sig = _number(signal.get("id") or signal.get("signal_id"))
        return (None, sig) if sig else (code, None)
    status = int(value or 0)
    if status & 0x7F:
        return None, status & 0x7F
    return (status >> 8) & 0xFF, None


def expand_task_string(text: str) -> list[int]:
    """Array task ids of a pending record: ``4-5%2``, ``[1,3,7-9]``, ``0-10:2``."""
    text = text.strip("[]").split("%")[0]
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        ids.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return ids


def parse_squeue(data: bytes, prefix: str) -> list[ElementState]:
    """Each element of the jobs named ``prefix...`` in ``squeue --json`` output. Pending
    elements of an array share one record until they start: one state each here."""
    found: list[ElementState] = []
    for job in _squeue.decode(data).jobs:
        if not job.name.startswith(prefix):
            continue
        array_id = _number(job.array_job_id) or job.job_id
        task_id = _number(job.array_task_id)
        state = _state(job.job_state)
        code, sig = _exit_status(job.exit_code) if state in FINAL_REASONS else (None, None)
        started, ended = _number(job.start_time) or None, _number(job.end_time) or None
        if state == PENDING:
            started = None  # an expected start time, not a start
        if state not in FINAL_REASONS:
            ended = None  # the time limit's end, not an end
        ids = [task_id] if task_id is not None else expand_task_string(job.array_task_string)
        for tid in ids:
            found.append(
                ElementState(
                    array_id=array_id,
                    task_id=tid,
                    name=job.name,
                    state=state,
                    reason=job.state_reason if job.state_reason != "None" else "",
                    exit_code=code,
                    signal=sig,
                    start_time=None if started is None else float(started),
                    end_time=None if ended is None else float(ended),
                )
            )
    return found


# -- jobcomp/filetxt ---------------------------------------------------------------------------

_FIELD = re.compile(r"(\w+)=(\S*)")
_TIME = "%Y-%m-%dT%H:%M:%S"


def parse_jobcomp_line(line: str, prefix: str) -> ElementState | None:
    """A final state from one jobcomp/filetxt line, if it is an array element named
    ``prefix...`` (``ExitCode=3:0`` is exit 3; ``0:9`` is SIGKILL). The elements of an array
    that end while still pending (a cancel) share one line without their task ids: its
    ``task_id`` is ``PENDING_REST``, standing for each of the array's elements not started."""
    if f"Name={prefix}" not in line:
        return None
    fields = dict(_FIELD.findall(line))
    try:
        name, state = fields["Name"], fields["JobState"]
        if "ArrayTaskId" in fields:
            array_id, task_id = int(fields["ArrayJobId"]), int(fields["ArrayTaskId"])
        else:
            array_id, task_id = int(fields["JobId"]), PENDING_REST
        code_text, _, sig_text = fields.get("ExitCode", "0:0").partition(":")
        code, sig = int(code_text), int(sig_text or 0)
    except (KeyError, ValueError):
        return None
    if not name.startswith(prefix) or array_id == 0:
        return None
    return ElementState(
        array_id=array_id,
        task_id=task_id,
        name=name,
        state=state.split()[0],
        exit_code=None if 0 < sig < 125 else code,
        signal=sig if 0 < sig < 125 else None,  # 125: OOM's mark, not a signal
        start_time=_epoch(fields.get("StartTime")),
        end_time=_epoch(fields.get("EndTime")),
    )


def _epoch(text: str | None) -> float | None:
    from datetime import datetime  # only on the rare jobcomp path

    if not text or text in ("Unknown", "None"):
        return None
    try:
        return datetime.strptime(text, _TIME).timestamp()  # the controller's local time
    except ValueError:
        return None


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: key = value lines."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    return config


def parse_sbatch(text: str) -> int:
    """The job id from ``sbatch --parsable``: ``ID`` or ``ID;CLUSTER``."""
    first = text.strip().splitlines()[-1] if text.strip() else ""
    try:
        return int(first.split(";")[0])
    except ValueError:
        raise SlurmError(f"sbatch: unexpected answer {text.strip()[:200]!r}") from None


def array_spec(ids: Sequence[int], throttle: int | None) -> str:
    """``--array`` for these task ids: runs compressed (``0-5,7``), ``%M`` if throttled."""
    parts: list[str] = []
    for first, last in _runs(sorted(ids)):
        parts.append(str(first) if first == last else f"{first}-{last}")
    spec = ",".join(parts)
    return f"{spec}%{throttle}" if throttle else spec


def _runs(ids: list[int]) -> Iterator[tuple[int, int]]:
    start = prev = ids[0]
    for value in ids[1:]:
        if value != prev + 1:
            yield start, prev
            start = value
        prev = value
    yield start, prev


# -- running them ------------------------------------------------------------------------------


async def run_command(argv: Sequence[str], stdin: bytes | None = None) -> bytes:
    """A Slurm command's stdout; SlurmError with its stderr if it fails or hangs."""
    try:
        with anyio.fail_after(COMMAND_LIMIT_S):
            done = await anyio.run_process(list(argv), input=stdin, check=False)
    except TimeoutError:
        raise SlurmError(f"{argv[0]}: no answer in {COMMAND_LIMIT_S:g}s") from None
    except OSError as exc:
        raise SlurmError(f"{argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        words = done.stderr.decode(errors="replace").strip().replace("\n", "; ")
        raise SlurmError(f"{argv[0]}: {words[:300] or f'exit status {done.returncode}'}")
    return done.stdout


async def squeue(prefix: str) -> list[ElementState]:
    """This user's elements named ``prefix...``, finished ones too while Slurm keeps them."""
    return parse_squeue(await run_command(["squeue", "--json", "--me"]), prefix)


async def sbatch(args: Sequence[str], script: str) -> int:
    return parse_sbatch(
        (await run_command(["sbatch", "--parsable", *args], script.encode())).decode()
    )


async def scancel(*targets: str) -> None:
    """Cancel these jobs or elements (``12`` or ``12_3``); one already ended is no error."""
    try:
        await run_command(["scancel", *targets])
    except SlurmError as exc:
        if "already completing or completed" not in str(exc) and "Invalid job id" not in str(exc):
            raise


async def show_config() -> dict[str, str]:
    return parse_config((await run_command(["scontrol", "show", "config"])).decode())
