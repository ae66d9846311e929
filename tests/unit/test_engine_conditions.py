"""The engine on dependency conditions, by-index edges and retry backoff: specific paths
(the state machine in test_engine.py covers their combinations)."""

from __future__ import annotations

from aiobatch.attempt import Outcome
from aiobatch.engine import BACKOFF, Engine
from aiobatch.model import JobRec
from aiobatch.recovery import restore_job
from aiobatch.schema import InstanceRow, JobRow
from aiobatch.spec import JobDef
from aiobatch.spec_types import BackoffDef
from aiobatch.states import InstanceState, JobState, TaskState
from tests.unit.test_engine import SUCCESS, Harness, task_def

FAIL = Outcome(exit_code=1, duration_s=1.0)
TIMEOUT = Outcome(signal=15, reason="timeout", duration_s=1.0)


def test_finished_runs_after_a_failure_and_the_job_still_fails() -> None:
    h = Harness(
        task_def("work", on_failure="continue"),  # as the spec makes it: a tolerant dependent
        task_def("report", depends_on=("work",), conditions={"work": "finished"}),
        task_def("publish", depends_on=("work",)),
    )
    assert h.dispatch() == ["work[0]"]
    h.run("work", outcome=FAIL)
    assert h.states() == {
        "work": TaskState.FAILED,
        "report": TaskState.READY,
        "publish": TaskState.SKIPPED,
    }
    assert h.dispatch() == ["report[0]"]
    h.run("report")
    assert h.job.state is JobState.FAILED and h.job.reason == "task_failed: work"


def test_a_job_retry_keeps_a_finished_dependent_that_succeeded() -> None:
    h = Harness(
        task_def("work", on_failure="continue"),
        task_def("report", depends_on=("work",), conditions={"work": "finished"}),
    )
    h.dispatch()
    h.run("work", outcome=FAIL)
    h.dispatch()
    h.run("report")
    assert h.job.reason == "task_failed: work"  # and FAILED
    h.engine.retry_job(h.job)
    assert h.states() == {"work": TaskState.READY, "report": TaskState.SUCCEEDED}
    assert h.dispatch() == ["work[0]"]  # the dependency only: the report is kept
    h.run("work")
    assert h.states() == {"work": TaskState.SUCCEEDED, "report": TaskState.SUCCEEDED}
    assert h.job.state is JobState.SUCCEEDED
    assert h.inst("report").attempt == 1 and h.dispatch() == []


def test_finished_runs_after_a_skipped_dependency() -> None:
    h = Harness(
        task_def("a", on_failure="continue"),
        task_def("b", depends_on=("a",)),
        task_def("cleanup", depends_on=("b",), conditions={"b": "finished"}),
    )
    h.dispatch()
    h.run("a", outcome=FAIL)
    assert h.states()["b"] is TaskState.SKIPPED
    assert h.states()["cleanup"] is TaskState.READY


def test_a_fail_job_failure_elsewhere_cancels_a_finished_dependent() -> None:
    h = Harness(
        task_def("a"),  # fail_job
        task_def("slow", on_failure="continue"),
        task_def("cleanup", depends_on=("slow",), conditions={"slow": "finished"}),
    )
    assert h.dispatch() == ["a[0]", "slow[0]"]
    to_stop = h.run("a", outcome=FAIL)
    assert [i.task.name for i in to_stop] == ["slow"]
    h.engine.instance_finished(h.inst("slow"), Outcome(signal=15))
    assert h.states()["cleanup"] is TaskState.CANCELLED
    assert h.job.state is JobState.FAILED


def test_partly_succeeded_needs_one_success() -> None:
    conditions = {"a": "partly_succeeded"}
    h = Harness(
        task_def("a", instances=3, on_failure="continue"),
        task_def("b", depends_on=("a",), conditions=conditions),  # type: ignore[arg-type]
    )
    h.dispatch()
    h.run("a", 0, FAIL)
    h.run("a", 1, SUCCESS)
    assert h.states()["b"] is TaskState.PENDING  # a has not ended
    h.run("a", 2, FAIL)
    assert h.states() == {"a": TaskState.FAILED, "b": TaskState.READY}

    none = Harness(
        task_def("a", instances=2, on_failure="continue"),
        task_def("b", depends_on=("a",), conditions=conditions),  # type: ignore[arg-type]
    )
    none.dispatch()
    none.run("a", 0, FAIL)
    none.run("a", 1, FAIL)
    assert none.states()["b"] is TaskState.SKIPPED
    assert none.job.state is JobState.FAILED


def test_by_index_starts_each_index_as_its_counterpart_succeeds() -> None:
    h = Harness(
        task_def("a", instances=3),
        task_def("b", instances=3, depends_on=("a",), by_index=("a",)),
        slots=10,
    )
    assert h.dispatch() == ["a[0]", "a[1]", "a[2]"]
    assert h.states()["b"] is TaskState.PENDING
    h.run("a", 1)
    assert h.states()["b"] is TaskState.READY
    assert h.dispatch() == ["b[1]"]  # while a[0] and a[2] still run
    h.run("b", 1)
    h.run("a", 2)
    h.run("a", 0)
    assert h.dispatch() == ["b[2]", "b[0]"]  # in the order their counterparts succeeded
    h.run("b", 2)
    h.run("b", 0)
    assert h.job.state is JobState.SUCCEEDED


def test_by_index_cancels_the_indices_whose_counterpart_failed() -> None:
    h = Harness(
        task_def("a", instances=3, on_failure="continue"),
        task_def("b", instances=3, depends_on=("a",), by_index=("a",)),
        slots=10,
    )
    h.dispatch()
    h.run("a", 0)
    h.run("a", 1, FAIL)
    assert h.dispatch() == ["b[0]"]
    h.run("a", 2)
    h.run("b", 0)
    assert h.dispatch() == ["b[2]"]
    h.run("b", 2)
    b1 = h.inst("b", 1)
    assert (b1.state, b1.reason) == (InstanceState.CANCELLED, "upstream_failed: a[1]")
    assert h.states() == {"a": TaskState.FAILED, "b": TaskState.CANCELLED}
    assert h.job.tasks["b"].reason == "upstream_failed: a[1]"
    assert h.job.state is JobState.FAILED


def test_by_index_of_a_task_without_any_success_is_skipped() -> None:
    h = Harness(
        task_def("a", instances=2, on_failure="continue"),
        task_def("b", instances=2, depends_on=("a",), by_index=("a",)),
        task_def("c", depends_on=("b",), conditions={"b": "finished"}),
    )
    h.dispatch()
    h.run("a", 0, FAIL)
    h.run("a", 1, FAIL)
    assert h.states() == {"a": TaskState.FAILED, "b": TaskState.SKIPPED, "c": TaskState.READY}


def test_a_retry_waits_out_its_backoff() -> None:
    now = [100.0]
    engine = Engine({"local": 4}, clock=lambda: now[0])
    backoff = BackoffDef(delay_s=5.0, factor=3.0, max_delay_s=20.0)
    defn = JobDef(name="job", tasks=(task_def("t", retry_limit=3, retry_backoff=backoff),))
    job = JobRec("j1", defn, 1, 0.0)
    engine.add_job(job)
    waits = []
    for _ in range(3):
        (inst,) = engine.dispatch()
        engine.instance_running(inst, pid=1)
        engine.instance_exited(inst, FAIL)
        engine.instance_finished(inst, FAIL)
        assert (inst.state, inst.reason) == (InstanceState.PENDING, BACKOFF)
        assert inst.not_before is not None
        waits.append(inst.not_before - now[0])
        assert engine.dispatch() == []
        assert engine.next_release() == inst.not_before
        assert engine.waiting_reason(job.tasks["t"]) == BACKOFF
        now[0] = inst.not_before - 0.001
        engine.release_due()
        assert engine.dispatch() == []
        now[0] = inst.not_before
        engine.release_due()
    assert waits == [5.0, 15.0, 20.0]  # 5, 5*3, then the cap
    (inst,) = engine.dispatch()
    engine.instance_running(inst, pid=1)
    engine.instance_exited(inst, SUCCESS)
    engine.instance_finished(inst, SUCCESS)
    assert job.state is JobState.SUCCEEDED
    events = [e for e in engine.drain() if getattr(e, "reason", None) == BACKOFF]
    assert [getattr(e, "not_before", None) for e in events] == [105.0, 120.0, 140.0]


def test_a_backoff_survives_a_restart() -> None:
    backoff = BackoffDef(delay_s=60.0, factor=2.0)
    defn = JobDef(name="job", tasks=(task_def("t", retry_limit=1, retry_backoff=backoff),))
    row = JobRow("j1", 1, defn, JobState.RUNNING, None, None, 0.0, 1.0, None)
    waiting = InstanceRow(
        "t", 0, 2, InstanceState.PENDING, BACKOFF, 1, None, None, 1.0, None, 1.0, 0, 0, None,
        not_before=160.0,
    )  # fmt: skip
    job, lost = restore_job(row, {"t": ("RUNNING", None)}, [waiting])
    now = [150.0]
    engine = Engine({"local": 1}, clock=lambda: now[0])
    assert engine.recover_job(job, lost) == [] and lost == []
    assert engine.dispatch() == []
    assert engine.next_release() == 160.0
    now[0] = 160.0
    engine.release_due()
    (inst,) = engine.dispatch()
    assert (inst.index, inst.attempt, inst.not_before) == (0, 2, None)


def test_retry_on_reasons_retries_only_what_it_names() -> None:
    h = Harness(task_def("t", instances=2, retry_limit=1, retry_reasons=("timeout",)))
    h.dispatch()
    h.run("t", 0, TIMEOUT)
    assert h.inst("t", 0).state is InstanceState.PENDING
    h.run("t", 1, FAIL)
    assert h.inst("t", 1).state is InstanceState.FAILED
