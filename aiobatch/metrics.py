"""The runtime's metrics in Prometheus' text format (``GET /metrics``), with
``prometheus_client``.

Gauges are read when scraped, from what the runtime holds anyway (O(tasks + envs), never
per instance): jobs by state, instances of live jobs by state, slots, Docker hosts, the
store's queue, stream subscribers. What happens in between (dispatch latency, instance
durations, commits, log bytes) is counted as it happens, each a few dict operations on the
event bus, into plain buckets; ``prometheus_client`` (60 ms to import) is loaded at the
first scrape, not by every ``aiobatch run``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from aiobatch.engine import Engine
from aiobatch.events import Event, InstanceStateChanged, JobStateChanged, TaskStateChanged
from aiobatch.executors.base import Executor, LogCountingExecutor
from aiobatch.layout import StateLayout
from aiobatch.notify_delivery import Notifier
from aiobatch.states import JOB_TERMINAL, InstanceState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a millisecond (a busy dispatch loop) to an hour (a queue behind full slots).
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
_ENDED = {InstanceState.SUCCEEDED.value, InstanceState.FAILED.value, "CANCELLED"}


class Buckets:
    """A histogram's counts, as Prometheus' cumulative buckets want them at a scrape."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class Metrics:
    def __init__(
        self,
        *,
        engine: Engine,
        layout: StateLayout,
        executors: Callable[[], Mapping[str, Executor]],
        store_queue: Callable[[], int],
        subscribers: Callable[[], int],
        deleted: Callable[[], int],
        notifier: Notifier | None = None,
    ) -> None:
        self._engine, self._layout, self._executors = engine, layout, executors
        self._counts_own_logs: dict[str, bool] = {}  # by env: its executor counts log bytes
        self._gauges = _Gauges(engine, executors, store_queue, subscribers, deleted)
        self._notifier = notifier
        self.dispatch_latency: dict[str, Buckets] = {}  # by env
        self.duration: dict[tuple[str, str], Buckets] = {}  # by env and outcome
        self.commit = Buckets(COMMIT_BUCKETS)
        self.log_bytes = 0
        # Per live job: when each task became ready, and when an instance could start
        # before that (a retry, a counterpart by index); dropped when the job ends.
        self._task_ready: dict[str, dict[str, float]] = {}
        self._instance_ready: dict[str, dict[tuple[str, int], float]] = {}
        self._log_sizes: dict[str, dict[tuple[str, int], int]] = {}

    def render(self, job_counts: Mapping[str, int]) -> bytes:
        """The text to serve; ``job_counts``: every stored job by state (read just before)."""
        from prometheus_client import CollectorRegistry, generate_latest

        self._gauges.job_counts = job_counts
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._gauges)
        registry.register(_Events(self))
        if self._notifier is not None:
            registry.register(_Notifications(self._notifier))
        return generate_latest(registry)

    def observe_commit(self, seconds: float) -> None:
        self.commit.observe(seconds)

    def on_event(self, event: Event) -> None:
        """Bus subscriber: a few dict operations per event; no I/O but two stats at the end
        of an instance whose executor does not count its log bytes (Docker, Slurm)."""
        if isinstance(event, InstanceStateChanged):
            self._instance(event)
        elif isinstance(event, TaskStateChanged) and event.state == "READY":
            self._task_ready.setdefault(event.job_id, {})[event.task] = event.ts
        elif isinstance(event, JobStateChanged) and event.state in JOB_TERMINAL:
            self._task_ready.pop(event.job_id, None)
            self._instance_ready.pop(event.job_id, None)
            self._log_sizes.pop(event.job_id, None)

    def _instance(self, event: InstanceStateChanged) -> None:
        job_id, key = event.job_id, (event.task, event.index)
        if event.state == "PENDING":  # a retry: it may start again from now (or its backoff)
            due = event.not_before or event.ts
            self._instance_ready.setdefault(job_id, {})[key] = due
        elif event.state == "RUNNING":
            waiting = self._instance_ready.get(job_id)
            ready: float | None = waiting.pop(key, None) if waiting is not None else None
            if ready is None:
                ready = self._task_ready.get(job_id, {}).get(event.task)
            if ready is not None and event.ts >= ready:
                env = self._env(job_id, event.task)
                latency = self.dispatch_latency.get(env)
                if latency is None:
                    latency = self.dispatch_latency[env] = Buckets(LATENCY_BUCKETS)
                latency.observe(event.ts - ready)
        elif event.state in _ENDED:
            env = self._env(job_id, event.task)
            if event.duration_s is not None:
                key_of = (env, event.state.lower())
                duration = self.duration.get(key_of)
                if duration is None:
                    duration = self.duration[key_of] = Buckets(DURATION_BUCKETS)
                duration.observe(event.duration_s)
            if event.state == "SUCCEEDED":
                self._open_counterparts(event)
            if not self._counts_own_logs_in(env):
                self._count_logs(job_id, key)

    def _env(self, job_id: str, task: str) -> str:
        job = self._engine.jobs.get(job_id)
        task_rec = job.tasks.get(task) if job is not None else None
        return task_rec.defn.compute_env if task_rec is not None else "unknown"

    def _open_counterparts(self, event: InstanceStateChanged) -> None:
        """An index joined by index may start once its counterpart succeeded."""
        job = self._engine.jobs.get(event.job_id)
        task = job.tasks.get(event.task) if job is not None else None
        if task is None:
            return
        ready = self._instance_ready.setdefault(event.job_id, {})
        for dependent in task.index_dependents:
            ready[(dependent.name, event.index)] = event.ts

    @property
    def all_log_bytes(self) -> int:
        """Log bytes counted here and by the executors that count their own."""
        counted = 0
        for env, executor in self._executors().items():
            if self._counts_own_logs_in(env):
                counted += cast(LogCountingExecutor, executor).log_bytes
        return self.log_bytes + counted

    def _counts_own_logs_in(self, env: str) -> bool:
        counts = self._counts_own_logs.get(env)
        if counts is None:
            executor = self._executors().get(env)
            if executor is None:
                return False  # not opened yet: asked again later
            counts = self._counts_own_logs[env] = isinstance(executor, LogCountingExecutor)
        return counts

    def _count_logs(self, job_id: str, key: tuple[str, int]) -> None:
        """What the attempt added to its log files (they are appended across attempts); for
        an env whose executor does not count them itself (a stat of two files: Docker's
        and Slurm's starts cost far more)."""
        total = 0
        for stream in ("stdout", "stderr"):
            try:
                total += os.stat(self._layout.log_path(job_id, *key, stream)).st_size
            except OSError:
                pass  # a container's logs, or none written
        sizes = self._log_sizes.setdefault(job_id, {})
        grown = total - sizes.get(key, 0)
        sizes[key] = total
        if grown > 0:
            self.log_bytes += grown


class _Events:
    """What was counted as it happened, as Prometheus' families."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        m = self._metrics
        latency = HistogramMetricFamily(
            "aiobatch_dispatch_latency_seconds",
            "From when an instance could start (its task ready, its retry due, its "
            "counterpart by index succeeded) to its program running",
            labels=["env"],
        )
        for env, buckets in sorted(m.dispatch_latency.items()):
            latency.add_metric([env], buckets.cumulative(), buckets.total)
        yield latency
        duration = HistogramMetricFamily(
            "aiobatch_instance_duration_seconds",
            "How long an attempt's program ran, by how the instance ended",
            labels=["env", "outcome"],
        )
        for (env, outcome), buckets in sorted(m.duration.items()):
            duration.add_metric([env, outcome], buckets.cumulative(), buckets.total)
        yield duration
        commit = HistogramMetricFamily(
            "aiobatch_store_commit_seconds", "One store transaction (a batch of state changes)"
        )
        commit.add_metric([], m.commit.cumulative(), m.commit.total)
        yield commit
        yield CounterMetricFamily(
            "aiobatch_log_bytes",
            "Bytes of instances' stdout and stderr written to their log files",
            value=m.all_log_bytes,
        )


class _Notifications:
    """Webhook deliveries, from the notifier's counters."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        n = self._notifier
        yield CounterMetricFamily(
            "aiobatch_notifications_delivered",
            "Webhook deliveries a receiver took (a 2xx answer)",
            value=n.delivered,
        )
        yield CounterMetricFamily(
            "aiobatch_notifications_failed",
            "Webhook deliveries given up after their last try",
            value=n.failed,
        )
        yield CounterMetricFamily(
            "aiobatch_notification_retries",
            "Webhook tries that failed and were tried again after a backoff",
            value=n.retried,
        )
        yield GaugeMetricFamily(
            "aiobatch_notifications_pending",
            "Webhook deliveries taken up and not yet delivered or given up",
            value=n.pending,
        )


class _Gauges:
    """What is read at each scrape."""

    def __init__(
        self,
        engine: Engine,
        executors: Callable[[], Mapping[str, Executor]],
        store_queue: Callable[[], int],
        subscribers: Callable[[], int],
        deleted: Callable[[], int],
    ) -> None:
        self._engine, self._executors = engine, executors
        self.job_counts: Mapping[str, int] = {}
        self._store_queue, self._subscribers, self._deleted = store_queue, subscribers, deleted

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        jobs = GaugeMetricFamily("aiobatch_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(self.job_counts.items()):
            jobs.add_metric([state], count)
        yield jobs
        yield self._instances()
        yield from self._slots()
        yield GaugeMetricFamily(
            "aiobatch_store_queued_events",
            "State changes buffered for the next commit",
            value=self._store_queue(),
        )
        yield GaugeMetricFamily(
            "aiobatch_event_subscribers",
            "Event streams open (API streams, pages, waits)",
            value=self._subscribers(),
        )
        yield CounterMetricFamily(
            "aiobatch_deleted_jobs",
            "Jobs deleted since the start (by request or by age)",
            value=self._deleted(),
        )

    def _instances(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        counts = dict.fromkeys(("PENDING", "ACTIVE", "SUCCEEDED", "FAILED", "CANCELLED"), 0)
        for job in self._engine.jobs.values():
            for task in job.tasks.values():
                counts["PENDING"] += task.pending
                counts["ACTIVE"] += task.active
                counts["SUCCEEDED"] += task.succeeded
                counts["FAILED"] += task.failed
                counts["CANCELLED"] += task.cancelled
        family = GaugeMetricFamily(
            "aiobatch_instances",
            "Instances of the jobs that have not ended, by state (ACTIVE: staging, running "
            "or uploading)",
            labels=["state"],
        )
        for state, count in counts.items():
            family.add_metric([state], count)
        return family

    def _slots(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        scheduler = self._engine.scheduler
        slots = GaugeMetricFamily("aiobatch_slots", "Slots of each compute env", labels=["env"])
        used = GaugeMetricFamily(
            "aiobatch_slots_used", "Slots in use in each compute env", labels=["env"]
        )
        for env, numbers in sorted(scheduler.statistics().items()):
            slots.add_metric([env], numbers["slots"])
            used.add_metric([env], numbers["used"])
        yield slots
        yield used
        hosts = GaugeMetricFamily(
            "aiobatch_docker_host_up",
            "Whether a Docker engine takes new attempts (1) or is drained (0)",
            labels=["env", "host"],
        )
        in_flight = GaugeMetricFamily(
            "aiobatch_docker_host_attempts",
            "Attempts placed on a Docker engine",
            labels=["env", "host"],
        )
        for env, executor in sorted(self._executors().items()):
            states = getattr(executor, "host_states", None)
            if states is None:
                continue
            for host, count, healthy in states():
                hosts.add_metric([env, host], 1 if healthy else 0)
                in_flight.add_metric([env, host], count)
        yield hosts
        yield in_flight
