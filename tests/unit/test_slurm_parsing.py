"""What Slurm's commands say, read as element states and outcomes: squeue --json (22.05's plain
values and 23.02's wrapped ones), jobcomp/filetxt lines, sbatch --parsable, --array specs and
the job names that carry aiobatch's ids."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobatch.executors.slurm_batch import env_file_text, job_name, parse_job_name, runtime_prefix
from aiobatch.executors.slurm_commands import (
    PENDING_REST,
    SlurmError,
    array_spec,
    expand_task_string,
    parse_jobcomp_line,
    parse_sbatch,
    parse_squeue,
)

PREFIX = runtime_prefix("0123456789abcdef")
NAME = job_name("0123456789abcdef", "20260101000000aabbccddeeff", 2, 0, "render.v2")


def squeue_json(*jobs: dict[str, object]) -> bytes:
    return json.dumps({"meta": {}, "errors": [], "jobs": list(jobs)}).encode()


def job(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "job_id": 12,
        "array_job_id": 11,
        "array_task_id": 0,
        "array_task_string": "",
        "name": NAME,
        "job_state": "RUNNING",
        "state_reason": "None",
        "exit_code": 0,
        "start_time": 1796022098,
        "end_time": 1827558098,
    }
    return {**base, **fields}


def test_squeue_running_element_has_a_start_but_no_end() -> None:
    [state] = parse_squeue(squeue_json(job()), PREFIX)
    assert (state.array_id, state.task_id, state.state) == (11, 0, "RUNNING")
    assert state.start_time == 1796022098 and state.end_time is None
    assert not state.final and state.reason == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(768, (3, None)), (0, (0, None)), (9, (None, 9)), (15, (None, 15)), (253 << 8, (253, None))],
)
def test_squeue_exit_code_is_a_wait_status(raw: int, expected: tuple[object, object]) -> None:
    [state] = parse_squeue(squeue_json(job(job_state="FAILED", exit_code=raw)), PREFIX)
    assert (state.exit_code, state.signal) == expected


def test_squeue_pending_record_stands_for_each_waiting_element() -> None:
    pending = job(
        job_id=14,
        array_job_id=14,
        array_task_id=None,
        array_task_string="4-5%2",
        job_state="PENDING",
        state_reason="JobArrayTaskLimit",
        start_time=1796022200,  # an expected start, not a start
    )
    states = parse_squeue(squeue_json(pending), PREFIX)
    assert [(s.key, s.state, s.reason) for s in states] == [
        ((14, 4), "PENDING", "JobArrayTaskLimit"),
        ((14, 5), "PENDING", "JobArrayTaskLimit"),
    ]
    assert all(s.start_time is None and not s.ran for s in states)


def test_squeue_skips_jobs_of_others() -> None:
    other = job(name="aiobatch.ffffffffffffffff.x.1.0.t")
    assert parse_squeue(squeue_json(other, job(name="bash")), PREFIX) == []


def test_squeue_of_newer_releases_wraps_numbers_and_states() -> None:
    newer = job(
        array_job_id={"set": True, "infinite": False, "number": 11},
        array_task_id={"set": True, "infinite": False, "number": 3},
        job_state=["FAILED"],
        exit_code={"status": ["EXITED"], "return_code": {"set": True, "number": 3}},
        start_time={"set": True, "number": 100},
        end_time={"set": True, "number": 107},
    )
    [state] = parse_squeue(squeue_json(newer), PREFIX)
    assert (state.key, state.state, state.exit_code) == ((11, 3), "FAILED", 3)
    assert state.outcome().duration_s == 7


@pytest.mark.parametrize(
    ("slurm_state", "reason"),
    [
        ("TIMEOUT", "timeout"),
        ("OUT_OF_MEMORY", "oom"),
        ("NODE_FAIL", "node_fail"),
        ("CANCELLED", "cancelled"),
        ("COMPLETED", None),
        ("SPECIAL_EXIT", "slurm: SPECIAL_EXIT"),
    ],
)
def test_final_states_map_to_reasons(slurm_state: str, reason: str | None) -> None:
    [state] = parse_squeue(squeue_json(job(job_state=slurm_state)), PREFIX)
    assert state.outcome().reason == reason


def jobcomp_line(state: str, exit_code: str, name: str = NAME) -> str:
    return (
        f"JobId=13 UserId=root(0) GroupId=root(0) Name={name} JobState={state} "
        "Partition=aiobatch TimeLimit=UNLIMITED StartTime=2026-11-30T07:01:38 "
        "EndTime=2026-11-30T07:01:40 NodeList=n2 NodeCnt=1 ProcCnt=1 WorkDir=/ "
        "ReservationName= Tres=cpu=1,mem=256M,node=1,billing=1 Account= QOS= WcKey= "
        "Cluster=unknown SubmitTime=2026-11-30T07:01:38 EligibleTime=2026-11-30T07:01:38 "
        f"ArrayJobId=11 ArrayTaskId=2 DerivedExitCode=0:0 ExitCode={exit_code} "
    )


def test_jobcomp_line_of_a_failed_element() -> None:
    state = parse_jobcomp_line(jobcomp_line("FAILED", "3:0"), PREFIX)
    assert state is not None
    assert (state.key, state.name, state.state) == ((11, 2), NAME, "FAILED")
    outcome = state.outcome()
    assert (outcome.exit_code, outcome.signal, outcome.reason) == (3, None, None)
    assert outcome.duration_s == 2


def test_jobcomp_oom_mark_is_not_a_signal() -> None:
    state = parse_jobcomp_line(jobcomp_line("OUT_OF_MEMORY", "0:125"), PREFIX)
    assert state is not None and state.signal is None
    assert state.outcome().reason == "oom"


def test_jobcomp_signal() -> None:
    state = parse_jobcomp_line(jobcomp_line("CANCELLED", "0:15"), PREFIX)
    assert state is not None and (state.exit_code, state.signal) == (None, 15)


def test_jobcomp_line_of_elements_cancelled_while_pending() -> None:
    # Slurm writes the elements that never started as one record of the array's own job id.
    line = jobcomp_line("CANCELLED", "0:0").replace("ArrayJobId=11 ArrayTaskId=2 ", "")
    state = parse_jobcomp_line(line.replace("JobId=13 ", "JobId=11 "), PREFIX)
    assert state is not None
    assert (state.array_id, state.task_id, state.state) == (11, PENDING_REST, "CANCELLED")


@pytest.mark.parametrize("line", [jobcomp_line("FAILED", "3:0", name="other"), "", "garbage"])
def test_jobcomp_lines_not_ours(line: str) -> None:
    assert parse_jobcomp_line(line, PREFIX) is None


def test_sbatch_parsable() -> None:
    assert parse_sbatch("42\n") == 42
    assert parse_sbatch("42;cluster\n") == 42
    with pytest.raises(SlurmError, match="unexpected"):
        parse_sbatch("Submitted batch job 42\n")


def test_array_spec_compresses_runs_and_throttles() -> None:
    assert array_spec([5, 0, 1, 2, 7, 8], 2) == "0-2,5,7-8%2"
    assert array_spec([3], None) == "3"
    assert expand_task_string("[0-2,5,7-8%2]") == [0, 1, 2, 5, 7, 8]
    assert expand_task_string("0-6:3") == [0, 3, 6]


@given(st.sets(st.integers(0, 1000), min_size=1), st.one_of(st.none(), st.integers(1, 50)))
def test_array_spec_round_trip(ids: set[int], throttle: int | None) -> None:
    assert expand_task_string(array_spec(sorted(ids), throttle)) == sorted(ids)


@given(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True), st.integers(1, 99))
def test_job_name_round_trip(task: str, attempt: int) -> None:
    name = job_name("0123456789abcdef", "20260101000000aabbccddeeff", attempt, 1001, task)
    assert parse_job_name(name, PREFIX) == ("20260101000000aabbccddeeff", attempt, 1001, task)


def test_env_file_quotes_values_and_leaves_slurm_own() -> None:
    text = env_file_text({"A": "it's $HOME\nnext", "SLURM_JOB_ID": "1", "not valid": "x"})
    assert text == "export A='it'\"'\"'s $HOME\nnext'\n"
