"""Property tests of the three state machines: the tables, the check functions, coarse_status."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiobatch.errors import InvalidTransition
from aiobatch.states import (
    INSTANCE_ACTIVE,
    INSTANCE_TERMINAL,
    INSTANCE_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    TASK_TERMINAL,
    TASK_TRANSITIONS,
    InstanceState,
    JobState,
    Status,
    TaskState,
    check_instance,
    check_job,
    check_task,
    coarse_status,
)

S = TypeVar("S", bound=enum.StrEnum)


@dataclass(frozen=True)
class Machine(Generic[S]):
    kind: str
    states: tuple[S, ...]
    table: Mapping[S, frozenset[S]]
    terminal: frozenset[S]
    initial: S
    check: Callable[[S, S], S]
    # The only ways out of a terminal state: a user's retry of the job.
    retry: Mapping[S, S]

    def __str__(self) -> str:
        return self.kind


MACHINES: list[Machine[Any]] = [
    Machine(
        "job",
        tuple(JobState),
        JOB_TRANSITIONS,
        JOB_TERMINAL,
        JobState.SUBMITTED,
        check_job,
        {JobState.FAILED: JobState.RUNNING, JobState.CANCELLED: JobState.RUNNING},
    ),
    Machine(
        "task",
        tuple(TaskState),
        TASK_TRANSITIONS,
        TASK_TERMINAL,
        TaskState.PENDING,
        check_task,
        {s: TaskState.PENDING for s in (TaskState.FAILED, TaskState.CANCELLED, TaskState.SKIPPED)},
    ),
    Machine(
        "instance",
        tuple(InstanceState),
        INSTANCE_TRANSITIONS,
        INSTANCE_TERMINAL,
        InstanceState.PENDING,
        check_instance,
        {s: InstanceState.PENDING for s in (InstanceState.FAILED, InstanceState.CANCELLED)},
    ),
]

machines = pytest.mark.parametrize("machine", MACHINES, ids=str)
SETTINGS = settings(max_examples=100, deadline=None)


def apply(machine: Machine[Any], current: Any, target: Any) -> Any:
    """Apply one step through the check function; assert it agrees with the table."""
    allowed = machine.table[current]
    if target in allowed:
        assert current not in machine.terminal or machine.retry[current] == target
        assert machine.check(current, target) is target
        return target
    with pytest.raises(InvalidTransition) as caught:
        machine.check(current, target)
    error = caught.value
    assert (error.kind, error.old, error.new) == (machine.kind, current, target)
    assert str(error) == f"illegal {machine.kind} transition {current} -> {target}"
    return current


@machines
@SETTINGS
@given(data=st.data())
def test_random_targets_follow_the_table(machine: Machine[Any], data: st.DataObject) -> None:
    targets = data.draw(st.lists(st.sampled_from(machine.states), max_size=30))
    current = machine.initial
    for target in targets:
        current = apply(machine, current, target)


@machines
@SETTINGS
@given(data=st.data())
def test_random_walks_mostly_along_legal_edges(machine: Machine[Any], data: st.DataObject) -> None:
    """Walks that mostly take legal steps reach deep states; illegal ones are tried on the way."""
    current = machine.initial
    for _ in range(data.draw(st.integers(0, 30))):
        legal = sorted(machine.table[current])
        take_legal: bool = data.draw(st.booleans())
        if legal and take_legal:
            target = data.draw(st.sampled_from(legal))
        else:
            target = data.draw(st.sampled_from(machine.states))
        current = apply(machine, current, target)


@machines
@SETTINGS
@given(data=st.data())
def test_terminal_states_accept_only_a_retry(machine: Machine[Any], data: st.DataObject) -> None:
    old = data.draw(st.sampled_from(sorted(machine.terminal)))
    new = data.draw(st.sampled_from(machine.states))
    if machine.retry.get(old) == new:
        assert machine.check(old, new) is new
        return
    with pytest.raises(InvalidTransition):
        machine.check(old, new)


@machines
def test_table_shape(machine: Machine[Any]) -> None:
    states = frozenset(machine.states)
    assert set(machine.table) == states
    for old, allowed in machine.table.items():
        assert allowed <= states
        assert old not in allowed, f"{old} -> {old} would be a no-op transition"
    # Terminal means "no way out but a retry", and the initial state is not terminal.
    assert machine.terminal == {s for s in states if machine.table[s] <= {machine.retry.get(s)}}
    assert set(machine.retry) <= machine.terminal
    assert machine.initial not in machine.terminal


@machines
def test_every_state_reachable_and_every_state_can_end(machine: Machine[Any]) -> None:
    reached = {machine.initial}
    frontier = [machine.initial]
    while frontier:
        for nxt in machine.table[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == frozenset(machine.states)
    for state in machine.states:
        seen, stack = {state}, [state]
        while stack:
            for nxt in machine.table[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        assert seen & machine.terminal, f"{state} can never end"


def test_instance_active_states() -> None:
    assert frozenset({InstanceState.STAGING, InstanceState.RUNNING, InstanceState.UPLOADING}) == (
        INSTANCE_ACTIVE
    )
    assert not INSTANCE_ACTIVE & INSTANCE_TERMINAL
    # Every active state can go back to PENDING (a retry) and to every terminal but SUCCEEDED
    # only after the program ran (UPLOADING).
    for state in INSTANCE_ACTIVE:
        assert InstanceState.PENDING in INSTANCE_TRANSITIONS[state]
        assert {InstanceState.FAILED, InstanceState.CANCELLED} <= INSTANCE_TRANSITIONS[state]
    succeeded_from = {s for s, a in INSTANCE_TRANSITIONS.items() if InstanceState.SUCCEEDED in a}
    assert succeeded_from == {InstanceState.UPLOADING}


@SETTINGS
@given(state=st.sampled_from(list(JobState)))
def test_coarse_status(state: JobState) -> None:
    status = coarse_status(state)
    assert isinstance(status, Status)
    assert (status is Status.TERMINATED) == (state in JOB_TERMINAL)
    assert (status is Status.SUSPENDED) == (state is JobState.SUSPENDED)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.SUBMITTED, "Running"),
        (JobState.RUNNING, "Running"),
        (JobState.SUSPENDED, "Suspended"),
        (JobState.SUCCEEDED, "Terminated"),
        (JobState.FAILED, "Terminated"),
        (JobState.CANCELLED, "Terminated"),
    ],
)
def test_coarse_status_table(state: JobState, status: str) -> None:
    assert coarse_status(state).value == status


def test_status_has_exactly_pyodps_members_and_values() -> None:
    # odps.models.Instance.Status: a plain Enum, so a member never equals its string.
    assert {s.name: s.value for s in Status} == {
        "RUNNING": "Running",
        "SUSPENDED": "Suspended",
        "TERMINATED": "Terminated",
    }
    assert Status("Terminated") is Status.TERMINATED
    assert not isinstance(Status.RUNNING, str)  # a plain Enum, as PyODPS'
