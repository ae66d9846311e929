"""What a container cost, from the engine's stats stream while it runs: its CPU time (user
and kernel) and its peak memory.

An exited container's cgroup is gone, and with it the figures, so they are read while it
runs: the engine sends a sample about every second. The CPU time is the last sample's (at
most a second short of the whole); the peak is the cgroup's own (v1: ``max_usage``), else
the highest usage seen. A container that ran for less than a sample reports nothing.
"""

from __future__ import annotations

import json
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from aiobatch.attempt import Usage

_NS = 1e-9


class UsageMeter:
    def __init__(self) -> None:
        self.cpu_user_ns: int | None = None
        self.cpu_system_ns: int | None = None
        self.peak_bytes: int | None = None

    async def follow(self, container: DockerContainer) -> None:
        """Take samples until the stream ends or is cancelled (the container has ended).

        The request is made here rather than through ``container.stats()``: its generator
        leaves the response open when it is cancelled, and so the engine's connection."""
        docker = container.docker
        timeout = docker._resolve_long_running_timeout(None)
        path = f"containers/{container.id}/stats"
        try:
            async with docker._query(path, params={"stream": "1"}, timeout=timeout) as answer:
                try:
                    while line := await answer.content.readline():
                        self.take(json.loads(line))
                finally:
                    answer.close()  # at once, without awaiting: a cancel is no matter
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, ValueError):
            pass  # the figures are a measurement, never the attempt's failure

    def take(self, sample: dict[str, Any]) -> None:
        cpu = (sample.get("cpu_stats") or {}).get("cpu_usage") or {}
        user, kernel = cpu.get("usage_in_usermode"), cpu.get("usage_in_kernelmode")
        if isinstance(user, int) and isinstance(kernel, int) and (user or kernel):
            self.cpu_user_ns, self.cpu_system_ns = user, kernel
        memory = sample.get("memory_stats") or {}
        peak = memory.get("max_usage") or memory.get("usage")
        if isinstance(peak, int) and peak > 0:
            self.peak_bytes = max(peak, self.peak_bytes or 0)

    def usage(self) -> Usage | None:
        if self.cpu_user_ns is None and self.peak_bytes is None:
            return None
        return Usage(
            cpu_user_s=None if self.cpu_user_ns is None else self.cpu_user_ns * _NS,
            cpu_system_s=None if self.cpu_system_ns is None else self.cpu_system_ns * _NS,
            max_rss_bytes=self.peak_bytes,
        )
