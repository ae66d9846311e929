"""Webhooks with real components: a receiver on loopback (aiohttp), real runtimes and SQLite
files, and a real ``aiobatch serve`` killed with SIGKILL while deliveries are pending."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from aiobatch import Runtime
from aiobatch.config import Config
from aiobatch.errors import ConfigError
from aiobatch.events import JobStateChanged, JobSubmitted, event_encoder
from aiobatch.notifications import notify_type
from aiobatch.notify_delivery import Notifier
from aiobatch.notify_store import NotifyStore
from aiobatch.notify_types import NotifyEvent, NotifySpec
from aiobatch.schema import SCHEMA
from aiobatch.spec import resolve_spec
from aiobatch.states import JobState
from aiobatch.store import Store
from tests.integration.schemas import schema_as_of
from tests.integration.service import Service

pytestmark = pytest.mark.anyio


@dataclass
class Arrival:
    at: float  # monotonic, when the receiver got it
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what it answered

    @property
    def delivery(self) -> str:
        return self.headers["X-Aiobatch-Delivery"]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers ``answer(path, n,
    type)`` to the n-th try (1, 2, ...) of a delivery of that type (X-Aiobatch-Event); a
    path in ``held`` waits for its release before it answers."""

    def __init__(self, answer: Callable[[str, int, str], int] = lambda *_: 204) -> None:
        self.answer = answer
        self.arrivals: list[Arrival] = []
        self.held: dict[str, anyio.Event] = {}
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        for release in self.held.values():
            release.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = request.headers.get("X-Aiobatch-Delivery")
        tries = 1 + sum(
            1 for a in self.arrivals if a.headers.get("X-Aiobatch-Delivery") == delivery
        )
        status = self.answer(request.path, tries, request.headers.get("X-Aiobatch-Event", ""))
        arrival = Arrival(time.monotonic(), request.path, dict(request.headers), body, status)
        self.arrivals.append(arrival)
        self._changed.set()
        self._changed = anyio.Event()
        release = self.held.get(request.path)
        if release is not None:
            await release.wait()
        return web.Response(status=status)

    def taken(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path and 200 <= a.status < 300]

    def tries(self, path: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path]

    async def wait_for(self, predicate: Callable[[], bool], limit_s: float = 30) -> None:
        """Until ``predicate()`` holds, woken by each request (the limit is a safety net)."""
        with anyio.fail_after(limit_s):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()


def signed(arrival: Arrival, secret: str) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), arrival.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(arrival.headers["X-Aiobatch-Signature"], expected)


class GivenUps:
    """The deliveries a runtime's notifier gave up, from the job's history."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def of(self, job_id: str) -> list[tuple[str, int, str]]:
        """(type, tries, error) of each, in the order given up."""
        events = [msgspec.to_builtins(e.event) for e in await self.rt.job_history(job_id)]
        return [
            (e["notification"], e["tries"], e["error"])
            for e in events
            if e["type"] == "NotificationFailed"
        ]


@asynccontextmanager
async def notifying(
    state_dir: Path, config: Config | None = None
) -> AsyncIterator[tuple[Runtime, Notifier, GivenUps]]:
    """A runtime with its notifier, and the deliveries it gave up."""
    config = config or Config()
    async with Runtime(state_dir, config=config) as rt:
        yield rt, vars(rt)["_notifier"], GivenUps(rt)


def notify_rows(state_dir: Path, job_id: str) -> tuple[list[Any], list[Any], int | None]:
    """The job's delivery rows, and the seq of its last event."""
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        jobs = db.execute("SELECT seq FROM notify_jobs WHERE job_id = ?", (job_id,)).fetchall()
        lanes = db.execute("SELECT * FROM notify_lanes WHERE job_id = ?", (job_id,)).fetchall()
        (last,) = db.execute("SELECT MAX(seq) FROM events WHERE job_id = ?", (job_id,)).fetchone()
    db.close()
    return jobs, lanes, last


async def test_each_event_reaches_each_target_once_signed_in_order(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "config-secret")
    key_file = tmp_path / "job.key"
    key_file.write_text("job-secret\n")  # as `echo` writes it: the newline is no part of it
    async with Receiver() as receiver:
        config = Config(
            notifications=(
                NotifySpec(
                    url=f"{receiver.base}/all",
                    events=("instance_failed", "task_failed", "job_failed", "job_succeeded"),
                    secret="env:HOOK_KEY",
                ),
            )
        )
        spec = {
            "name": "hooked",
            "notify": [
                {
                    "url": f"{receiver.base}/mine",
                    "events": ["task_succeeded", "job_failed"],
                    "secret": f"file:{key_file}",
                }
            ],
            "tasks": [
                {"name": "a", "instances": 2, "command": "true"},
                {"name": "b", "depends_on": ["a"], "command": "exit 3"},
            ],
        }
        async with notifying(state_dir, config) as (rt, notifier, given_up):
            job = await rt.submit(spec)
            await job.wait_for_completion()
            await receiver.wait_for(
                lambda: len(receiver.taken("/all")) == 3 and len(receiver.taken("/mine")) == 2
            )
            history = {entry.seq: entry.event for entry in await rt.job_history(job.id)}
            await notifier.settled()
            assert (notifier.delivered, notifier.failed, notifier.retried) == (5, 0, 0)
            assert await given_up.of(job.id) == []
        assert await_state(state_dir, job.id) == "FAILED"
    # Nothing more came, nothing was tried twice, and nothing is left to deliver.
    assert [a.status for a in receiver.arrivals] == [204] * 5
    for path, secret, types in (
        ("/all", "config-secret", ["instance_failed", "task_failed", "job_failed"]),
        ("/mine", "job-secret", ["task_succeeded", "job_failed"]),
    ):
        arrivals = receiver.taken(path)
        assert [a.json["type"] for a in arrivals] == types
        assert [a.headers["X-Aiobatch-Event"] for a in arrivals] == types
        assert all(signed(a, secret) for a in arrivals)
        assert not any(signed(a, "config-secret" if secret == "job-secret" else "job-secret")
                       for a in arrivals)  # fmt: skip
        seqs = [a.json["seq"] for a in arrivals]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # in order, once each
        for a in arrivals:
            body = a.json
            assert (body["job_id"], body["job_name"], body["delivery"]) == (
                job.id,
                "hooked",
                a.delivery,
            )
            assert a.headers["Content-Type"] == "application/json"
            # The event as the events API encodes it, and as the job's history holds it.
            assert body["event"] == json.loads(event_encoder.encode(history[body["seq"]]))
    failed_task = receiver.taken("/all")[1].json["event"]
    assert (failed_task["task"], failed_task["state"], failed_task["reason"]) == (
        "b",
        "FAILED",
        "exit_code: 3",
    )
    assert len({a.delivery for a in receiver.arrivals}) == 5
    jobs, lanes, last = notify_rows(state_dir, job.id)
    assert (jobs, lanes) == ([(last,)], [])


def await_state(state_dir: Path, job_id: str) -> str:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    db.close()
    return str(state)


async def test_many_jobs_at_once_each_event_once_and_in_order(state_dir: Path) -> None:
    async with Receiver() as receiver:
        events: tuple[NotifyEvent, ...] = (
            "instance_succeeded",
            "task_succeeded",
            "job_running",
            "job_succeeded",
        )
        config = Config(notifications=(NotifySpec(url=f"{receiver.base}/busy", events=events),))
        spec = {
            "name": "busy",
            "tasks": [
                {"name": "a", "instances": 3, "command": "true"},
                {"name": "b", "depends_on": ["a"], "instances": 2, "command": "true"},
            ],
        }
        async with notifying(state_dir, config) as (rt, notifier, _):
            jobs = [await rt.submit(spec) for _ in range(20)]
            for job in jobs:
                await job.wait_for_success()
            # Per job: running, 5 instances, 2 tasks, succeeded.
            await receiver.wait_for(lambda: len(receiver.taken("/busy")) == 20 * 9)
            await notifier.settled()
            histories = {job.id: await rt.job_history(job.id) for job in jobs}
    assert len({a.delivery for a in receiver.arrivals}) == len(receiver.arrivals) == 20 * 9
    for job_id, history in histories.items():
        got = [a.json for a in receiver.arrivals if a.json["job_id"] == job_id]
        wanted = [
            entry.seq for entry in history if notify_type(entry.event) in events
        ]  # every event it wanted, once each, in the history's order
        assert [body["seq"] for body in got] == wanted
        assert [body["type"] for body in got][0::8] == ["job_running", "job_succeeded"]


async def test_a_receiver_failing_its_first_tries_gets_the_event_after_the_backoff(
    state_dir: Path,
) -> None:
    async with Receiver(lambda path, n, kind: 503 if n <= 2 else 204) as receiver:
        spec = {
            "name": "flaky",
            "notify": [
                {
                    "url": f"{receiver.base}/flaky",
                    "events": ["job_succeeded"],
                    "tries": 4,
                    "backoff": "200ms",
                }
            ],
            "tasks": [{"name": "a", "command": "true"}],
        }
        async with notifying(state_dir) as (rt, notifier, given_up):
            job = await rt.submit(spec)
            await job.wait_for_success()  # the receiver's failures are no part of the job's
            await receiver.wait_for(lambda: len(receiver.taken("/flaky")) == 1)
            await notifier.settled()
            assert (notifier.delivered, notifier.retried, notifier.failed) == (1, 2, 0)
            assert await given_up.of(job.id) == []
    tries = receiver.tries("/flaky")
    assert [a.status for a in tries] == [503, 503, 204]
    assert len({a.delivery for a in tries}) == 1  # the same delivery, for the receiver to dedupe
    assert len({a.body for a in tries}) == 1
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(tries)]
    assert gaps[0] >= 0.2 * 0.99 and gaps[1] >= 0.4 * 0.99, gaps  # doubling from `backoff`
    assert notify_rows(state_dir, job.id)[1] == []


async def test_a_delivery_given_up_is_logged_and_counted_and_the_job_stays_as_it_ended(
    state_dir: Path,
) -> None:
    async with Receiver(lambda *_: 500) as receiver:
        spec = {
            "name": "unheard",
            "notify": [
                {
                    "url": f"{receiver.base}/down",
                    "events": ["task_succeeded", "job_succeeded"],
                    "tries": 2,
                    "backoff": "50ms",
                }
            ],
            "tasks": [{"name": "a", "command": "true"}],
        }
        with capture_logs() as logs:
            async with notifying(state_dir) as (rt, notifier, given_up):
                job = await rt.submit(spec)
                await job.wait_for_success()
                # Both are given up, in order: the second is tried only after the first.
                await receiver.wait_for(lambda: len(receiver.tries("/down")) == 4)
                await notifier.settled()
                assert await job.get_state() is JobState.SUCCEEDED
                assert await given_up.of(job.id) == [
                    ("task_succeeded", 2, "HTTP 500"),
                    ("job_succeeded", 2, "HTTP 500"),
                ]
    assert (notifier.delivered, notifier.retried, notifier.failed) == (0, 2, 2)
    assert [a.json["type"] for a in receiver.tries("/down")] == ["task_succeeded"] * 2 + [
        "job_succeeded"
    ] * 2
    failures = [entry for entry in logs if entry["event"] == "notification_failed"]
    assert [(e["job_id"], e["type"], e["tries"], e["error"], e["log_level"]) for e in failures] == [
        (job.id, "task_succeeded", 2, "HTTP 500", "error"),
        (job.id, "job_succeeded", 2, "HTTP 500", "error"),
    ]
    assert await_state(state_dir, job.id) == "SUCCEEDED"
    assert notify_rows(state_dir, job.id)[1] == []


async def test_no_unsigned_body_leaves_and_a_slow_receiver_times_out(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSET_HOOK_KEY", raising=False)
    async with Receiver() as receiver:
        receiver.held["/slow"] = anyio.Event()
        spec = {
            "name": "guarded",
            "notify": [
                {
                    "url": f"{receiver.base}/unsigned",
                    "events": ["job_succeeded"],
                    "secret": "env:UNSET_HOOK_KEY",
                    "tries": 2,
                    "backoff": "10ms",
                },
                {"url": f"{receiver.base}/slow", "events": ["job_succeeded"], "tries": 1,
                 "timeout": "200ms"},
            ],
            "tasks": [{"name": "a", "command": "true"}],
        }  # fmt: skip
        async with notifying(state_dir) as (rt, notifier, given_up):
            job = await rt.submit(spec)
            await job.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.tries("/slow")) == 1)
            with anyio.fail_after(10):  # the held request ends at its 200 ms timeout
                await notifier.settled()
            assert sorted(await given_up.of(job.id)) == [
                ("job_succeeded", 1, "TimeoutError"),
                (
                    "job_succeeded",
                    2,
                    "secret_unavailable: env:UNSET_HOOK_KEY: not set in the runtime's environment",
                ),
            ]
    assert receiver.tries("/unsigned") == []  # a target with a secret gets signed bodies only


async def test_a_receiver_that_hangs_holds_up_no_other_target_or_job(state_dir: Path) -> None:
    async with Receiver() as receiver:
        receiver.held["/hangs"] = anyio.Event()

        def job(name: str, *paths: str) -> dict[str, Any]:
            target = {"events": ["task_succeeded", "job_succeeded"], "timeout": "60s"}
            return {
                "name": name,
                "notify": [{**target, "url": f"{receiver.base}{path}"} for path in paths],
                "tasks": [{"name": "a", "command": "true"}],
            }

        async with notifying(state_dir) as (rt, _, _):
            stuck = await rt.submit(job("stuck", "/hangs", "/beside"))
            await receiver.wait_for(lambda: len(receiver.tries("/hangs")) == 1)
            # The job's other target goes on, past the event the first one holds.
            await receiver.wait_for(lambda: len(receiver.taken("/beside")) == 2)
            free = await rt.submit(job("free", "/answers"))
            await free.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.taken("/answers")) == 2)
            assert len(receiver.tries("/hangs")) == 1  # its lane waits for the answer
            receiver.held["/hangs"].set()
            await receiver.wait_for(lambda: len(receiver.taken("/hangs")) == 2)
            assert await stuck.get_state() is JobState.SUCCEEDED
    assert [a.json["type"] for a in receiver.tries("/hangs")] == ["task_succeeded", "job_succeeded"]
    assert {a.json["job_id"] for a in receiver.tries("/answers")} == {free.id}
    assert [a.json["type"] for a in receiver.tries("/beside")] == [
        "task_succeeded",
        "job_succeeded",
    ]


async def test_pending_deliveries_and_their_tries_outlive_the_runtime(state_dir: Path) -> None:
    """Closed with a delivery being retried and one behind it: after it reopens, the first
    has what is left of its tries (its third and last, failed), the second is delivered. A
    second target that took both before is not sent them again."""
    reopened = False

    def answer(path: str, n: int, kind: str) -> int:
        # At /later task_succeeded always fails; job_succeeded is taken once reopened.
        return 204 if path == "/steady" or (reopened and kind == "job_succeeded") else 503

    async with Receiver(answer) as receiver:
        steady = NotifySpec(
            url=f"{receiver.base}/steady", events=("task_succeeded", "job_succeeded")
        )
        config = Config(notifications=(steady,))
        spec = {
            "name": "later",
            "notify": [
                {
                    "url": f"{receiver.base}/later",
                    "events": ["task_succeeded", "job_succeeded"],
                    "tries": 3,
                    "backoff": "1s",  # the third try would come 2 s after the second
                }
            ],
            "tasks": [{"name": "a", "command": "true"}],
        }
        async with notifying(state_dir, config) as (rt, _, _):
            job = await rt.submit(spec)
            await job.wait_for_success()
            await receiver.wait_for(
                lambda: len(receiver.tries("/later")) == 2 and len(receiver.taken("/steady")) == 2
            )
        first = receiver.tries("/later")[0]
        last_seq = receiver.taken("/steady")[1].json["seq"]
        _, lanes, _ = notify_rows(state_dir, job.id)
        # Where each target stands: /later before its first event with 2 of its tries spent,
        # /steady done with both.
        assert sorted((lane[1], lane[2] < first.json["seq"], lane[3]) for lane in lanes) == [
            (f"config:{receiver.base}/steady", False, 0),
            ("job:0", True, 2),
        ]
        assert max(lane[2] for lane in lanes) == last_seq
        reopened = True
        async with notifying(state_dir, config) as (rt, notifier, given_up):
            await receiver.wait_for(lambda: len(receiver.taken("/later")) == 1)
            await notifier.settled()
            assert (notifier.delivered, notifier.failed, notifier.retried) == (1, 1, 0)
            assert await given_up.of(job.id) == [("task_succeeded", 3, "HTTP 503")]
    tries = receiver.tries("/later")
    assert [(a.json["type"], a.status) for a in tries] == [
        ("task_succeeded", 503),
        ("task_succeeded", 503),
        ("task_succeeded", 503),
        ("job_succeeded", 204),
    ]
    assert tries[2].delivery == first.delivery and tries[2].body == first.body
    assert [a.json["type"] for a in receiver.tries("/steady")] == [
        "task_succeeded",
        "job_succeeded",
    ]
    jobs, lanes, last = notify_rows(state_dir, job.id)
    assert (jobs, lanes) == ([(last,)], [])


async def test_events_stored_before_any_notifier_heard_of_them_are_delivered(
    state_dir: Path,
) -> None:
    """As after a crash between a commit and the notifier's first look at the job."""
    async with Receiver() as receiver:
        defn = resolve_spec(
            {
                "name": "unseen",
                "notify": [{"url": f"{receiver.base}/unseen", "events": ["job_failed"]}],
                "tasks": [{"name": "a", "command": "true"}],
            }
        )
        store = Store(state_dir / "aiobatch.db")  # it makes its folder
        await store.open()
        try:
            store.add_job(JobSubmitted(job_id="j1", name="unseen", ts=1.0), 1, defn)
            store.on_event(JobStateChanged(job_id="j1", state="RUNNING", reason=None, ts=2.0))
            store.on_event(JobStateChanged(job_id="j1", state="FAILED", reason="x", ts=3.0))
            await store.flush()
            notifier = Notifier(store=store, targets=())
            async with anyio.create_task_group() as group:
                await group.start(notifier.run)
                await receiver.wait_for(lambda: len(receiver.taken("/unseen")) == 1)
                group.cancel_scope.cancel()
        finally:
            await store.close()
    body = receiver.taken("/unseen")[0].json
    assert (body["job_id"], body["type"], body["event"]["reason"]) == ("j1", "job_failed", "x")


async def test_a_database_from_before_notifications_never_delivers_its_history(
    tmp_path: Path,
) -> None:
    v3 = schema_as_of(3)
    assert v3 != SCHEMA
    path = tmp_path / "db.sqlite"
    stored = msgspec.json.encode(
        resolve_spec({"name": "j", "tasks": [{"name": "a", "command": "true"}]})
    )
    with sqlite3.connect(path) as db:
        db.executescript(v3 + "INSERT INTO schema_version VALUES (3);")
        db.execute(
            "INSERT INTO jobs VALUES ('old', 1, 'j', 0, ?, 'FAILED', NULL, NULL, NULL, "
            "1.0, 1.0, 2.0)",
            (stored,),
        )
        for ts, state in ((1.0, "RUNNING"), (2.0, "FAILED")):
            event = JobStateChanged(job_id="old", state=state, reason=None, ts=ts)
            db.execute(
                "INSERT INTO events (job_id, body) VALUES ('old', ?)",
                (event_encoder.encode(event),),
            )
    db.close()
    store = Store(path)
    await store.open()
    try:
        assert await NotifyStore(store).pending_jobs() == []
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM notify_jobs").fetchall() == [("old", 2)]
    db.close()


async def test_deleting_a_job_deletes_where_its_deliveries_stand(state_dir: Path) -> None:
    async with Receiver(lambda *_: 503) as receiver:
        spec = {
            "name": "gone",
            "notify": [{"url": f"{receiver.base}/gone", "events": ["job_succeeded"]}],
            "tasks": [{"name": "a", "command": "true"}],
        }
        async with notifying(state_dir) as (rt, _, _):
            job = await rt.submit(spec)
            await job.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.tries("/gone")) == 1)
            assert notify_rows(state_dir, job.id)[0] != []
            await rt.delete_job(job.id)
        assert notify_rows(state_dir, job.id) == ([], [], None)


async def test_a_service_killed_with_deliveries_pending_delivers_them_after_restart(
    service: Service,
) -> None:
    failing = True
    async with Receiver(lambda *_: 503 if failing else 204) as receiver:
        service.config.write_text(
            f'[[notifications]]\nurl = "{receiver.base}/svc"\n'
            'events = ["task_succeeded", "job_succeeded"]\n'
            'secret = "env:HOOK_KEY"\ntries = 20\nbackoff = "100ms"\n'
        )
        await service.start(HOOK_KEY="service-secret")
        async with service.client() as client:
            job = await client.submit({"name": "svc", "tasks": [{"name": "a", "command": "true"}]})
            await job.wait_for_success()
        # The first event is being retried; the second waits behind it, never tried.
        await receiver.wait_for(lambda: len(receiver.tries("/svc")) >= 2)
        await service.kill()
        before = list(receiver.arrivals)
        assert {a.json["type"] for a in before} == {"task_succeeded"}
        failing = False
        await service.start(HOOK_KEY="service-secret")
        await receiver.wait_for(lambda: len(receiver.taken("/svc")) == 2)
        async with service.client() as client:
            assert await (await client.get_job(job.id)).get_state() is JobState.SUCCEEDED
    taken = receiver.taken("/svc")
    assert [a.json["type"] for a in taken] == ["task_succeeded", "job_succeeded"]
    assert taken[0].delivery == before[0].delivery  # the same delivery, resumed
    assert all(signed(a, "service-secret") for a in receiver.arrivals)


def targets_at(receiver: Receiver, *paths: str, **fields: Any) -> Config:
    """A config whose targets are the receiver's ``paths``, for jobs' starts and ends."""
    events: tuple[NotifyEvent, ...] = ("job_running", "job_succeeded")
    return Config(
        notifications=tuple(
            NotifySpec(url=f"{receiver.base}{path}", events=events, **fields) for path in paths
        )
    )


async def test_targets_read_again_take_the_events_that_come_next_of_every_job(
    state_dir: Path,
) -> None:
    """The config's targets re-read (what SIGHUP does): those removed get nothing more,
    not even a delivery under way; one added gets what comes next, of a job already
    running too, and none of what came before, though a removed target had held the job's
    delivery back; a config whose targets are not valid changes nothing."""
    async with Receiver() as receiver:
        receiver.held["/slow"] = slow = anyio.Event()
        gate = state_dir.parent / "gate"
        os.mkfifo(gate)
        waiting = {"name": "waiting", "tasks": [{"name": "t", "command": f"cat {gate}"}]}
        config = targets_at(receiver, "/old", "/slow")
        async with notifying(state_dir, config) as (rt, notifier, _):
            running = await rt.submit(waiting)
            await receiver.wait_for(
                lambda: len(receiver.taken("/old")) == 1 and len(receiver.tries("/slow")) == 1
            )
            with pytest.raises(ConfigError):
                await rt.reload_notifications(targets_at(receiver, "not a url"))
            await rt.reload_notifications(targets_at(receiver, "/new"))
            slow.set()
            await anyio.to_thread.run_sync(gate.write_text, "go\n")  # once it reads
            await running.wait_for_success()
            last = await rt.submit({"name": "true", "tasks": [{"name": "t", "command": "true"}]})
            await last.wait_for_success()
            await notifier.settled()
    old = [(a.json["job_id"], a.json["type"]) for a in receiver.taken("/old")]
    assert old == [(running.id, "job_running")]
    assert len(receiver.tries("/slow")) == 1  # its delivery was under way: not tried again
    new = sorted((a.json["job_id"], a.json["type"]) for a in receiver.taken("/new"))
    assert new == sorted(
        [(running.id, "job_succeeded"), (last.id, "job_running"), (last.id, "job_succeeded")]
    )


async def test_a_target_read_again_without_one_failing_drops_its_retries(
    state_dir: Path,
) -> None:
    """A target that fails, its deliveries waiting out their backoff, is removed: it is
    tried no more, and the deliveries settle without it (not after its last try)."""
    async with Receiver(lambda path, *_: 503 if path == "/failing" else 204) as receiver:
        config = targets_at(receiver, "/failing", "/steady", tries=20, backoff="100ms")
        async with notifying(state_dir, config) as (rt, notifier, _):
            job = await rt.submit({"name": "one", "tasks": [{"name": "t", "command": "true"}]})
            await receiver.wait_for(lambda: len(receiver.tries("/failing")) >= 2)
            await rt.reload_notifications(targets_at(receiver, "/steady"))
            tried = len(receiver.tries("/failing"))
            later = await rt.submit({"name": "two", "tasks": [{"name": "t", "command": "true"}]})
            await later.wait_for_success()
            with anyio.fail_after(20):  # its 20 tries would take minutes
                await notifier.settled()
            assert len(receiver.tries("/failing")) == tried
    steady = {(a.json["job_id"], a.json["type"]) for a in receiver.taken("/steady")}
    assert {(job.id, "job_succeeded"), (later.id, "job_succeeded")} <= steady


async def test_sighup_has_a_service_take_its_configs_targets_unless_they_are_not_valid(
    service: Service,
) -> None:
    """``systemctl reload``: the service says it reloads and when it is done; a config
    whose targets are not valid changes nothing, a valid one changes them."""
    true = {"name": "true", "tasks": [{"name": "t", "command": "true"}]}

    def targets(url: str) -> str:
        return f'[[notifications]]\nurl = "{url}"\nevents = ["job_succeeded"]\n'

    async def hang_up() -> None:
        assert service.process is not None
        service.process.send_signal(signal.SIGHUP)
        assert (await service.message()).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert await service.message() == "READY=1"

    async with Receiver() as receiver:
        service.config.write_text(targets(f"{receiver.base}/a"))
        await service.start()
        async with service.client() as client:
            service.config.write_text(targets("not a url"))
            await hang_up()
            kept = await client.submit(true)
            await kept.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.taken("/a")) == 1)
            service.config.write_text(targets(f"{receiver.base}/b"))
            await hang_up()
            moved = await client.submit(true)
            await moved.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.taken("/b")) == 1)
            assert (await client.health())["status"] == "ok"  # still serving
    assert [a.json["job_id"] for a in receiver.taken("/a")] == [kept.id]
    assert [a.json["job_id"] for a in receiver.taken("/b")] == [moved.id]


async def test_a_slow_target_holds_back_none_of_the_jobs_next_events_to_another(
    state_dir: Path,
) -> None:
    """One target of a job takes its time to answer (a receiver stalled): another target
    of the same job is sent the job's next events meanwhile, not after the slow one."""
    async with Receiver() as receiver:
        receiver.held["/slow"] = slow = anyio.Event()
        gate = state_dir.parent / "gate"
        os.mkfifo(gate)
        waiting = {"name": "waiting", "tasks": [{"name": "t", "command": f"cat {gate}"}]}
        async with notifying(state_dir, targets_at(receiver, "/slow", "/fast")) as (rt, n, _):
            job = await rt.submit(waiting)
            await receiver.wait_for(
                lambda: len(receiver.taken("/fast")) == 1 and len(receiver.tries("/slow")) == 1
            )
            await anyio.to_thread.run_sync(gate.write_text, "go\n")  # once it reads
            await job.wait_for_success()
            await receiver.wait_for(lambda: len(receiver.taken("/fast")) == 2, limit_s=5)
            assert len(receiver.tries("/slow")) == 1  # still held: its first event
            slow.set()
            await n.settled()
    for path in ("/fast", "/slow"):
        assert [a.json["type"] for a in receiver.taken(path)] == ["job_running", "job_succeeded"]


async def test_a_config_targets_url_given_up_shows_in_the_jobs_history_without_its_path(
    state_dir: Path,
) -> None:
    """A job's history is shown to whoever may see the job, a shared link too: a config
    target's path and query (a webhook's credential, often) stay out of it; the job's own
    target, part of the job as submitted, is shown whole."""
    async with Receiver(lambda *_: 500) as receiver:
        secret = "/hooks/T000/SECRET?token=s3cr3t"
        config = Config(
            notifications=(
                NotifySpec(url=f"{receiver.base}{secret}", events=("job_succeeded",), tries=1),
            )
        )
        spec = {
            "name": "unheard",
            "notify": [{"url": f"{receiver.base}/own", "events": ["job_succeeded"], "tries": 1}],
            "tasks": [{"name": "a", "command": "true"}],
        }
        async with notifying(state_dir, config) as (rt, notifier, _):
            job = await rt.submit(spec)
            await job.wait_for_success()
            await notifier.settled()
            history = [msgspec.to_builtins(e.event) for e in await rt.job_history(job.id)]
    urls = sorted(e["url"] for e in history if e["type"] == "NotificationFailed")
    assert urls == sorted([f"{receiver.base}/…", f"{receiver.base}/own"])
    assert not any("SECRET" in json.dumps(e) or "s3cr3t" in json.dumps(e) for e in history)


async def test_a_target_added_while_a_jobs_delivery_is_under_way_gets_what_comes_next(
    state_dir: Path,
) -> None:
    """A reload adds a target while the job's round is held by a slow one: the job's end,
    sent to the others in that round, reaches the added target too."""
    async with Receiver() as receiver:
        receiver.held["/slow"] = slow = anyio.Event()
        gate = state_dir.parent / "gate"
        os.mkfifo(gate)
        waiting = {"name": "waiting", "tasks": [{"name": "t", "command": f"cat {gate}"}]}
        async with notifying(state_dir, targets_at(receiver, "/slow")) as (rt, notifier, _):
            running = await rt.submit(waiting)
            await receiver.wait_for(lambda: len(receiver.tries("/slow")) == 1)
            await rt.reload_notifications(targets_at(receiver, "/slow", "/new"))
            await anyio.to_thread.run_sync(gate.write_text, "go\n")  # once it reads
            await running.wait_for_success()
            slow.set()
            with anyio.fail_after(20):
                await notifier.settled()
    new = [(a.json["job_id"], a.json["type"]) for a in receiver.taken("/new")]
    assert new == [(running.id, "job_succeeded")]


async def test_a_target_added_gets_a_retried_jobs_events_after_the_newest_job_is_deleted(
    state_dir: Path,
) -> None:
    """Deleting the job with the newest events hands out none of their seqs again: a
    target added before counts on seqs only rising."""
    marker = state_dir.parent / "marker"
    command = f"test -f {marker} || (touch {marker}; exit 1)"
    flaky = {"name": "flaky", "tasks": [{"name": "t", "command": command}]}
    many = {"name": "many", "tasks": [{"name": "t", "instances": 30, "command": "true"}]}
    async with Receiver() as receiver:
        async with notifying(state_dir, targets_at(receiver, "/old")) as (rt, notifier, _):
            failed = await rt.submit(flaky)
            await failed.wait_for_completion()
            newest = await rt.submit(many)
            await newest.wait_for_success()
            await notifier.settled()
            await rt.reload_notifications(targets_at(receiver, "/old", "/new"))
            await rt.delete_job(newest.id)
            await rt.retry_job(failed.id)
            await failed.wait_for_success()
            with anyio.fail_after(20):
                await notifier.settled()
    new = [(a.json["job_id"], a.json["type"]) for a in receiver.taken("/new")]
    assert new == [(failed.id, "job_running"), (failed.id, "job_succeeded")]
