"""What a container cost, from the engine's stats stream while it runs: its CPU time (user
and kernel) and its peak memory.

An exited container's cgroup is gone, and with it the figures, so they are read while it
runs: the engine sends a sample about every second. The CPU time is the last sample's (at
most a second short of the whole); the peak is the cgroup's own (v1: ``max_usage``), else
the highest usage seen. A container that ran for less than a sample reports nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

import aiodocker
from aiodocker.containers import DockerContainer

from aiobatch.attempt import Usage

_NS = 1e-9


class UsageMeter:
    def __init__(self) -> None:
        self.cpu_user_ns: int | None = None
        self.cpu_system_ns: int | None = None
        self.peak_bytes: int | None = None

    async def follow(self, container: DockerContainer) -> None:
        """Take samples until the stream ends (the container has ended) or is cancelled."""
        try:
            # Closed however the wait ends (a cancel included), or its connection leaks.
            stream = cast(AsyncGenerator[dict[str, Any], None], container.stats(stream=True))
            async with aclosing(stream) as samples:
                async for sample in samples:
                    self.take(sample)
        except (aiodocker.DockerError, OSError, ValueError):
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
