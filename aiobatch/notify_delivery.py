"""Delivering webhooks from the persisted event log: at least once, in order per job and
target, with exponential backoff (tenacity) and a bounded number of tries.

The bus only says *which* job has news; what is sent is read back from the ``events`` table
once the store has written it (``notify_store.py``), so a crash loses nothing: at the next
start, every job with events after what was delivered is taken up again. Each job with news
has a worker of its own (at most MAX_JOBS_AT_ONCE, the rest queued), and each of its targets
a lane: a receiver that fails holds back only its own lane of that job, never another job's
deliveries, dispatch, or any job's outcome. A delivery given up is logged, counted, and
handed to ``on_given_up`` (the runtime records it in the job's history).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from aiobatch.events import Event, JobStateChanged, event_decoder
from aiobatch.logging import get_logger
from aiobatch.notifications import event_tags, notify_type, wanted
from aiobatch.notify_sender import Delivery, GivenUp, Sender
from aiobatch.notify_store import JobTargets, NotifyStore
from aiobatch.notify_types import NotifyDef
from aiobatch.states import JOB_TERMINAL
from aiobatch.store import Store

log = get_logger("aiobatch.notifications")

# Jobs whose deliveries run at once (a sleeping task each while a try waits out its
# backoff); more wait their turn, oldest news first.
MAX_JOBS_AT_ONCE = 10_000
# Events a target reads from a job's history at a time (it works through them in order).
PAGE = 200
# A job's worker that fails (its reads or writes: a full disk, say) starts over after this,
# doubling up to the max; what it had done is kept.
WORKER_RETRY_FIRST_S, WORKER_RETRY_MAX_S = 1.0, 300.0


class _Worker(msgspec.Struct):
    news: int = 1  # events of the job heard of (what was read is compared with it)
    lanes: list[_Lane] = msgspec.field(default_factory=list)  # this round's
    busy: int = 0  # this round's lanes still working (not caught up, not ended)
    # Made by the first lane that waits: most news (every event of a job with no target
    # among them) comes while none does, and an event per news was a cost of every event.
    _poked: anyio.Event | None = None

    def hear(self) -> None:
        """The job has news: every lane reads again."""
        self.news += 1
        self.poke()

    def poke(self) -> None:
        if self._poked is not None:
            self._poked.set()
            self._poked = None

    async def poked(self) -> None:
        """Until news comes, or a lane stops working."""
        if self._poked is None:
            self._poked = anyio.Event()
        await self._poked.wait()


class _Added(msgspec.Struct):
    """Where a config target added by a reload starts in each job: after the events the job
    had then (it is sent what comes next, never what came before)."""

    first_new_job: int  # jobs numbered from this one on came after it: all their events
    starts: dict[str, int]  # the jobs running then: the seq of each one's last event then
    otherwise: int  # any other job (ended then): the seq of the history's last event then


class _Lane(msgspec.Struct):
    """One target's way through a job's events: it goes at its own pace, so a receiver
    that fails holds back no other target, not even of the same job."""

    key: str  # config:<url> or job:<index>: where its progress is kept
    target: NotifyDef
    done: int  # the job's events up to this seq are done with, for this target
    tries: int  # tries of the next event so far (before a restart)
    tags: frozenset[str]  # the stored events it reads
    seen: int = 0  # the worker's news when the lane last read
    # Cancelled when a reload removes its target: nothing more goes there, not even a retry.
    scope: anyio.CancelScope = msgspec.field(default_factory=anyio.CancelScope)


class Notifier:
    """Bus subscriber (``on_event``) and the task (``run``) that delivers."""

    def __init__(
        self,
        *,
        store: Store,
        targets: tuple[NotifyDef, ...],
        on_given_up: Callable[[GivenUp], None] | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """``targets``: the config's, for every job."""
        self._flush = store.flush  # returns once every event published so far is committed
        self._store = NotifyStore(store)
        self._targets = _keyed(targets)
        self._config_wants = wanted(targets)
        self._added: dict[str, _Added] = {}  # config targets a reload added, by key
        self._reloads = 0  # each one makes every running worker go one more round
        self._reloading = anyio.Lock()
        self._sender = Sender(self._store, environ)
        self._sender.on_given_up = on_given_up
        self.pending = 0  # deliveries taken up, not yet delivered or given up
        self._wants: dict[str, frozenset[str]] = {}  # live job -> the types its targets want
        self._running: dict[str, _Worker] = {}
        self._queued: dict[str, None] = {}  # jobs with news, waiting for a worker, in order
        self._group: TaskGroup | None = None
        self._settled = anyio.Event()  # set while no job has news
        self._settled.set()

    async def reload_targets(
        self, targets: tuple[NotifyDef, ...], running: Collection[str], first_new_job: int
    ) -> None:
        """Take the config's targets as re-read (SIGHUP). One removed is sent nothing more
        (a try waiting out its backoff is dropped); one added is sent, of every job, the
        events after those it had now: the jobs ``running``, and those numbered from
        ``first_new_job`` on, are all others that can have events later."""
        async with self._reloading:
            keyed = _keyed(targets)
            keys = {key for key, _ in keyed}
            added = keys - {key for key, _ in self._targets}
            if added:
                await self._flush()  # what was published so far has its seq
                starts, last = await self._store.last_seqs(list(running))
                since = _Added(first_new_job, starts, last)
            # No await from here: every lane built from now on has the new targets.
            for key in [key for key in self._added if key not in keys]:
                del self._added[key]
            for key in added:
                self._added[key] = since
            self._targets, self._config_wants = keyed, wanted(targets)
            self._reloads += 1
            self._wants.clear()  # worked out again at each job's next round
            for worker in self._running.values():
                worker.hear()  # one more round, with the targets as they are now
                for lane in worker.lanes:
                    if lane.key.startswith(_CONFIG) and lane.key not in keys:
                        lane.scope.cancel()

    @property
    def delivered(self) -> int:
        """Deliveries a receiver took (a 2xx answer)."""
        return self._sender.delivered

    @property
    def failed(self) -> int:
        """Deliveries given up after their last try."""
        return self._sender.failed

    @property
    def retried(self) -> int:
        """Tries that failed and were tried again after a backoff."""
        return self._sender.retried

    @property
    def jobs_pending(self) -> int:
        """Jobs whose news is being delivered or waits to be."""
        return len(self._running) + len(self._queued)

    async def settled(self) -> None:
        """Return once no job has news: every event heard of so far is delivered or given
        up (a job's news is only heard of once it is published)."""
        while self._running or self._queued:
            await self._settled.wait()

    # -- which jobs have news ------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Bus subscriber: note that the event's job has news (no I/O)."""
        worker = self._running.get(event.job_id)
        if worker is not None:  # it reads once more before it ends, whatever the event
            worker.hear()
            return
        wants = self._wants.get(event.job_id)
        if wants is not None and not wants and not isinstance(event, JobStateChanged):
            return  # its targets want nothing; only its end is read (below), to forget it
        kind = notify_type(event)
        if kind is None:
            return
        ended = isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL
        # A job's end is read in any case: its worker then forgets what the job wants.
        if wants is None or kind in wants or ended:
            self._queue(event.job_id)
            self._spawn()

    def _queue(self, job_id: str) -> None:
        self._queued[job_id] = None
        if self._settled.is_set():
            self._settled = anyio.Event()

    def _spawn(self) -> None:
        while self._group is not None and self._queued and len(self._running) < MAX_JOBS_AT_ONCE:
            job_id = next(iter(self._queued))
            del self._queued[job_id]
            self._running[job_id] = worker = _Worker()
            self._group.start_soon(self._work, job_id, worker)

    # -- the task ------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; what is pending then is delivered after the next start.
        The store must be open (and stay so while this runs)."""
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                task_status.started()
                group.start_soon(self._resume)
                self._spawn()  # what the bus told of before
                try:
                    await anyio.sleep_forever()
                finally:
                    self._group = None  # no new worker while the others wind down
        finally:
            await self._sender.close()

    async def _resume(self) -> None:
        """Take up every job whose deliveries a stop or a crash left pending."""
        pending: list[str] = []
        async for attempt in _patiently("notify_resume_failed"):
            with attempt:
                pending = await self._store.pending_jobs()
        for job_id in pending:
            if job_id not in self._running:
                self._queue(job_id)
        if pending:
            log.info("notifications_resumed", jobs=len(pending))
        self._spawn()

    async def _work(self, job_id: str, worker: _Worker) -> None:
        try:
            async for attempt in _patiently("notify_worker_failed", job_id=job_id):
                with attempt:
                    await self._catch_up(job_id, worker)
        finally:
            # No await since the last read found nothing new: news after it is not lost.
            del self._running[job_id]
            self._spawn()
            if not self._running and not self._queued:
                self._settled.set()

    async def _catch_up(self, job_id: str, worker: _Worker) -> None:
        """Deliver the job's events after what was done with, each target on its own,
        until none is left and no news came meanwhile; then note how far the job is done."""
        job = await self._store.load(job_id)
        if job is None:  # deleted
            self._wants.pop(job_id, None)
            for since in self._added.values():
                since.starts.pop(job_id, None)
            return
        lanes: dict[str, _Lane] = {}
        while True:
            # Whether it has ended, before its events are read: an end read after this is
            # news, and makes another round.
            ended = await self._store.ended(job_id)
            news, reloads = worker.news, self._reloads
            # The targets as they are now (a reload between rounds changes them).
            self._wants[job_id] = self._config_wants | wanted(job.notify)
            lanes = {lane.key: lane for lane in self._lanes(job, lanes)}
            worker.lanes, worker.busy = list(lanes.values()), len(lanes)
            if lanes:
                async with anyio.create_task_group() as group:
                    for lane in worker.lanes:
                        group.start_soon(self._run_lane, job, lane, worker)
                covered = min(lane.done for lane in worker.lanes)
            else:  # no target: the job's history is done with as it stands
                await self._flush()
                _, covered = await self._store.read(job_id, job.seq, (), 1)
            covered = self._held_for_added(job, lanes, covered)
            if covered > job.seq:
                await self._store.advance(job_id, covered)
                job.seq = covered
            # No await from here to the worker's end: news after the last read is not lost.
            seen = [lane.seen for lane in worker.lanes] if lanes else [news]
            # A reload meanwhile: one more round, with the lanes of the targets it gave (a
            # new one sent what this round sent the others).
            if all(count == worker.news for count in seen) and reloads == self._reloads:
                break
        if ended:
            self._wants.pop(job_id, None)  # it may be retried: then it is read afresh
            for since in self._added.values():
                since.starts.pop(job_id, None)  # its end is done with: nothing to skip

    def _lanes(self, job: JobTargets, before: dict[str, _Lane]) -> list[_Lane]:
        """A lane per target the job has now: those of the last round go on where they
        were; a new one starts where the job's delivery stands (or, added by a reload,
        after what the job had then)."""
        targets = self._targets + tuple((f"job:{i}", t) for i, t in enumerate(job.notify))
        lanes = []
        for key, target in targets:
            tags = frozenset(event_tags(set(target.events)))
            lane = before.get(key)
            if lane is None:
                done, tries = job.lanes.get(key, (job.seq, 0))
                start = max(done, job.seq, self._added_start(key, job))
                lane = _Lane(key, target, start, tries if start == done else 0, tags)
            else:
                lane.target, lane.tags = target, tags  # its events may have changed
                lane.scope = anyio.CancelScope()
            lanes.append(lane)
        return lanes

    def _held_for_added(self, job: JobTargets, lanes: dict[str, _Lane], covered: int) -> int:
        """How far the job's delivery is done with: not past where a target a reload added
        during the round, with no lane yet, starts (it is sent what came after)."""
        for key, _ in self._targets:
            if key not in lanes:
                covered = min(covered, max(job.seq, self._added_start(key, job)))
        return covered

    def _added_start(self, key: str, job: JobTargets) -> int:
        since = self._added.get(key)
        if since is None or job.number >= since.first_new_job:
            return 0
        return since.starts.get(job.job_id, since.otherwise)

    async def _run_lane(self, job: JobTargets, lane: _Lane, worker: _Worker) -> None:
        busy = True
        try:
            with lane.scope:
                while True:
                    lane.seen = worker.news
                    await self._flush()  # what the bus told of is written: read it back
                    page, covered = await self._store.read(job.job_id, lane.done, lane.tags, PAGE)
                    if covered > lane.done:
                        todo = []
                        for seq, body in page:
                            kind = notify_type(event_decoder.decode(body))
                            if kind in lane.target.events:
                                todo.append((seq, body, kind))
                        await self._deliver(job, lane, todo)
                        lane.done = covered
                        continue
                    if lane.seen != worker.news:
                        continue
                    # Caught up. While another lane still works (a receiver slow or failing),
                    # this one waits here for news: it must not wait for the round to end
                    # to be sent the job's next events. Once none works, the round is over.
                    busy = False
                    worker.busy -= 1
                    worker.poke()
                    while lane.seen == worker.news and worker.busy:
                        await worker.poked()
                    if lane.seen == worker.news:
                        return
                    busy = True
                    worker.busy += 1
        finally:
            if busy:  # ended (cancelled, failed): the others need not wait for it
                worker.busy -= 1
                worker.poke()

    async def _deliver(
        self, job: JobTargets, lane: _Lane, todo: list[tuple[int, bytes, str]]
    ) -> None:
        self.pending += len(todo)
        left = len(todo)
        try:
            for seq, event, kind in todo:
                delivery = Delivery(
                    job_id=job.job_id,
                    job_name=job.name,
                    target_key=lane.key,
                    target=lane.target,
                    after=lane.done,
                    prior=lane.tries,
                    seq=seq,
                    event=event,
                    type=kind,
                )
                await self._sender.send(delivery)
                self.pending, left = self.pending - 1, left - 1
                lane.done, lane.tries = seq, 0
                await self._store.save_lane(job.job_id, lane.key, seq, 0)
        finally:
            self.pending -= left  # cancelled or failed: taken up again by the next worker


_CONFIG = "config:"  # the key of a config target's lane: config:<url>


def _keyed(targets: tuple[NotifyDef, ...]) -> tuple[tuple[str, NotifyDef], ...]:
    return tuple((f"{_CONFIG}{target.url}", target) for target in targets)


def _patiently(event: str, **bound: str) -> AsyncRetrying:
    """Try again after any error, backing off, until it works or the task is cancelled; each
    failure is logged."""

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        log.error(event, error=repr(error), tries=state.attempt_number, **bound)

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=WORKER_RETRY_FIRST_S, max=WORKER_RETRY_MAX_S),
        sleep=anyio.sleep,
        before_sleep=before_sleep,
    )
