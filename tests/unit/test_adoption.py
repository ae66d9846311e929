"""Which attempts found after a restart are taken over, which are removed, which are kept."""

from __future__ import annotations

from aiobatch.attempt import FoundAttempt
from aiobatch.model import InstanceRec, JobRec
from aiobatch.recovery import claimable, is_orphan, take_over
from aiobatch.spec import resolve_spec
from aiobatch.states import InstanceState, JobState


def job(keep_failed: bool = False) -> JobRec:
    spec = {
        "name": "j",
        "tasks": [{"name": "t", "image": "img", "instances": 3, "keep_failed": keep_failed}],
    }
    return JobRec(
        "j1", resolve_spec(spec, compute_envs={"local": "local", "docker": "docker"}), 1, 0.0
    )


def found(index: int, attempt: int = 1, job_id: str = "j1", task: str = "t") -> FoundAttempt:
    return FoundAttempt(job_id, task, index, attempt, handle=f"host c{index}")


def test_active_instances_with_their_attempt_there_are_taken_over() -> None:
    rec = job()
    task = rec.tasks["t"]
    running, uploading, other_attempt = task.record(0), task.record(1), task.record(2)
    running.state, uploading.state = InstanceState.RUNNING, InstanceState.UPLOADING
    other_attempt.state, other_attempt.attempt = InstanceState.STAGING, 2
    there = {("j1", "t", i, 1): found(i) for i in range(3)}
    adopted, lost = take_over(rec, [running, uploading, other_attempt], there)
    # The one that was uploading ended; its executor knows how, so its uploads run again.
    handles = [(inst.index, hit and hit.handle) for inst, hit in adopted]
    assert handles == [(0, "host c0"), (1, "host c1")]
    assert lost == [other_attempt]  # a different attempt
    assert set(there) == {("j1", "t", 2, 1)}  # left for is_orphan
    # Uploading with nothing found: its end is stored, so it uploads again all the same.
    rec = job()
    uploading = rec.tasks["t"].record(0)
    uploading.state = InstanceState.UPLOADING
    assert take_over(rec, [uploading], {}) == ([(uploading, None)], [])


def test_orphans_are_removed_but_kept_failures_and_ended_jobs_stay() -> None:
    plain, keeping = job(), job(keep_failed=True)
    for rec in (plain, keeping):
        failed = rec.tasks["t"].record(0)
        failed.state, failed.attempt = InstanceState.FAILED, 2
    recovered = {"j1": plain}
    assert is_orphan(found(0, attempt=2), recovered)
    assert is_orphan(found(1), recovered)  # an instance that never started
    assert is_orphan(found(0, task="gone"), recovered)
    assert is_orphan(found(0, job_id=""), recovered)  # labels that name nothing
    assert not is_orphan(found(0, job_id="ended"), recovered)  # not ours to judge
    recovered = {"j1": keeping}
    assert not is_orphan(found(0, attempt=2), recovered)  # keep_failed: kept
    assert not is_orphan(found(0, attempt=1), recovered)  # an earlier failed attempt, kept
    assert is_orphan(found(1), recovered)


def as_left_by_a_crash(state: JobState = JobState.RUNNING) -> tuple[JobRec, list[InstanceRec]]:
    """Instance 0 ran its second attempt, 1 waits for its third, 2 never started."""
    rec = job()
    rec.state = state
    task = rec.tasks["t"]
    running, waiting = task.record(0), task.record(1)
    running.state, running.attempt = InstanceState.RUNNING, 2
    waiting.state, waiting.attempt = InstanceState.PENDING, 3
    return rec, [running]


def test_claimable_attempts_are_those_take_over_would_adopt_and_asking_changes_nothing() -> None:
    """After a restart, time spent on an attempt's record still to come goes to those an
    instance may claim: exactly those take_over adopts."""
    keys = [("j1", "t", i, a) for i in range(3) for a in range(1, 5)]
    keys += [("j1", "gone", 0, 1), ("other", "t", 0, 2), ("j1", "t", 3, 1)]
    for state in (JobState.RUNNING, JobState.FAILED):
        rec, active = as_left_by_a_crash(state)
        claimed = claimable([(rec, active)])
        expected = {key for key in keys if claimed(key)}
        assert rec.tasks["t"].instances[2] is None and rec.tasks["t"].fresh == 1  # unchanged
        for key in keys:
            again, lost = as_left_by_a_crash(state)
            adopted, _ = take_over(again, lost, {key: found(key[2], key[3], key[0], key[1])})
            assert bool(adopted) == (key in expected), key
        if state is JobState.RUNNING:
            assert expected == {("j1", "t", 0, 2), ("j1", "t", 1, 3), ("j1", "t", 2, 1)}
        else:  # an ended job starts nothing: only what ran when it ended
            assert expected == {("j1", "t", 0, 2)}
