"""Property and unit tests of the pure engine: scheduling, retries, failure policies, stops.

The state machine drives ``Engine`` the way the runtime does (dispatch, then for each started
instance: running, exited, finished; or finished straight from STAGING when the program never
started) and interleaves user operations: stop an instance, stop a job, suspend, resume.
After every step it checks the bookkeeping against the records and replays the outbox through
the transition tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from msgspec.structs import replace

from aiobatch.attempt import NO_SPACE, NODE_FAIL, PREEMPTED, SYSTEM_LIMIT, Outcome
from aiobatch.engine import (
    BACKOFF,
    INTERRUPTED,
    JOB_TIMEOUT,
    RUNTIME_LOST_LIMIT,
    STOPPED_BY_USER,
    SYSTEM_LIMIT_WAITS,
    Engine,
)
from aiobatch.events import (
    Event,
    InstanceStateChanged,
    InstanceStopRequested,
    JobStateChanged,
    JobStopRequested,
    TaskStateChanged,
)
from aiobatch.model import InstanceRec, JobRec, TaskRec
from aiobatch.recovery import restore_job
from aiobatch.schema import InstanceRow, JobRow
from aiobatch.spec import JobDef, TaskDef
from aiobatch.spec_dependencies import TOLERANT
from aiobatch.spec_types import BackoffDef, When
from aiobatch.states import (
    INSTANCE_ACTIVE,
    INSTANCE_TERMINAL,
    JOB_TERMINAL,
    TASK_TERMINAL,
    InstanceState,
    JobState,
    TaskState,
    check_instance,
    check_job,
    check_task,
)

ENVS = ("local", "gpu")
LOST_LIMIT = 2
TaskKey = tuple[str, str]
InstKey = tuple[str, str, int]

SUCCESS = Outcome(exit_code=0, duration_s=1.0)
# Outcomes of a program that ran; success comes first so failures shrink towards it.
RAN_OUTCOMES = [
    SUCCESS,
    Outcome(exit_code=1, duration_s=1.0),
    Outcome(exit_code=2, duration_s=1.0),
    Outcome(exit_code=3, duration_s=1.0),
    Outcome(signal=9, duration_s=1.0),  # code 137
    Outcome(signal=15, duration_s=1.0),  # code 143
    Outcome(signal=15, reason="timeout", duration_s=1.0),
    Outcome(signal=9, reason=NODE_FAIL, duration_s=1.0),  # a disruption: its node went
]
# Outcomes of an attempt whose program never started (the instance is still STAGING).
STAGING_OUTCOMES = [
    Outcome(reason="exec_failed: /bin/sh: No such file or directory"),
    Outcome(reason="executor_error: boom"),
]


# Shrinks to False; True one draw in five.
RARELY = st.sampled_from([False, False, False, False, True])

# -- job definitions ---------------------------------------------------------------------------


def task_def(
    name: str,
    *,
    instances: int = 1,
    depends_on: tuple[str, ...] = (),
    compute_env: str = "local",
    max_parallel: int | None = None,
    retry_limit: int = 0,
    retry_exit_codes: tuple[int, ...] | None = None,
    retry_reasons: tuple[str, ...] | None = None,
    retry_backoff: BackoffDef | None = None,
    on_failure: Literal["fail_job", "continue"] = "fail_job",
    conditions: dict[str, When] | None = None,
    by_index: tuple[str, ...] = (),
) -> TaskDef:
    return TaskDef(
        name=name,
        command="true",
        instances=instances,
        depends_on=depends_on,
        conditions=conditions or {},
        by_index=by_index,
        compute_env=compute_env,
        max_parallel=max_parallel,
        retry_limit=retry_limit,
        retry_exit_codes=retry_exit_codes,
        retry_reasons=retry_reasons,
        retry_backoff=retry_backoff,
        on_failure=on_failure,
    )


CONDITIONS: list[When] = ["succeeded", "succeeded", "finished", "partly_succeeded"]
BACKOFFS = [None, None, BackoffDef(delay_s=3.0, factor=2.0, max_delay_s=10.0)]


@st.composite
def task_defs(draw: st.DrawFn, name: str, earlier: list[TaskDef]) -> TaskDef:
    """A task on earlier ones, with conditions and by-index edges as the spec allows them
    (by index only to tasks of its own instance count, only ``succeeded``)."""
    deps = (
        draw(st.lists(st.sampled_from(earlier), unique_by=lambda t: t.name, max_size=3))
        if earlier
        else []
    )
    instances = draw(st.integers(1, 4))
    by_index: list[str] = []
    conditions: dict[str, When] = {}
    for dep in deps:
        if draw(st.booleans()) and (not by_index or dep.instances == instances):
            instances = dep.instances
            by_index.append(dep.name)
        else:
            when = draw(st.sampled_from(CONDITIONS))
            if when != "succeeded":
                conditions[dep.name] = when
    return task_def(
        name,
        instances=instances,
        depends_on=tuple(d.name for d in deps),
        conditions=conditions,
        by_index=tuple(by_index),
        compute_env=draw(st.sampled_from(ENVS)),
        max_parallel=draw(st.none() | st.integers(1, 3)),
        retry_limit=draw(st.integers(0, 2)),
        retry_exit_codes=draw(
            st.none() | st.lists(st.sampled_from([1, 2, 137, 143]), unique=True).map(tuple)
        ),
        retry_reasons=draw(st.none() | st.just(("timeout",))),
        retry_backoff=draw(st.sampled_from(BACKOFFS)),
        on_failure=draw(st.sampled_from(["fail_job", "continue"])),
    )


@st.composite
def job_defs(draw: st.DrawFn) -> JobDef:
    tasks: list[TaskDef] = []
    for i in range(draw(st.integers(1, 6))):
        tasks.append(draw(task_defs(f"t{i}", tasks)))
    # As the spec resolves it: a task waited on with a tolerant condition never stops the job.
    tolerated = {n for t in tasks for n, w in t.conditions.items() if w in TOLERANT}
    tasks = [replace(t, on_failure="continue") if t.name in tolerated else t for t in tasks]
    return JobDef(name="job", tasks=tuple(tasks), priority=draw(st.integers(-1, 1)))


# -- helpers -----------------------------------------------------------------------------------


def instances_of(task: TaskRec) -> Iterator[InstanceRec]:
    return (i for i in task.instances if i is not None)


def dispatchable(task: TaskRec) -> bool:
    """Could start an instance now if its env had a free slot (own reading of the rules)."""
    limit = task.defn.max_parallel
    return (
        task.state in (TaskState.READY, TaskState.RUNNING)
        and task.job.state is JobState.RUNNING
        and task.job.stopping is None
        and dispatchable_now(task)
        and (limit is None or task.active < limit)
    )


def counterparts_succeeded(task: TaskRec, index: int) -> bool:
    """Every by-index dependency's instance ``index`` SUCCEEDED (own reading)."""
    for name in task.defn.by_index:
        upstream = task.job.tasks[name].instances[index]
        if upstream is None or upstream.state is not InstanceState.SUCCEEDED:
            return False
    return True


def dispatchable_now(task: TaskRec) -> bool:
    """Has an instance that could start, leaving slots and the job's state aside."""
    if task.gates is None:
        fresh = task.fresh
    else:
        fresh = sum(1 for i in range(task.total) if fresh_and_open(task, i))
    return fresh + len(task.retry_queue) > 0


def fresh_and_open(task: TaskRec, index: int) -> bool:
    return task.instances[index] is None and counterparts_succeeded(task, index)


def whole_edge_met(dep: TaskRec, when: When) -> bool:
    """Own reading of a condition: whether a whole-task dependency lets its dependent start."""
    if when == "succeeded":
        return dep.state is TaskState.SUCCEEDED
    if dep.state not in TASK_TERMINAL:
        return False
    return when == "finished" or dep.succeeded > 0


@dataclass
class StoredJob:
    """A job's row as the store keeps it."""

    state: JobState = JobState.SUBMITTED
    reason: str | None = None
    stopping: tuple[JobState, str] | None = None
    started_at: float | None = None
    ended_at: float | None = None


class Replay:
    """The state of every entity, rebuilt from events alone through the check functions."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobState] = {}
        self.tasks: dict[TaskKey, TaskState] = {}
        self.instances: dict[InstKey, InstanceState] = {}
        self.attempts: dict[InstKey, int] = {}
        self.stop_requested: set[str] = set()
        self.retries: dict[str, int] = {}  # user retries of each job
        # What the store's rows hold, written from the events as the store writes them.
        self.job_rows: dict[str, StoredJob] = {}
        self.task_rows: dict[TaskKey, tuple[str, str | None]] = {}
        self.instance_rows: dict[InstKey, InstanceStateChanged] = {}
        self.instance_stops: dict[InstKey, tuple[int, str]] = {}  # attempt, reason

    def stop_reason(self, key: InstKey) -> str | None:
        """The stop the store holds for an instance's active attempt, if one was asked for."""
        stop = self.instance_stops.get(key)
        return stop[1] if stop is not None and stop[0] == self.attempts.get(key) else None

    def apply(self, event: Event, jobs: dict[str, JobRec]) -> None:
        if isinstance(event, JobStateChanged):
            old = self.jobs.get(event.job_id, JobState.SUBMITTED)
            self.jobs[event.job_id] = check_job(old, JobState(event.state))
            if old in JOB_TERMINAL:  # a retry: the job runs (and may be stopped) again
                self.retries[event.job_id] = self.retries.get(event.job_id, 0) + 1
                self.stop_requested.discard(event.job_id)
            row = self.job_rows.setdefault(event.job_id, StoredJob())
            row.state, row.reason = JobState(event.state), event.reason
            row.ended_at = event.ts if event.state in JOB_TERMINAL else None
            if event.state == JobState.RUNNING and row.started_at is None:
                row.started_at = event.ts
            if row.ended_at is not None:
                row.stopping = None
        elif isinstance(event, JobStopRequested):
            assert event.job_id not in self.stop_requested, "stop requested twice"
            assert self.jobs[event.job_id] not in JOB_TERMINAL
            assert event.state in (JobState.CANCELLED, JobState.FAILED)
            self.stop_requested.add(event.job_id)
            self.job_rows[event.job_id].stopping = (JobState(event.state), event.reason)
        elif isinstance(event, TaskStateChanged):
            tkey = (event.job_id, event.task)
            old_task = self.tasks.get(tkey, TaskState.PENDING)
            self.tasks[tkey] = check_task(old_task, TaskState(event.state))
            assert self.jobs[event.job_id] not in JOB_TERMINAL, f"{event} after the job ended"
            self.task_rows[tkey] = (event.state, event.reason)
        elif isinstance(event, InstanceStateChanged):
            ikey = (event.job_id, event.task, event.index)
            old_inst = self.instances.get(ikey, InstanceState.PENDING)
            new = InstanceState(event.state)
            self.instances[ikey] = check_instance(old_inst, new)
            task_def = jobs[event.job_id].tasks[event.task].defn
            assert 0 <= event.index < task_def.instances
            attempt = self.attempts.get(ikey, 1)
            if old_inst in INSTANCE_ACTIVE | INSTANCE_TERMINAL and new is InstanceState.PENDING:
                assert event.attempt == attempt + 1, "a retry counts the next attempt"
            else:
                assert event.attempt == attempt
            # Attempts that ended with the runtime are not charged to the task's retries.
            charged = event.attempt - event.lost - event.interrupted
            assert charged <= task_def.retry_limit + 1 + self.retries.get(event.job_id, 0)
            assert 0 <= event.lost <= LOST_LIMIT
            if event.reason == f"{RUNTIME_LOST_LIMIT}: {LOST_LIMIT}":
                assert event.lost == LOST_LIMIT and new is InstanceState.FAILED
            self.attempts[ikey] = event.attempt
            self.instance_rows[ikey] = event
            if new not in INSTANCE_ACTIVE:
                self.instance_stops.pop(ikey, None)  # a stop request ends with its attempt
            if new is InstanceState.STAGING:
                # An instance starts only in a RUNNING task of a RUNNING job.
                assert self.tasks.get((event.job_id, event.task)) is TaskState.RUNNING
                assert self.jobs[event.job_id] is JobState.RUNNING
                assert event.job_id not in self.stop_requested
        elif isinstance(event, InstanceStopRequested):
            ikey = (event.job_id, event.task, event.index)
            assert self.instances.get(ikey) in INSTANCE_ACTIVE, "only an active one is stopped"
            assert event.attempt == self.attempts[ikey]
            self.instance_stops[ikey] = (event.attempt, event.reason)


# -- the state machine -------------------------------------------------------------------------


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ticks = itertools.count()
        self.engine = Engine({}, clock=self.clock, lost_limit=LOST_LIMIT)
        self.replay = Replay()
        # The outcome each UPLOADING instance exited with, by identity of its record.
        self.exited: dict[int, Outcome] = {}

    def clock(self) -> float:
        return float(next(self.ticks))

    # -- views ---------------------------------------------------------------------------------

    @property
    def jobs(self) -> list[JobRec]:
        return list(self.engine.jobs.values())

    def tasks(self) -> Iterator[TaskRec]:
        for job in self.jobs:
            yield from job.tasks.values()

    def records(self) -> Iterator[InstanceRec]:
        for task in self.tasks():
            yield from instances_of(task)

    def in_state(self, *states: InstanceState) -> list[InstanceRec]:
        return [i for i in self.records() if i.state in states]

    def any_active(self) -> bool:
        return any(i.active for i in self.records())

    def check_to_stop(self, to_stop: list[InstanceRec], job: JobRec) -> None:
        for inst in to_stop:
            assert inst.active, f"{inst} returned to stop but not active"
            assert inst.stop_reason is not None
            assert inst.task.job is job

    # -- rules ---------------------------------------------------------------------------------

    @initialize(
        local=st.integers(1, 3),
        gpu=st.integers(1, 2),
        defn=job_defs(),
    )
    def start(self, local: int, gpu: int, defn: JobDef) -> None:
        self.engine = Engine({"local": local, "gpu": gpu}, clock=self.clock, lost_limit=LOST_LIMIT)
        self.add(defn)

    def add(self, defn: JobDef) -> None:
        seq = len(self.engine.jobs) + 1
        job = JobRec(f"j{seq}", defn, seq, submitted_at=self.clock())
        self.engine.add_job(job)
        assert job.state is JobState.RUNNING

    @precondition(lambda self: len(self.engine.jobs) < 3)
    @rule(defn=job_defs())
    def add_job(self, defn: JobDef) -> None:
        self.add(defn)

    @rule()
    def dispatch(self) -> None:
        started = self.engine.dispatch()
        assert len({id(i) for i in started}) == len(started)
        last_key: dict[str, tuple[int, int, int]] = {}
        for inst in started:
            assert inst.state is InstanceState.STAGING
            assert inst.stop_reason is None
            task = inst.task
            env = task.defn.compute_env
            key = (-task.job.priority, task.job.seq, task.seq)
            # Within one dispatch an env serves higher priority, then earlier jobs, first.
            assert key >= last_key.get(env, key), f"{inst} dispatched out of order"
            last_key[env] = key
        # Work conserving: a free slot is left only when nothing in its env can start.
        scheduler = self.engine.scheduler
        for task in self.tasks():
            env = task.defn.compute_env
            if dispatchable(task):
                assert scheduler.used[env] >= scheduler.slots[env], (
                    f"{task} could start but {env} has a free slot"
                )
        if not started and not self.any_active() and self.engine.next_release() is None:
            for job in self.jobs:
                idle_by_choice = job.state is JobState.SUSPENDED and job.stopping is None
                assert job.state in JOB_TERMINAL or idle_by_choice, f"{job} is stuck"

    @rule()
    def release_backoffs(self) -> None:
        """Time passes (the clock ticks on each call): backoffs that ended may start."""
        waiting = [i for t in self.tasks() for i in t.held if i.not_before is not None]
        now = self.clock()
        self.engine.release_due()
        for inst in waiting:
            if inst.not_before is not None and inst.not_before <= now:
                raise AssertionError(f"{inst} still held after its backoff ended")
        if waiting:
            hypothesis_event("backoff waited")

    @precondition(lambda self: self.in_state(InstanceState.STAGING))
    @rule(data=st.data())
    def instance_running(self, data: st.DataObject) -> None:
        inst = data.draw(st.sampled_from(self.in_state(InstanceState.STAGING)))
        self.engine.instance_running(inst, pid=1000 + inst.index)
        assert inst.state is InstanceState.RUNNING

    @precondition(lambda self: self.in_state(InstanceState.RUNNING))
    @rule(data=st.data(), outcome=st.sampled_from(RAN_OUTCOMES))
    def instance_exited(self, data: st.DataObject, outcome: Outcome) -> None:
        inst = data.draw(st.sampled_from(self.in_state(InstanceState.RUNNING)))
        self.engine.instance_exited(inst, outcome)
        assert inst.state is InstanceState.UPLOADING
        self.exited[id(inst)] = outcome

    @precondition(lambda self: self.in_state(InstanceState.UPLOADING))
    @rule(data=st.data())
    def instance_finished(self, data: st.DataObject) -> None:
        inst = data.draw(st.sampled_from(self.in_state(InstanceState.UPLOADING)))
        self.finish(inst, self.exited.pop(id(inst), SUCCESS))  # adopted after a crash: SUCCESS

    @precondition(lambda self: self.in_state(InstanceState.RUNNING))
    @rule(data=st.data(), outcome=st.sampled_from(RAN_OUTCOMES))
    def instance_exited_and_finished(self, data: st.DataObject, outcome: Outcome) -> None:
        inst = data.draw(st.sampled_from(self.in_state(InstanceState.RUNNING)))
        self.engine.instance_exited(inst, outcome)
        self.finish(inst, outcome)

    @precondition(lambda self: self.in_state(InstanceState.RUNNING))
    @rule(data=st.data())
    def instance_succeeded(self, data: st.DataObject) -> None:
        """Most attempts succeed: without this the DAG would rarely get past a few tasks."""
        self.instance_exited_and_finished(data, SUCCESS)

    @precondition(lambda self: self.in_state(InstanceState.STAGING))
    @rule(data=st.data(), outcome=st.sampled_from(STAGING_OUTCOMES))
    def never_started(self, data: st.DataObject, outcome: Outcome) -> None:
        """The program never ran: exec failed, or the attempt was stopped while staging."""
        inst = data.draw(st.sampled_from(self.in_state(InstanceState.STAGING)))
        self.finish(inst, outcome)

    def finish(self, inst: InstanceRec, outcome: Outcome) -> None:
        job, attempt, stopped = inst.task.job, inst.attempt, inst.stop_reason is not None
        charged, lost = inst.charged_attempts, inst.lost
        to_stop = self.engine.instance_finished(inst, outcome)
        self.check_to_stop(to_stop, job)
        if stopped:
            assert inst.state is InstanceState.CANCELLED
        elif outcome.succeeded:
            assert inst.state is InstanceState.SUCCEEDED
        elif outcome.disrupted and job.stopping is None:
            # Not the program's doing: run again uncharged, up to the lost limit.
            if lost < LOST_LIMIT:
                assert (inst.state, inst.reason) == (InstanceState.PENDING, outcome.reason)
                assert (inst.attempt, inst.lost) == (attempt + 1, lost + 1)
                assert inst.charged_attempts == charged
            else:
                assert (inst.state, inst.reason) == (
                    InstanceState.FAILED,
                    f"{RUNTIME_LOST_LIMIT}: {LOST_LIMIT}",
                )
        elif inst.state is InstanceState.PENDING:
            retries = self.replay.retries.get(job.id, 0)
            assert inst.attempt == attempt + 1
            assert inst.charged_attempts <= inst.task.defn.retry_limit + 1 + retries
            defn = inst.task.defn
            codes, reasons = defn.retry_exit_codes, defn.retry_reasons
            if codes is not None or reasons is not None:
                kind = outcome.failure_reason().split(":")[0]
                assert outcome.code in (codes or ()) or kind in (reasons or ())
            if inst.reason == BACKOFF:  # its policy has a backoff: held until it ends
                assert defn.retry_backoff is not None and inst in inst.task.held
                assert inst.not_before is not None and inst.not_before > 0
            else:
                assert inst in inst.task.retry_queue
        else:
            assert inst.state is InstanceState.FAILED

    @rule(data=st.data(), act=RARELY)
    def stop_instance(self, data: st.DataObject, act: bool) -> None:
        if not act:
            return
        job = data.draw(st.sampled_from(self.jobs))
        task = data.draw(st.sampled_from(list(job.tasks.values())))
        index = data.draw(st.integers(0, task.total - 1))
        was = task.instances[index]
        was_active = was is not None and was.active
        winding_down = job.stopping is not None
        inst = self.engine.stop_instance(task, index)
        if was_active and winding_down:
            # The wind-down is stopping it already, with the job's reason.
            assert inst is None and was is not None and was.stop_reason is not None
        elif was_active:
            assert inst is not None and inst is was
            assert inst.stop_reason == STOPPED_BY_USER
        else:
            assert inst is None
            rec = task.instances[index]
            # No record: the index was counted cancelled when the job wound down, or its
            # task had ended already (a stop then changes nothing). A task skipped after a
            # retry of its job keeps the instances that wait since that retry.
            # So does a task still PENDING while its job winds down: it waits to be skipped
            # (or, with a ``finished`` condition, released) when its upstream ends.
            waiting_in_skipped = task.state is TaskState.SKIPPED
            waiting_for_upstream = winding_down and task.state is TaskState.PENDING
            assert (
                rec is None
                or rec.state is not InstanceState.PENDING
                or waiting_in_skipped
                or waiting_for_upstream
            )

    @rule(data=st.data(), act=RARELY)
    def stop_job(self, data: st.DataObject, act: bool) -> None:
        if not act:
            return  # stopping a job ends most of the story: do it less often than the rest
        job = data.draw(st.sampled_from(self.jobs))
        was = job.state
        to_stop = self.engine.stop_job(job)
        self.check_to_stop(to_stop, job)
        if was in JOB_TERMINAL:
            assert job.state is was and not to_stop
        else:
            # Nothing of the job may start again; every active instance is being stopped.
            assert job.stopping is not None or job.state in JOB_TERMINAL
            for task in job.tasks.values():
                assert not dispatchable(task)
                for inst in instances_of(task):
                    assert not inst.active or inst.stop_reason is not None

    @rule(data=st.data(), act=RARELY)
    def time_out_job(self, data: st.DataObject, act: bool) -> None:
        """A job's deadline passes: it winds down as a stop does, but to FAILED."""
        if not act:
            return
        job = data.draw(st.sampled_from(self.jobs))
        winds_down = job.state in (JobState.RUNNING, JobState.SUSPENDED) and job.stopping is None
        was = job.state, job.stopping
        to_stop = self.engine.time_out_job(job)
        self.check_to_stop(to_stop, job)
        if not winds_down:  # ended, or winding down to its own end already: unchanged
            assert (job.state, job.stopping) == was and not to_stop
            return
        hypothesis_event("timed out a job")
        if job.state in JOB_TERMINAL:
            assert (job.state, job.reason) == (JobState.FAILED, JOB_TIMEOUT)
        else:
            assert job.stopping == (JobState.FAILED, JOB_TIMEOUT)
        for task in job.tasks.values():
            assert not dispatchable(task)
            for inst in instances_of(task):
                assert not inst.active or inst.stop_reason == JOB_TIMEOUT

    @rule(data=st.data(), act=st.booleans())
    def retry_job(self, data: st.DataObject, act: bool) -> None:
        ended = [j for j in self.jobs if j.state in (JobState.FAILED, JobState.CANCELLED)]
        if not act or not ended:
            return
        job = data.draw(st.sampled_from(ended))
        kept = {
            (task.name, inst.index): inst.attempt
            for task in job.tasks.values()
            for inst in instances_of(task)
            if inst.state is InstanceState.SUCCEEDED
        }
        self.engine.retry_job(job)
        hypothesis_event("retried a job")
        assert job.state is JobState.RUNNING and job.ended_at is None
        for task in job.tasks.values():
            assert task.failed == 0 and task.cancelled == 0
            for inst in instances_of(task):
                if (task.name, inst.index) in kept:  # successes are kept as they were
                    assert inst.state is InstanceState.SUCCEEDED
                    assert inst.attempt == kept[(task.name, inst.index)]
                else:
                    assert inst.state is InstanceState.PENDING and inst.reason == "retried"
            if task.state is not TaskState.SUCCEEDED:
                assert task.succeeded + task.pending == task.total

    @rule(data=st.data())
    def suspend_job(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.jobs))
        expected = job.state is JobState.RUNNING and job.stopping is None
        assert self.engine.suspend_job(job) is expected
        if expected:
            assert job.state is JobState.SUSPENDED

    @rule(data=st.data())
    def resume_job(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.jobs))
        expected = job.state is JobState.SUSPENDED
        assert self.engine.resume_job(job) is expected
        if expected:
            assert job.state is JobState.RUNNING

    @rule(data=st.data(), act=RARELY)
    def crash(self, data: st.DataObject, act: bool) -> None:
        """The runtime dies: a new engine takes the jobs in from the stored rows; attempts
        still running are adopted, the others are lost."""
        if not act:
            return

        def still_running(inst: InstanceRec) -> bool:
            # Or ended, its executor knowing how. An UPLOADING one always is: its end is
            # stored, so it uploads again rather than run again.
            return inst.state is InstanceState.UPLOADING or data.draw(st.booleans())

        self.restart(still_running)
        hypothesis_event("crashed")

    @rule(act=RARELY)
    def shut_down(self, act: bool) -> None:
        """A clean shutdown interrupts every attempt; the next start takes the jobs in."""
        if not act:
            return
        for inst in self.in_state(*INSTANCE_ACTIVE):
            attempt, charged = inst.attempt, inst.charged_attempts
            self.engine.instance_interrupted(inst)
            assert inst.state is InstanceState.PENDING and inst.reason == INTERRUPTED
            assert inst.attempt == attempt + 1 and inst.charged_attempts == charged
        self.outbox_replays_through_the_tables()
        self.restart(lambda inst: False)
        hypothesis_event("shut down")

    def restart(self, adopt: Callable[[InstanceRec], bool]) -> None:
        self.outbox_replays_through_the_tables()  # the store has every event written so far
        old = self.engine
        engine = Engine(dict(old.scheduler.slots), clock=self.clock, lost_limit=LOST_LIMIT)
        rows = self.replay
        for seq, (job_id, before) in enumerate(old.jobs.items(), start=1):
            jrow = rows.job_rows[job_id]
            job_row = JobRow(
                id=job_id,
                seq=before.seq,
                defn=before.defn,
                state=jrow.state,
                reason=jrow.reason,
                stopping=jrow.stopping,
                submitted_at=before.submitted_at,
                started_at=jrow.started_at,
                ended_at=jrow.ended_at,
            )
            tasks = {
                name: rows.task_rows.get((job_id, name), ("PENDING", None)) for name in before.tasks
            }
            instances = [
                InstanceRow(
                    e.task,
                    e.index,
                    e.attempt,
                    InstanceState(e.state),
                    e.reason,
                    e.exit_code,
                    e.signal,
                    e.pid,
                    e.started_at,
                    None,
                    e.duration_s,
                    e.lost,
                    e.interrupted,
                    rows.stop_reason(key),
                    e.not_before,
                )
                for key, e in rows.instance_rows.items()
                if key[0] == job_id
            ]
            job, lost = restore_job(job_row, tasks, instances)
            assert seq == len(engine.jobs) + 1
            if job.state in JOB_TERMINAL:
                engine.jobs[job.id] = job  # ended: kept for a later retry, as the archive is
                assert not lost
                continue
            adopted = [inst for inst in lost if adopt(inst)]
            lost = [inst for inst in lost if inst not in adopted]
            attempts = {id(inst): (inst.attempt, inst.lost) for inst in lost}
            rows.stop_requested.discard(job.id)  # a wind-down in progress is requested anew
            to_stop = engine.recover_job(job, lost, adopted)
            self.check_to_stop(to_stop, job)
            for inst in adopted:
                assert inst.state in (InstanceState.RUNNING, InstanceState.UPLOADING) or (
                    inst in to_stop
                )
            for inst in lost:
                attempt, lost_before = attempts[id(inst)]
                if inst.state is InstanceState.PENDING:  # re-run, not charged
                    assert (inst.attempt, inst.lost) == (attempt + 1, lost_before + 1)
                elif inst.state is InstanceState.FAILED:
                    assert lost_before == LOST_LIMIT
                    assert inst.reason == f"{RUNTIME_LOST_LIMIT}: {LOST_LIMIT}"
                else:  # the job was winding down: it stays down
                    assert inst.state is InstanceState.CANCELLED
        self.engine = engine
        self.exited.clear()
        self.outbox_replays_through_the_tables()

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def outbox_replays_through_the_tables(self) -> None:
        for event in self.engine.drain():
            self.replay.apply(event, self.engine.jobs)
        for job in self.jobs:
            assert self.replay.jobs[job.id] is job.state
            for task in job.tasks.values():
                assert self.replay.tasks.get((job.id, task.name), TaskState.PENDING) is task.state
                for inst in instances_of(task):
                    key = (job.id, task.name, inst.index)
                    assert self.replay.instances.get(key) is inst.state, inst
                    assert self.replay.attempts[key] == inst.attempt

    @invariant()
    def slots_match_active_instances(self) -> None:
        scheduler = self.engine.scheduler
        for env in ENVS:
            active = sum(1 for i in self.records() if i.active and i.task.defn.compute_env == env)
            assert scheduler.used[env] == active, f"{env}: used {scheduler.used[env]} != {active}"
            assert 0 <= scheduler.used[env] <= scheduler.slots[env]

    @invariant()
    def task_counters(self) -> None:
        for task in self.tasks():
            records = list(instances_of(task))
            active = sum(1 for i in records if i.active)
            assert task.active == active, f"{task}: active {task.active} != {active}"
            limit = task.defn.max_parallel
            assert limit is None or task.active <= limit, f"{task} over max_parallel"
            assert all(i.state is InstanceState.PENDING for i in task.retry_queue)
            waiting = {id(i) for i in records if i.state is InstanceState.PENDING}
            assert waiting == {id(i) for i in task.retry_queue} | {id(i) for i in task.held}
            assert not {id(i) for i in task.retry_queue} & {id(i) for i in task.held}
            for inst in task.held:  # waiting out a backoff, or for its counterparts
                assert inst.not_before is not None or not counterparts_succeeded(task, inst.index)
            if task.gates is not None and task.state not in TASK_TERMINAL:
                opened = [i for i in range(task.total) if fresh_and_open(task, i)]
                assert sorted(task.open) == opened, f"{task}: open {task.open} != {opened}"
            assert task.succeeded == sum(1 for i in records if i.state is InstanceState.SUCCEEDED)
            assert task.failed == sum(1 for i in records if i.state is InstanceState.FAILED)
            cancelled = sum(1 for i in records if i.state is InstanceState.CANCELLED)
            assert task.cancelled >= cancelled
            # Each instance is counted exactly once: never started, waiting, active or done.
            assert task.fresh >= 0, f"{task}: fresh {task.fresh}"
            assert task.fresh <= sum(1 for i in task.instances if i is None)
            counted = task.fresh + len(task.retry_queue) + len(task.held) + task.active
            counted += task.done
            assert counted == task.total, f"{task}: {counted} instances counted of {task.total}"
            retries = self.replay.retries.get(task.job.id, 0)
            for inst in records:
                assert inst.charged_attempts <= task.defn.retry_limit + 1 + retries
                assert 0 <= inst.lost <= LOST_LIMIT

    @invariant()
    def tasks_respect_dependencies(self) -> None:
        for job in self.jobs:
            for task in job.tasks.values():
                defn = task.defn
                whole = [
                    (job.tasks[d], defn.conditions.get(d, "succeeded"))
                    for d in defn.depends_on
                    if d not in defn.by_index
                ]
                joined = [job.tasks[d] for d in defn.by_index]
                unmet = sum(1 for d, when in whole if not whole_edge_met(d, when))
                if task.state is TaskState.PENDING:
                    assert task.unmet == unmet
                    may_open = any(d.state not in TASK_TERMINAL for d in joined)
                    assert unmet or (may_open and not dispatchable_now(task)), (
                        f"{task} is PENDING with every dependency met"
                    )
                    assert not any(i.active for i in instances_of(task))
                elif task.state is TaskState.SKIPPED:
                    hopeless = any(
                        d.state in TASK_TERMINAL and not whole_edge_met(d, when)
                        for d, when in whole
                    ) or any(d.state in TASK_TERMINAL and d.succeeded == 0 for d in joined)
                    assert hopeless, f"{task} SKIPPED though every upstream may still do"
                elif task.state is TaskState.SUCCEEDED and self.replay.retries.get(job.id):
                    # A retry of its job keeps it, even when it ran after a dependency's failure
                    # (``finished``, ``partly_succeeded``) and that dependency runs again.
                    assert all(
                        whole_edge_met(d, when) or when != "succeeded" for d, when in whole
                    ), f"{task} is SUCCEEDED before its dependencies were met"
                else:  # READY, RUNNING, SUCCEEDED, FAILED, CANCELLED: it was released to run
                    assert not unmet, f"{task} is {task.state} before its dependencies were met"
                    if any(d.state is not TaskState.SUCCEEDED for d, _ in whole):
                        hypothesis_event("a task was released by a dependency that did not succeed")
                # By index: an instance that ran or runs had its counterparts succeed first.
                for inst in instances_of(task):
                    ran = inst.active or inst.state in (
                        InstanceState.SUCCEEDED,
                        InstanceState.FAILED,
                    )
                    if ran and defn.by_index:
                        assert counterparts_succeeded(task, inst.index), f"{inst} ran too early"
                        if any(d.state not in TASK_TERMINAL for d in joined):
                            hypothesis_event("an index ran before its dependency ended")
                    if (
                        inst.reason
                        and inst.reason.startswith("upstream_failed")
                        and "[" in inst.reason
                    ):
                        hypothesis_event("an index was cancelled for its counterpart")
                if task.state is TaskState.READY:
                    assert task.active == task.failed == 0
                    # Only a retried job's task is READY again with successes kept.
                    assert task.succeeded == 0 or self.replay.retries.get(job.id)
                if task.state in TASK_TERMINAL:
                    assert task.active == 0
                    if task.state is not TaskState.SKIPPED:
                        assert task.pending == 0
                if task.state is TaskState.SUCCEEDED:
                    assert task.succeeded == task.total
                if task.state is TaskState.FAILED:
                    assert task.failed > 0

    @invariant()
    def jobs_end_consistently(self) -> None:
        for job in self.jobs:
            states = [t.state for t in job.tasks.values()]
            assert job.unfinished_tasks == sum(1 for s in states if s not in TASK_TERMINAL)
            if job.state in JOB_TERMINAL:
                assert job.unfinished_tasks == 0
                assert job.stopping is None
                assert (job.state is JobState.SUCCEEDED) == all(
                    s is TaskState.SUCCEEDED for s in states
                )
                if job.state is JobState.FAILED and job.reason != JOB_TIMEOUT:
                    assert TaskState.FAILED in states
                if job.reason == JOB_TIMEOUT:  # a deadline ends a job FAILED, never else
                    assert job.state is JobState.FAILED
            else:
                assert job.unfinished_tasks > 0, f"{job}: every task ended but the job did not"

    @invariant()
    def no_deadlock(self) -> None:
        """With nothing active, a job that is not suspended by choice has work to start."""
        if self.any_active():
            return
        for job in self.jobs:
            if job.state in JOB_TERMINAL:
                continue
            if job.state is JobState.SUSPENDED and job.stopping is None:
                continue
            if any(i.not_before is not None for t in job.tasks.values() for i in t.held):
                continue  # waits for time to pass, not for an event that may never come
            assert any(dispatchable(t) for t in job.tasks.values()), f"{job} is stuck"

    def teardown(self) -> None:
        """Resume everything and let every attempt succeed: every job must end."""
        for _ in range(10_000):
            for job in self.jobs:
                self.engine.resume_job(job)
            self.engine.release_due()
            started = self.engine.dispatch()
            active = [i for i in self.records() if i.active]
            if not started and not active and self.engine.next_release() is None:
                break
            for inst in active:
                if inst.state is InstanceState.STAGING:
                    self.engine.instance_running(inst, pid=1)
                elif inst.state is InstanceState.RUNNING:
                    self.engine.instance_exited(inst, SUCCESS)
                else:
                    self.finish(inst, self.exited.pop(id(inst), SUCCESS))
            self.outbox_replays_through_the_tables()
            self.slots_match_active_instances()
            self.task_counters()
            self.tasks_respect_dependencies()  # lanes joined by index flow here most
        self.outbox_replays_through_the_tables()
        self.task_counters()
        self.tasks_respect_dependencies()
        self.jobs_end_consistently()
        for job in self.jobs:
            assert job.state in JOB_TERMINAL, f"{job} never ended"


EngineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineMachine = EngineMachine.TestCase


# -- plain unit tests of specific paths ----------------------------------------------------------


class Harness:
    """One engine, one job, and the runtime's sequence of calls for an attempt."""

    def __init__(self, *tasks: TaskDef, slots: int = 4, gpu: int = 1, priority: int = 0) -> None:
        self.engine = Engine({"local": slots, "gpu": gpu}, clock=lambda: 0.0)
        self.job = self.submit(*tasks, priority=priority)

    def submit(self, *tasks: TaskDef, priority: int = 0) -> JobRec:
        seq = len(self.engine.jobs) + 1
        job = JobRec(f"j{seq}", JobDef(name="job", tasks=tasks, priority=priority), seq, 0.0)
        self.engine.add_job(job)
        return job

    def task(self, name: str) -> TaskRec:
        return self.job.tasks[name]

    def dispatch(self) -> list[str]:
        return [f"{i.task.name}[{i.index}]" for i in self.engine.dispatch()]

    def inst(self, name: str, index: int = 0) -> InstanceRec:
        inst = self.task(name).instances[index]
        assert inst is not None
        return inst

    def run(self, name: str, index: int = 0, outcome: Outcome = SUCCESS) -> list[InstanceRec]:
        """The attempt runs and ends with ``outcome``; returns the instances to stop."""
        inst = self.inst(name, index)
        if inst.state is InstanceState.STAGING:
            self.engine.instance_running(inst, pid=100)
        self.engine.instance_exited(inst, outcome)
        return self.engine.instance_finished(inst, outcome)

    def job_state(self) -> JobState:
        return self.job.state

    def states(self) -> dict[str, TaskState]:
        return {name: task.state for name, task in self.job.tasks.items()}


def test_outcome_code_counts_a_signal_as_128_plus_n() -> None:
    assert Outcome(signal=9).code == 137
    assert Outcome(signal=15, reason="timeout").code == 143
    assert Outcome(exit_code=3).code == 3
    assert Outcome(exit_code=0).succeeded
    assert not Outcome(exit_code=0, reason="upload_failed").succeeded
    assert Outcome(signal=9).failure_reason() == "signal: SIGKILL"
    assert Outcome(exit_code=3).failure_reason() == "exit_code: 3"
    assert Outcome(signal=15, reason="timeout").failure_reason() == "timeout"


@pytest.mark.parametrize(
    ("codes", "outcome", "retried"),
    [
        ((137,), Outcome(signal=9), True),  # SIGKILL reads as 137
        ((9,), Outcome(signal=9), False),  # ... not as 9
        ((143,), Outcome(signal=15, reason="timeout"), True),  # a timeout is a TERM: 143
        ((3, 137), Outcome(exit_code=3), True),
        ((3, 137), Outcome(exit_code=1), False),
        ((1,), Outcome(reason="exec_failed: x: not found"), False),  # no exit code at all
        (None, Outcome(reason="exec_failed: x: not found"), True),
        (None, Outcome(exit_code=1), True),
    ],
)
def test_retry_on_exit_codes(
    codes: tuple[int, ...] | None, outcome: Outcome, retried: bool
) -> None:
    h = Harness(task_def("a", retry_limit=1, retry_exit_codes=codes))
    assert h.dispatch() == ["a[0]"]
    inst = h.inst("a")
    if outcome.reason is not None and outcome.reason.startswith("exec_failed"):
        h.engine.instance_finished(inst, outcome)  # never ran: finished from STAGING
    else:
        h.run("a", outcome=outcome)
    if retried:
        assert (inst.state, inst.attempt, inst.reason) == (
            InstanceState.PENDING,
            2,
            outcome.failure_reason(),
        )
        assert h.task("a").state is TaskState.RUNNING
        assert h.dispatch() == ["a[0]"]
        h.run("a")
        assert h.job.state is JobState.SUCCEEDED
    else:
        assert (inst.state, inst.attempt) == (InstanceState.FAILED, 1)
        assert h.job.state is JobState.FAILED
        assert h.job.reason == "task_failed: a"


def test_retry_limit_counts_attempts() -> None:
    h = Harness(task_def("a", retry_limit=2, retry_exit_codes=(137,)))
    for attempt in (1, 2, 3):
        assert h.dispatch() == ["a[0]"]
        assert h.inst("a").attempt == attempt
        h.run("a", outcome=Outcome(signal=9))
    inst = h.inst("a")
    assert (inst.state, inst.attempt, inst.reason) == (InstanceState.FAILED, 3, "signal: SIGKILL")
    assert h.task("a").state is TaskState.FAILED
    assert h.task("a").reason == "signal: SIGKILL"
    assert h.job.state is JobState.FAILED


def test_fail_job_cancels_the_rest_and_ends_failed() -> None:
    h = Harness(
        task_def("a", instances=2),
        task_def("b", instances=3),
        task_def("c", depends_on=("a",)),
        slots=3,
    )
    assert h.dispatch() == ["a[0]", "a[1]", "b[0]"]
    to_stop = h.run("a", 0, Outcome(exit_code=1))
    assert {f"{i.task.name}[{i.index}]" for i in to_stop} == {"a[1]", "b[0]"}
    assert all(i.stop_reason == "task_failed: a" for i in to_stop)
    assert h.job.stopping == (JobState.FAILED, "task_failed: a")
    assert h.dispatch() == []  # a free slot, but nothing starts while winding down
    assert h.job.state is JobState.RUNNING
    for inst in to_stop:
        h.run(inst.task.name, inst.index, Outcome(signal=15))
        assert inst.state is InstanceState.CANCELLED
    assert h.states() == {
        "a": TaskState.FAILED,
        "b": TaskState.CANCELLED,
        "c": TaskState.SKIPPED,
    }
    assert h.task("b").cancelled == 3  # one stopped, two never started
    assert h.task("c").reason == "upstream_failed: a"
    assert (h.job.state, h.job.reason) == (JobState.FAILED, "task_failed: a")


def test_continue_runs_independent_branches_and_ends_failed() -> None:
    h = Harness(
        task_def("a", on_failure="continue"),
        task_def("b"),
        task_def("c", depends_on=("a",)),
        task_def("d", depends_on=("c",)),
        task_def("e", depends_on=("b",)),
    )
    assert h.dispatch() == ["a[0]", "b[0]"]
    assert h.run("a", outcome=Outcome(exit_code=2)) == []
    assert h.job.stopping is None
    assert h.task("c").state is TaskState.SKIPPED
    assert h.task("d").reason == "upstream_failed: a"  # the root cause, not "c"
    h.run("b")
    assert h.dispatch() == ["e[0]"]
    h.run("e")
    assert h.states() == {
        "a": TaskState.FAILED,
        "b": TaskState.SUCCEEDED,
        "c": TaskState.SKIPPED,
        "d": TaskState.SKIPPED,
        "e": TaskState.SUCCEEDED,
    }
    assert (h.job.state, h.job.reason) == (JobState.FAILED, "task_failed: a")


def test_stop_job_ends_cancelled() -> None:
    h = Harness(task_def("a", instances=3), task_def("b", depends_on=("a",)), slots=1)
    assert h.dispatch() == ["a[0]"]
    h.engine.instance_running(h.inst("a"), pid=1)
    (inst,) = h.engine.stop_job(h.job)
    assert inst is h.inst("a") and inst.stop_reason == STOPPED_BY_USER
    assert h.engine.stop_job(h.job) == []  # a second stop is a no-op
    h.run("a", outcome=Outcome(signal=15))
    assert h.states() == {"a": TaskState.CANCELLED, "b": TaskState.SKIPPED}
    assert h.task("a").reason == STOPPED_BY_USER
    assert h.task("b").reason == "upstream_cancelled: a"
    assert (h.job.state, h.job.reason) == (JobState.CANCELLED, STOPPED_BY_USER)
    kinds = [type(e).__name__ for e in h.engine.drain()]
    assert kinds.count("JobStopRequested") == 1


def test_time_out_job_stops_and_cancels_and_ends_failed() -> None:
    h = Harness(task_def("a", instances=3), task_def("b", depends_on=("a",)), slots=1)
    assert h.dispatch() == ["a[0]"]
    h.engine.instance_running(h.inst("a"), pid=1)
    assert h.engine.suspend_job(h.job)  # a suspended job's clock runs on
    (inst,) = h.engine.time_out_job(h.job)
    assert inst is h.inst("a") and inst.stop_reason == JOB_TIMEOUT
    assert h.engine.time_out_job(h.job) == [] and h.engine.stop_job(h.job) == []
    h.run("a", outcome=Outcome(signal=15))
    assert h.states() == {"a": TaskState.CANCELLED, "b": TaskState.SKIPPED}
    assert (h.task("a").reason, inst.state, inst.reason) == (
        JOB_TIMEOUT,
        InstanceState.CANCELLED,
        JOB_TIMEOUT,
    )
    assert h.task("a").cancelled == 3  # the two never started are cancelled too
    assert (h.job.state, h.job.reason) == (JobState.FAILED, JOB_TIMEOUT)
    assert h.engine.time_out_job(h.job) == []  # an ended job stays as it ended


def test_a_stopped_job_keeps_its_end_when_its_deadline_passes() -> None:
    h = Harness(task_def("a"))
    h.dispatch()
    h.engine.stop_job(h.job)
    assert h.engine.time_out_job(h.job) == []
    h.run("a", outcome=Outcome(signal=15))
    assert (h.job.state, h.job.reason) == (JobState.CANCELLED, STOPPED_BY_USER)


def test_the_deadline_counts_from_the_start_and_again_from_a_retry() -> None:
    now = [10.0]
    engine = Engine({"local": 1}, clock=lambda: now[0])
    job = JobRec("j1", JobDef(name="job", tasks=(task_def("a"),), timeout_s=5.0), 1, 0.0)
    assert job.deadline is None  # not started
    engine.add_job(job)
    assert job.deadline == 15.0
    now[0] = 12.0
    engine.suspend_job(job)
    engine.resume_job(job)
    assert job.deadline == 15.0, "a suspend does not stop the clock, a resume does not reset it"
    engine.time_out_job(job)
    assert (job.state, job.reason) == (JobState.FAILED, JOB_TIMEOUT)
    now[0] = 100.0
    engine.retry_job(job)
    assert job.deadline == 105.0 and job.started_at == 10.0


def test_stop_job_with_nothing_active_ends_at_once() -> None:
    h = Harness(task_def("a", instances=2), task_def("b", depends_on=("a",)))
    assert h.engine.stop_job(h.job) == []
    assert h.states() == {"a": TaskState.CANCELLED, "b": TaskState.SKIPPED}
    assert h.job.state is JobState.CANCELLED


def test_stop_instance_cancels_a_waiting_instance() -> None:
    h = Harness(task_def("a", instances=2), slots=1)
    assert h.dispatch() == ["a[0]"]
    assert h.engine.stop_instance(h.task("a"), 1) is None
    assert h.inst("a", 1).state is InstanceState.CANCELLED
    h.run("a", 0)
    assert h.dispatch() == []
    assert h.task("a").state is TaskState.CANCELLED
    assert (h.job.state, h.job.reason) == (JobState.CANCELLED, "task_cancelled: a")


def test_stop_instance_of_an_active_one_is_left_to_the_caller() -> None:
    h = Harness(task_def("a", retry_limit=3))
    h.dispatch()
    inst = h.engine.stop_instance(h.task("a"), 0)
    assert inst is h.inst("a") and inst.stop_reason == STOPPED_BY_USER
    h.run("a", outcome=Outcome(signal=15))
    assert inst.state is InstanceState.CANCELLED  # stopped: not retried
    assert h.job.state is JobState.CANCELLED


def test_suspend_blocks_dispatch_and_resume_restarts_it() -> None:
    h = Harness(task_def("a", instances=2), slots=1)
    assert h.dispatch() == ["a[0]"]
    assert h.engine.suspend_job(h.job)
    assert not h.engine.suspend_job(h.job)
    assert h.job_state() is JobState.SUSPENDED
    h.run("a", 0)  # a suspended job lets its running instances finish
    assert h.dispatch() == []
    assert h.engine.waiting_reason(h.task("a")) == "job_suspended"
    assert h.engine.resume_job(h.job)
    assert not h.engine.resume_job(h.job)
    assert h.dispatch() == ["a[1]"]
    h.run("a", 1)
    assert h.job.state is JobState.SUCCEEDED


def test_a_suspended_job_can_end() -> None:
    h = Harness(task_def("a"))
    h.dispatch()
    assert h.engine.suspend_job(h.job)
    h.run("a")
    assert h.job.state is JobState.SUCCEEDED


def test_suspend_refused_while_winding_down() -> None:
    h = Harness(task_def("a"))
    h.dispatch()
    h.engine.stop_job(h.job)
    assert not h.engine.suspend_job(h.job)
    h.run("a", outcome=Outcome(signal=15))
    assert h.job.state is JobState.CANCELLED
    assert not h.engine.suspend_job(h.job)
    assert not h.engine.resume_job(h.job)


def test_waiting_reasons() -> None:
    h = Harness(
        task_def("a", instances=3, max_parallel=1),
        task_def("b", instances=2),
        task_def("c", depends_on=("a", "b")),
        task_def("g", compute_env="gpu", instances=2),
        slots=2,
    )
    assert h.engine.waiting_reason(h.task("c")) == "waiting_for: a, b"
    assert h.dispatch() == ["a[0]", "b[0]", "g[0]"]
    assert h.engine.waiting_reason(h.task("a")) == "max_parallel"
    assert h.engine.waiting_reason(h.task("b")) == "no_free_slot: local"
    assert h.engine.waiting_reason(h.task("g")) == "no_free_slot: gpu"
    h.run("b", 0)
    assert h.dispatch() == ["b[1]"]
    assert h.engine.waiting_reason(h.task("b")) is None  # nothing left to start
    h.run("b", 1)
    assert h.engine.waiting_reason(h.task("c")) == "waiting_for: a"
    assert h.engine.suspend_job(h.job)
    assert h.engine.waiting_reason(h.task("a")) == "job_suspended"
    assert h.engine.waiting_reason(h.task("c")) == "waiting_for: a"
    assert h.engine.resume_job(h.job)
    h.run("a", 0, Outcome(exit_code=1))  # fail_job: the job winds down
    h.run("g", 0, Outcome(signal=15))
    assert h.engine.waiting_reason(h.task("a")) == "exit_code: 1"
    assert h.engine.waiting_reason(h.task("c")) == "upstream_failed: a"
    assert h.engine.waiting_reason(h.task("g")) == "task_failed: a"


def test_higher_priority_job_dispatches_first() -> None:
    h = Harness(task_def("a", instances=2), slots=1)
    urgent = h.submit(task_def("a", instances=2), priority=5)
    later = h.submit(task_def("a"), priority=5)
    order = []
    for _ in range(5):
        (inst,) = h.engine.dispatch()
        order.append(inst.task.job.id)
        h.engine.instance_running(inst, pid=1)
        h.engine.instance_exited(inst, SUCCESS)
        h.engine.instance_finished(inst, SUCCESS)
    assert order == [urgent.id, urgent.id, later.id, h.job.id, h.job.id]
    assert all(j.state is JobState.SUCCEEDED for j in h.engine.jobs.values())


# -- regressions: bugs the state machine found ------------------------------------------------


def test_stop_instance_during_wind_down_does_not_hang_the_job() -> None:
    h = Harness(task_def("a", instances=3), slots=1)
    assert h.dispatch() == ["a[0]"]
    h.engine.stop_job(h.job)
    h.engine.stop_instance(h.task("a"), 1)
    h.run("a", 0, Outcome(signal=15))
    assert h.task("a").fresh >= 0
    assert h.job.state is JobState.CANCELLED


def test_stopping_all_instances_of_a_pending_task_cancels_it() -> None:
    h = Harness(task_def("a"), task_def("b", depends_on=("a",)))
    assert h.engine.stop_instance(h.task("b"), 0) is None
    assert h.dispatch() == ["a[0]"]
    h.run("a")
    assert h.dispatch() == []
    assert h.task("b").state is TaskState.CANCELLED
    assert h.job.state is JobState.CANCELLED


def test_stop_instance_after_the_job_ended_changes_nothing() -> None:
    h = Harness(task_def("a"), task_def("b", depends_on=("a",), instances=2))
    h.engine.stop_job(h.job)
    assert h.job.state is JobState.CANCELLED
    h.engine.drain()
    assert h.engine.stop_instance(h.task("b"), 1) is None
    assert h.engine.drain() == []


@pytest.mark.parametrize("reason", [NODE_FAIL, PREEMPTED])
def test_a_node_lost_to_the_cluster_reruns_uncharged_up_to_the_lost_limit(reason: str) -> None:
    h = Harness(task_def("t"))  # no retries: a charged failure would fail the job
    limit = h.engine.lost_limit
    for attempt in range(1, limit + 2):
        assert h.dispatch() == ["t[0]"]
        assert h.inst("t").attempt == attempt
        h.run("t", outcome=Outcome(signal=9, reason=reason))
    inst = h.inst("t")
    assert (inst.state, inst.reason) == (InstanceState.FAILED, f"{RUNTIME_LOST_LIMIT}: {limit}")
    assert (inst.lost, inst.charged_attempts) == (limit, 1)


def test_a_node_failure_then_success_succeeds() -> None:
    h = Harness(task_def("t"))
    assert h.dispatch() == ["t[0]"]
    h.run("t", outcome=Outcome(reason=NODE_FAIL))
    inst = h.inst("t")
    assert (inst.state, inst.reason, inst.attempt) == (InstanceState.PENDING, NODE_FAIL, 2)
    assert h.dispatch() == ["t[0]"]
    h.run("t")
    assert h.job_state() is JobState.SUCCEEDED


def test_a_start_that_keeps_hitting_a_system_limit_fails_after_its_waits() -> None:
    h = Harness(task_def("t"))  # no retries
    for waited in range(1, SYSTEM_LIMIT_WAITS + 1):
        assert h.dispatch() == ["t[0]"]
        inst = h.inst("t")
        h.engine.instance_finished(inst, Outcome(reason=f"{SYSTEM_LIMIT}: sh: Resource busy"))
        assert (inst.state, inst.attempt, inst.limit_waits) == (
            InstanceState.PENDING,
            1,
            waited,
        )
    assert h.dispatch() == ["t[0]"]
    h.engine.instance_finished(inst, Outcome(reason=f"{SYSTEM_LIMIT}: sh: Resource busy"))
    assert (inst.state, inst.reason) == (InstanceState.FAILED, f"{SYSTEM_LIMIT}: sh: Resource busy")
    assert h.job_state() is JobState.FAILED


@pytest.mark.parametrize(
    ("reason", "waits_for"),
    [
        # The spawner could not write the attempt's record: nothing ran.
        (f"{NO_SPACE}: record: No space left", NO_SPACE),
        # The spawner had no file descriptor left for the program's pipes.
        (f"{SYSTEM_LIMIT}: log: Too many open files", SYSTEM_LIMIT),
    ],
)
def test_a_start_that_found_no_room_waits_uncharged_for_the_same_attempt(
    reason: str, waits_for: str
) -> None:
    h = Harness(task_def("t"))  # no retries: a charged failure would fail the job
    assert h.dispatch() == ["t[0]"]
    inst = h.inst("t")
    h.engine.instance_finished(inst, Outcome(reason=reason))
    assert (inst.state, inst.reason, inst.attempt) == (InstanceState.PENDING, waits_for, 1)
    assert inst.charged_attempts == 1 and h.task("t").retry_queue[0] is inst
    assert h.dispatch() == ["t[0]"]  # once there is room again, the same attempt starts
    h.run("t")
    assert h.job_state() is JobState.SUCCEEDED and inst.attempt == 1


def test_a_paused_compute_env_gets_no_starts_and_the_others_do() -> None:
    h = Harness(task_def("a"), task_def("b", compute_env="gpu"))
    assert [i.task.name for i in h.engine.dispatch(paused={"local"})] == ["b"]
    assert [i.task.name for i in h.engine.dispatch()] == ["a"]
