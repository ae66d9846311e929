"""Containers the engine did not let us remove, tried again in the background: the retry
logic against stand-in containers whose removal fails as an engine's can (the whole path,
with a real engine stopped by SIGSTOP, is in tests/integration/test_docker_leftovers.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import aiodocker
import aiohttp
import anyio
import pytest
import structlog
from aiodocker.containers import DockerContainer

from aiobatch.executors import docker_leftovers
from aiobatch.executors.docker_leftovers import Leftovers

pytestmark = pytest.mark.anyio


class Container:
    """Fails its first ``failures`` removals with what ``fail`` raises, then is removed."""

    def __init__(
        self, id: str, failures: float, fail: Callable[[], BaseException] | None = None
    ) -> None:
        self.id, self.failures, self.tries = id, failures, 0
        self.fail = fail or (lambda: aiodocker.DockerError(500, "removal already in progress"))
        self.removed = anyio.Event()

    async def delete(self, *, force: bool) -> None:
        assert force
        self.tries += 1
        if self.tries <= self.failures:
            raise self.fail()
        self.removed.set()


def docker(container: Container) -> DockerContainer:
    return cast(DockerContainer, container)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docker_leftovers, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(docker_leftovers, "RETRY_MAX_S", 0.04)
    monkeypatch.setattr(docker_leftovers, "REMOVE_LIMIT_S", 0.5)


@pytest.fixture(autouse=True)
def every_level() -> Iterator[None]:
    """Whatever level an earlier test (an in-process ``aiobatch run``) left configured."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET))
    yield
    structlog.configure(**before)


@pytest.fixture
async def leftovers() -> AsyncIterator[Leftovers]:
    async with anyio.create_task_group() as background:
        tried = Leftovers("docker")
        await tried.open(background)
        yield tried
        await tried.close()
        background.cancel_scope.cancel()


async def test_a_refused_removal_is_tried_again_until_the_container_is_gone(
    leftovers: Leftovers,
) -> None:
    container = Container("a", failures=3)
    with structlog.testing.capture_logs() as logs:
        assert not await leftovers.remove(docker(container))
        with anyio.fail_after(10):
            await leftovers.none_left()
    assert container.tries == 4 and container.removed.is_set()
    assert [entry["event"] for entry in logs] == ["docker_remove_failed", "docker_leftover_removed"]


@pytest.mark.parametrize(
    "fail",
    [
        lambda: TimeoutError(),
        lambda: aiohttp.ClientPayloadError("cut short"),
        lambda: aiohttp.ServerDisconnectedError(),
        lambda: ValueError("not JSON"),
    ],
    ids=["no answer", "cut short", "hung up", "not JSON"],
)
async def test_whatever_an_engine_answers_a_removal_is_tried_again(
    leftovers: Leftovers, fail: Callable[[], BaseException]
) -> None:
    container = Container("a", failures=2, fail=fail)
    assert not await leftovers.remove(docker(container))
    with anyio.fail_after(10):
        await leftovers.none_left()
    assert container.removed.is_set()


async def test_a_new_leftover_does_not_wait_for_one_that_keeps_failing(
    leftovers: Leftovers,
) -> None:
    stuck, new = Container("stuck", failures=float("inf")), Container("new", failures=1)
    await leftovers.remove(docker(stuck))
    await leftovers.remove(docker(new))
    with anyio.fail_after(10):
        await new.removed.wait()
    assert list(leftovers.waiting) == ["stuck"]


async def test_a_failure_of_ours_ends_that_container_tries_only() -> None:
    """Not one an engine's answer can cause: logged, and the env's other tries, and the
    runtime, go on."""
    raised = iter([aiodocker.DockerError(500, "busy"), RuntimeError("Session is closed")])
    broken = Container("broken", failures=2, fail=lambda: next(raised))
    other = Container("other", failures=1)
    with structlog.testing.capture_logs() as logs:
        async with anyio.create_task_group() as background:
            tried = Leftovers("docker")
            await tried.open(background)
            assert not await tried.remove(docker(broken))
            assert not await tried.remove(docker(other))
            with anyio.fail_after(10):
                await tried.none_left()
            await tried.close()
    assert broken.tries == 2 and other.removed.is_set()
    assert "docker_leftover_failed" in [entry["event"] for entry in logs]


async def test_closing_stops_the_tries_before_the_clients_close(leftovers: Leftovers) -> None:
    stuck = Container("stuck", failures=float("inf"))
    await leftovers.remove(docker(stuck))
    with anyio.fail_after(5):
        await leftovers.close()
    tries = stuck.tries
    await anyio.sleep(0.1)  # a try still going on would count here
    assert stuck.tries == tries and leftovers.waiting == {}


async def test_an_orphan_found_at_a_start_is_removed_without_holding_it_up(
    leftovers: Leftovers,
) -> None:
    """An engine that answers lists but not removals must not keep a runtime from starting,
    nor a stop then from going through."""
    release = anyio.Event()

    class Slow(Container):
        async def delete(self, *, force: bool) -> None:
            await release.wait()
            await super().delete(force=force)

    orphan = Slow("orphan", failures=0)
    began = time.monotonic()
    leftovers.remove_soon(docker(orphan))  # not awaited: the start goes on
    assert time.monotonic() - began < 0.1 and list(leftovers.waiting) == ["orphan"]
    release.set()
    with anyio.fail_after(10):
        await leftovers.none_left()
    assert orphan.removed.is_set()
