"""Every reason ``aiobatch run`` or ``aiobatch serve`` cannot start is one line on stderr that
names the file or address, and exit code 2 (the unit does not restart on it); it is found
before any job is recovered, and a database refused is left exactly as it was found.

Real processes, real SQLite files, real sockets, real read-only mounts (as root)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from aiobatch import Runtime
from aiobatch.errors import (
    DatabaseUnusable,
    JobNotRetryable,
    StartupError,
    StateDirUnusable,
)
from aiobatch.listeners import ListenerError
from aiobatch.schema import SCHEMA_VERSION
from tests.helpers import instance_is, until
from tests.integration.conftest import free_port
from tests.integration.service import AIOBATCH, Service

PREFIX = "aiobatch: cannot start: "


@pytest.fixture
def root() -> Iterator[Path]:
    """A short directory for sockets (107 bytes at most), with a job spec and a config."""
    path = Path(tempfile.mkdtemp(prefix="ab", dir="/tmp"))
    (path / "job.yaml").write_text("name: j\ntasks:\n  - {name: a, command: 'true'}\n")
    (path / "aiobatch.toml").write_text("")
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def needs_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the read-only tests need root to mount")
        pytest.skip("the read-only tests need root to mount")


def read_only_mount(path: Path) -> Iterator[Path]:
    needs_root()
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """An empty read-only file system: as root, permission bits would not stop a write."""
    yield from read_only_mount(tmp_path / "ro")


def aiobatch(*args: str) -> tuple[int, str]:
    result = subprocess.run([str(AIOBATCH), *args], capture_output=True, timeout=60, check=False)
    return result.returncode, result.stderr.decode()


def serve_args(root: Path, state_dir: Path) -> list[str]:
    return [
        *("serve", "--config", str(root / "aiobatch.toml")),
        *("--state-dir", str(state_dir), "--socket", str(root / "ctl.sock")),
    ]


def run_args(root: Path, state_dir: Path, *extra: str) -> list[str]:
    return ["run", str(root / "job.yaml"), "--state-dir", str(state_dir), *extra]


def assert_one_line(code: int, err: str, *named: str) -> None:
    """Exit 2, one line, the prefix, nothing of a traceback; ``named`` appear in it."""
    assert code == 2, err
    assert err.startswith(PREFIX) and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Error:" not in err, err
    for text in named:
        assert text in err, err


def database_files(state_dir: Path) -> dict[str, str]:
    """The database and its -wal/-shm files, by name, with a hash of their bytes."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(state_dir.glob("aiobatch.db*"))
    }


def wal_pages(wal: Path) -> set[int]:
    """The pages that a -wal file holds newer versions of (read from its frame headers)."""
    data = wal.read_bytes()
    if len(data) < 32:
        return set()
    page_size = int.from_bytes(data[8:12], "big")
    pages, offset = set(), 32
    while offset + 24 + page_size <= len(data):
        pages.add(int.from_bytes(data[offset : offset + 4], "big"))
        offset += 24 + page_size
    return pages


def break_page(db: Path, page: int) -> None:
    """Overwrite the b-tree header of ``page`` (1-based): SQLite's quick_check finds it."""
    with db.open("r+b") as f:
        page_size = int.from_bytes(f.read(18)[16:18], "big")  # from the file's header
        f.seek((page - 1) * page_size)
        f.write(b"\xff" * 12)


def a_used_state_dir(root: Path, state_dir: Path) -> None:
    code, err = aiobatch(*run_args(root, state_dir, "--quiet"))
    assert code == 0, err


def root_page(db: Path, table: str) -> int:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as probe:
        [(page,)] = probe.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchall()
    return int(page)


# -- the database ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_file_that_is_not_a_database_is_refused_and_left_alone(
    root: Path, state_dir: Path, command: str
) -> None:
    state_dir.mkdir()
    db = state_dir / "aiobatch.db"
    db.write_bytes(os.urandom(3 * 4096))
    before = database_files(state_dir)
    args = run_args(root, state_dir) if command == "run" else serve_args(root, state_dir)
    code, err = aiobatch(*args)
    assert_one_line(code, err, f"database {db} is corrupt", "restore a backup")
    assert database_files(state_dir) == before
    assert not (root / "ctl.sock").exists()  # a serve bound it first: removed again
    assert not (state_dir / "runtime-id").exists(), "nothing was recovered"


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_database_with_a_broken_page_is_refused_and_left_alone(
    root: Path, state_dir: Path, command: str
) -> None:
    a_used_state_dir(root, state_dir)
    db = state_dir / "aiobatch.db"
    assert database_files(state_dir).keys() == {"aiobatch.db"}  # closed cleanly: no -wal
    break_page(db, root_page(db, "jobs"))
    before = database_files(state_dir)
    args = run_args(root, state_dir) if command == "run" else serve_args(root, state_dir)
    code, err = aiobatch(*args)
    assert_one_line(code, err, f"database {db} is corrupt")
    # The read-only check had to make a -wal and a -shm (the file is in WAL mode): gone again.
    assert database_files(state_dir) == before


def test_a_broken_database_with_a_wal_keeps_both_as_they_were(
    root: Path, state_dir: Path, tmp_path: Path
) -> None:
    """As a crash leaves it: commits in the -wal, not yet in the database. Opening it for
    writing would replay the -wal into the file and remove it; the check must not."""
    a_used_state_dir(root, state_dir)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    writer = sqlite3.connect(state_dir / "aiobatch.db", isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("INSERT INTO events (job_id, body) VALUES ('x', x'00')")
        page = root_page(state_dir / "aiobatch.db", "jobs")
        for name in ("aiobatch.db", "aiobatch.db-wal"):  # while it is open: the -wal is there
            (crashed / name).write_bytes((state_dir / name).read_bytes())
    finally:
        writer.close()
    db = crashed / "aiobatch.db"
    assert page not in wal_pages(crashed / "aiobatch.db-wal")  # else the -wal would mask it
    break_page(db, page)
    before = database_files(crashed)
    assert before.keys() == {"aiobatch.db", "aiobatch.db-wal"}
    code, err = aiobatch(*run_args(root, crashed))
    assert_one_line(code, err, f"database {db} is corrupt")
    assert database_files(crashed) == before


def test_a_read_only_database_file_is_refused_and_left_alone(root: Path, state_dir: Path) -> None:
    """The state dir can be written, its database cannot (a read-only bind mount of it)."""
    needs_root()
    a_used_state_dir(root, state_dir)
    db = state_dir / "aiobatch.db"
    subprocess.run(["mount", "--bind", str(db), str(db)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(db)], check=True)
        before = database_files(state_dir)
        code, err = aiobatch(*run_args(root, state_dir))
        assert_one_line(code, err, f"database {db} cannot be opened for writing", "readonly")
        assert database_files(state_dir) == before  # no -wal or -shm left either
    finally:
        subprocess.run(["umount", "-l", str(db)], check=False)


def test_a_database_of_another_application_is_refused_and_left_alone(
    root: Path, state_dir: Path
) -> None:
    state_dir.mkdir()
    db = state_dir / "aiobatch.db"
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        other.execute("INSERT INTO notes (text) VALUES ('keep me')")
    other.close()
    before = database_files(state_dir)
    for args in (run_args(root, state_dir), serve_args(root, state_dir)):
        code, err = aiobatch(*args)
        assert_one_line(code, err, f"database {db} is not an aiobatch database (it holds notes)")
        assert database_files(state_dir) == before  # no table of ours was added to it


def test_a_database_of_a_newer_aiobatch_is_refused_and_left_alone(
    root: Path, state_dir: Path
) -> None:
    a_used_state_dir(root, state_dir)
    db = state_dir / "aiobatch.db"
    with sqlite3.connect(db) as newer:
        newer.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    newer.close()
    before = database_files(state_dir)
    code, err = aiobatch(*serve_args(root, state_dir))
    assert_one_line(code, err, f"database {db} was written by a newer aiobatch", "upgrade aiobatch")
    assert database_files(state_dir) == before


def garbage_database(state_dir: Path) -> None:
    """SQLite's header, then garbage."""
    state_dir.mkdir()
    (state_dir / "aiobatch.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4080))


@pytest.mark.anyio
async def test_embedded_a_refused_database_is_a_typed_error(state_dir: Path) -> None:
    garbage_database(state_dir)
    with pytest.raises(DatabaseUnusable) as caught:
        async with Runtime(state_dir):
            pytest.fail("started on a corrupt database")
    assert isinstance(caught.value, StartupError)
    assert "\n" not in str(caught.value) and str(state_dir / "aiobatch.db") in str(caught.value)


# -- the state dir --------------------------------------------------------------------------


def test_a_read_only_state_dir_is_one_line_and_exit_2(root: Path, read_only: Path) -> None:
    for state_dir in (read_only, read_only / "new"):  # there already, or to be made
        for args in (run_args(root, state_dir), serve_args(root, state_dir)):
            code, err = aiobatch(*args)
            assert_one_line(
                code, err, f"state dir {state_dir} cannot be written (Read-only file system)"
            )
            assert not (root / "ctl.sock").exists()


@pytest.mark.anyio
async def test_embedded_a_read_only_state_dir_is_a_typed_error(read_only: Path) -> None:
    with pytest.raises(StateDirUnusable, match="Read-only file system"):
        async with Runtime(read_only):
            pytest.fail("started on a read-only state dir")


@pytest.mark.anyio
async def test_a_state_dir_held_by_another_runtime(root: Path, service: Service) -> None:
    await service.start()
    assert service.process is not None
    holder = service.process.pid
    code, err = aiobatch(*run_args(root, service.state_dir))
    assert_one_line(code, err, f"state dir {service.state_dir} is in use", f"(pid {holder})")
    code, err = aiobatch(*serve_args(root, service.state_dir))
    assert_one_line(code, err, f"state dir {service.state_dir} is in use")
    assert not (root / "ctl.sock").exists()  # bound first, removed with the refusal
    async with service.client() as client:  # the holder goes on undisturbed
        assert (await client.health())["status"] == "ok"


# -- the socket and the address: refused before the state dir is even made ------------------


def test_a_socket_in_use_is_refused_before_the_state_dir_is_opened(
    root: Path, state_dir: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(root / "ctl.sock"))
        other.listen()
        code, err = aiobatch(*serve_args(root, state_dir))
        assert_one_line(code, err, f"already listens on {root / 'ctl.sock'}")
        assert (root / "ctl.sock").exists()  # not taken away from the one that listens
    assert not state_dir.exists()


def test_a_file_where_the_socket_goes_is_left_alone(root: Path, state_dir: Path) -> None:
    (root / "ctl.sock").write_text("mine")
    code, err = aiobatch(*serve_args(root, state_dir))
    assert_one_line(code, err, f"{root / 'ctl.sock'} exists and is not a socket")
    assert (root / "ctl.sock").read_text() == "mine"
    assert not state_dir.exists()


def unusable_addresses(busy: int) -> list[tuple[str, str]]:
    return [
        ("host.invalid:8080", "host 'host.invalid' does not resolve"),
        ("192.0.2.1:8080", "is not an address of this machine"),  # TEST-NET-1: nobody's
        (f"127.0.0.1:{busy}", "is in use by another program"),
    ]


def test_an_address_that_cannot_be_listened_on_is_refused_first(
    root: Path, state_dir: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        busy = other.getsockname()[1]
        for address, problem in unusable_addresses(busy):
            (root / "aiobatch.toml").write_text(f'[server]\nhttp = "{address}"\ntoken = "t"\n')
            code, err = aiobatch(*serve_args(root, state_dir))
            assert_one_line(code, err, f"address {address}", problem)
            assert not state_dir.exists()
            assert not (root / "ctl.sock").exists()  # bound before the address: removed


def test_run_with_an_unusable_ui_address_is_refused_first(root: Path, state_dir: Path) -> None:
    # (The config's [server] http is checked with the config; --ui is checked here.)
    with socket.create_server(("127.0.0.1", 0)) as other:
        busy = other.getsockname()[1]
        for address, problem in [
            ("127.0.0.1:99999", "port 99999 is not in 0..65535"),
            *unusable_addresses(busy),
        ]:
            code, err = aiobatch(*run_args(root, state_dir, "--ui", address))
            assert_one_line(code, err, f"address {address}", problem)
            assert not state_dir.exists()


@pytest.mark.anyio
async def test_embedded_a_busy_logview_address_is_a_typed_error(state_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        address = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(ListenerError, match=f"address {address} is in use"):
            async with Runtime(state_dir, logview=address):
                pytest.fail("started on a busy address")
    assert not await anyio.Path(state_dir).exists()


@pytest.mark.anyio
async def test_the_backlog_follows_the_system(root: Path, state_dir: Path) -> None:
    """More connects than the old fixed backlog of 128 wait in the queue, none is refused,
    while the service does not accept (it is stopped)."""
    somaxconn = int(await anyio.Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn <= 200:
        pytest.skip(f"net.core.somaxconn is {somaxconn}: no room above 128 to show")
    port = free_port()
    service = Service(root, state_dir, f'[server]\nhttp = "127.0.0.1:{port}"\ntoken = "t"\n')
    try:
        await service.start()
        assert service.process is not None
        service.process.send_signal(signal.SIGSTOP)  # nothing is accepted from now on
        peers = []
        try:
            for _ in range(200):
                peer = socket.socket()
                peer.setblocking(False)
                peers.append(peer)
                assert peer.connect_ex(("127.0.0.1", port)) in (0, 115)  # EINPROGRESS
            for peer in peers:  # each completes in the backlog: writable, no error
                with anyio.fail_after(10):
                    await anyio.wait_writable(peer)
                assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        finally:
            service.process.send_signal(signal.SIGCONT)
            for peer in peers:
                peer.close()
    finally:
        await service.close()
        service.clean_up()


# -- recovery: one job that cannot be loaded does not keep the runtime from starting ---------


@pytest.mark.anyio
async def test_a_job_that_cannot_be_loaded_fails_and_the_others_recover(
    state_dir: Path, tmp_path: Path
) -> None:
    """Hand-edited rows: one job's spec no longer decodes, another's instance has a state no
    aiobatch knows. Each is stored FAILED with a reason, logged once; the third runs on."""
    config = tmp_path / "aiobatch.toml"
    config.write_text("[compute_envs.local]\nslots = 4\n")
    gate = tmp_path / "gate"
    wait = f'until test -e "{gate}"; do sleep 0.05; done'
    async with Runtime(state_dir, config=config) as rt:
        async with rt.subscribe() as events:
            ids = [
                (await rt.submit({"name": name, "tasks": [{"name": "t", "command": wait}]})).id
                for name in ("spec", "row", "fine")
            ]
            for _ in ids:
                await until(events, instance_is("t", "RUNNING"))
    # Left while running: the instances were interrupted, the jobs are RUNNING as stored.
    spec_id, row_id, fine_id = ids
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        db.execute("UPDATE jobs SET spec = x'7b6e6f74' WHERE id = ?", (spec_id,))
        db.execute("UPDATE instances SET state = 'EXPLODED' WHERE job_id = ?", (row_id,))
    db.close()
    await anyio.Path(gate).touch()

    with capture_logs() as logs:
        async with Runtime(state_dir, config=config) as rt:
            assert (await rt.wait_job(fine_id)).status == "SUCCEEDED"
            listed = {job.id: (job.status, job.reason) for job in await rt.list_jobs()}
            damaged = await rt.job_snapshot(spec_id)
            ended = await rt.job_snapshot(row_id, instances=True)
            with pytest.raises(JobNotRetryable, match="submit it again"):
                await rt.retry_job(spec_id)  # it has no tasks to run: it would never end
    errors = [(e["event"], e["job_id"]) for e in logs if e["log_level"] == "error"]
    assert errors == [("job_unrecoverable", spec_id), ("job_unrecoverable", row_id)]
    assert listed[fine_id] == ("SUCCEEDED", None)
    status, reason = listed[spec_id]
    assert status == "FAILED" and reason is not None
    assert reason.startswith("unrecoverable: its stored spec cannot be read: ")
    assert (damaged.status, damaged.reason, damaged.tasks) == ("FAILED", reason, {})
    assert listed[row_id] == (
        "FAILED",
        "unrecoverable: ValueError: 'EXPLODED' is not a valid InstanceState",
    )
    # What had not ended never will: stored so, the job reads as a whole again.
    [task] = ended.tasks.values()
    assert (task.status, task.reason) == ("CANCELLED", "job_unrecoverable")
    assert [(i.status, i.reason) for i in task.instances or []] == [
        ("CANCELLED", "job_unrecoverable")
    ]

    with capture_logs() as logs:  # stored FAILED: the next start has nothing to say
        async with Runtime(state_dir, config=config) as rt:
            assert {job.status for job in await rt.list_jobs()} == {"FAILED", "SUCCEEDED"}
    assert [e for e in logs if e["log_level"] == "error"] == []


@pytest.mark.anyio
async def test_a_job_whose_compute_env_is_gone_fails_and_the_runtime_starts(
    state_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "aiobatch.toml"
    config.write_text('[compute_envs.other]\nkind = "local"\n')
    gate = tmp_path / "gate"
    wait = f'until test -e "{gate}"; do sleep 0.05; done'
    spec = {"name": "j", "tasks": [{"name": "t", "compute_env": "other", "command": wait}]}
    async with Runtime(state_dir, config=config) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
    config.write_text("")  # the env is gone from the config
    await anyio.Path(gate).touch()
    async with Runtime(state_dir, config=config) as rt:
        snapshot = await rt.job_snapshot(job.id)
        fresh = await rt.submit({"name": "k", "tasks": [{"name": "t", "command": "true"}]})
        assert (await fresh.wait_for_completion()).status == "SUCCEEDED"
    assert (snapshot.status, snapshot.reason) == (
        "FAILED",
        "unrecoverable: SpecError: $.tasks[0].compute_env: 'other' is not in the config",
    )
