"""sd_notify over real AF_UNIX datagram sockets, the watchdog, and the unit file itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from aiobatch.cli import EXIT_UNWRITABLE, EXIT_USAGE
from aiobatch.systemd import Notifier, run_watchdog, watchdog_interval

UNIT = Path(__file__).parents[2] / "config" / "aiobatch.service"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, named by NOTIFY_SOCKET."""
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)  # a safety net against a hang, not synchronisation
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_then_stopping_arrive_in_order(notify_socket: socket.socket) -> None:
    notifier = Notifier()

    assert notifier.ready()
    assert notifier.stopping()

    assert notify_socket.recv(4096) == b"READY=1"
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_a_reload_is_told_with_the_monotonic_time_it_began(notify_socket: socket.socket) -> None:
    notifier = Notifier()
    before = time.monotonic_ns() // 1000

    assert notifier.reloading()

    reloading, usec = notify_socket.recv(4096).decode().split("\n")
    assert reloading == "RELOADING=1"
    assert usec.startswith("MONOTONIC_USEC=") and before <= int(usec.split("=")[1])


def test_status_text_and_several_fields_in_one_datagram(notify_socket: socket.socket) -> None:
    notifier = Notifier()

    notifier.status("recovering 3 jobs")
    notifier.notify(ready=1, STATUS="ready: 2 jobs\nrunning")

    assert notify_socket.recv(4096) == b"STATUS=recovering 3 jobs"
    # A newline inside a value would start a new assignment: it becomes a space.
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=ready: 2 jobs running"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"aiobatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        assert Notifier().ready()

        assert sock.recv(4096) == b"READY=1"


def test_unset_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()

    with capture_logs() as logs:
        assert not notifier.enabled
        assert not notifier.ready()
        assert not notifier.status("x")

    assert logs == []


@pytest.mark.parametrize("address", ["{tmp}/missing.sock", "@aiobatch-nobody-{uid}", "relative"])
def test_a_socket_pointing_nowhere_does_not_raise_and_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address.format(tmp=tmp_path, uid=uuid.uuid4().hex))
    notifier = Notifier()

    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.watchdog()

    assert [(entry["event"], entry["log_level"]) for entry in logs] == [
        ("notify_failed", "warning")
    ]


def test_unset_environment_hides_the_socket_from_children(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    notifier = Notifier(unset_environment=True)
    interval = watchdog_interval(unset_environment=True)

    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert "WATCHDOG_PID" not in os.environ
    assert interval == 30.0
    assert notifier.ready()
    assert notify_socket.recv(4096) == b"READY=1"


OTHER_PID = str(os.getpid() + 1)


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("50000", None, 0.05),
        ("50000", str(os.getpid()), 0.05),
        ("50000", OTHER_PID, None),  # inherited from a parent: not ours to feed
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("50000", "nobody", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)

    assert watchdog_interval() == expected


@pytest.mark.anyio
async def test_run_watchdog_pings_repeatedly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n.sock"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "50000")  # 50 ms: a ping every 25 ms
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async with await anyio.create_unix_datagram_socket(local_path=path) as receiver:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(run_watchdog, Notifier())
                pings = [(await receiver.receive())[0] for _ in range(3)]
                tg.cancel_scope.cancel()

    assert pings == [b"WATCHDOG=1"] * 3


@pytest.mark.anyio
@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": "50000", "WATCHDOG_PID": OTHER_PID}])
async def test_run_watchdog_returns_at_once_without_a_watchdog(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    with anyio.fail_after(1):
        await run_watchdog(Notifier())
        async with anyio.create_task_group() as tg:  # and under tg.start, as serve uses it
            await tg.start(run_watchdog, Notifier())

    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)  # nothing was sent


@pytest.mark.anyio
async def test_run_watchdog_returns_at_once_without_notify_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "50000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)

    with anyio.fail_after(1):
        await run_watchdog(Notifier())


# The unit file -------------------------------------------------------------------------


def verify_unit(text: str, tmp_path: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify` on ``text`` installed as aiobatch.service, with
    ExecStart pointed at this venv's script (verify checks it is executable). Returns the
    exit code and the stderr lines about our unit; other lines are about the host's units."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze not found (Debian package: systemd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    script = Path(sys.executable).parent / "aiobatch"
    assert "/usr/local/bin/aiobatch serve" in text
    unit = tmp_path / "aiobatch.service"
    unit.write_text(text.replace("/usr/local/bin/aiobatch", str(script)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in result.stderr.splitlines() if "aiobatch.service" in line]
    return result.returncode, ours


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    returncode, problems = verify_unit(UNIT.read_text(), tmp_path)

    assert problems == []
    assert returncode == 0


def test_verify_does_report_a_broken_unit(tmp_path: Path) -> None:
    """Guards the test above: verify must see our unit, and the filter must catch its
    complaints (it exits 0 on unknown keys, so stderr is what tells)."""
    broken = UNIT.read_text().replace("[Service]\n", "[Service]\nFrobnicate=yes\n", 1)

    _, problems = verify_unit(broken, tmp_path)

    assert any("Frobnicate" in line for line in problems)


def test_unit_has_the_required_settings() -> None:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value

    assert settings["ExecStart"] == (
        "/usr/local/bin/aiobatch serve --config /etc/aiobatch/aiobatch.toml"
        " --state-dir /var/lib/aiobatch"
    )
    assert {
        key: settings.get(key)
        for key in (
            "Type",
            "NotifyAccess",
            "StateDirectory",
            "RuntimeDirectory",
            "KillMode",
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "Restart",
        )
    } == {
        "Type": "notify",
        "NotifyAccess": "main",
        "StateDirectory": "aiobatch",
        "RuntimeDirectory": "aiobatch",
        "KillMode": "mixed",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
    }
    assert int(settings["WatchdogSec"]) > 0
    # Drain (shutdown_grace 30s) plus one kill_grace (10s), with margin.
    assert settings["TimeoutStopSec"].endswith("s")
    assert int(settings["TimeoutStopSec"].removesuffix("s")) >= 30 + 10 + 15


def test_the_unit_does_not_restart_on_what_a_restart_cannot_fix() -> None:
    """A start refused (exit 2: bad config, corrupt database, address in use...) or a full
    disk (exit 4) would fail again at once: Restart=on-failure would loop."""
    prevented: set[int] = set()
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "RestartPreventExitStatus":
            prevented.update(int(code) for code in value.split())
    assert {EXIT_USAGE, EXIT_UNWRITABLE} <= prevented
