"""The unix socket's peers by uid and by group, each with its scope, against the real
``aiobatch serve``: the peers are curl run as another uid (setpriv) with the groups given."""

from __future__ import annotations

import json
import shutil
import stat

import anyio
import pytest

from tests.integration.service import Service

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("setpriv") is None or shutil.which("curl") is None,
        reason="needs setpriv and curl",
    ),
]

NOBODY, OTHER = 65534, 65533
READERS, OPERATORS = 4242, 4343
CONFIG = f"""
[server]
socket_group = "{READERS}"
socket_mode = "0660"
allowed_uids = {{{OTHER} = "admin"}}
allowed_gids = {{"{READERS}" = "read", "{OPERATORS}" = "operate"}}
"""


async def as_peer(service: Service, *ids: str, method: str = "GET", path: str) -> tuple[int, str]:
    """curl's exit code and the answer's status and body, run with setpriv ``ids``."""
    done = await anyio.run_process(
        [
            "setpriv",
            *ids,
            "curl",
            "-s",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            str(service.socket),
            f"http://aiobatch{path}",
        ],
        check=False,
    )
    return done.returncode, done.stdout.decode()


async def session_scope(service: Service, *ids: str) -> str | None:
    code, out = await as_peer(service, *ids, path="/v1/session")
    if code != 0:
        return None  # could not connect at all
    body, _, status = out.rpartition("\n")
    if status != "200":
        return f"HTTP {status}"
    scope: str = json.loads(body)["scope"]
    return scope


async def test_peers_by_group_and_uid_get_their_scope(service: Service) -> None:
    service.root.chmod(0o755)  # the socket's directory: other users may reach into it
    service.config.write_text(CONFIG)
    await service.start()
    info = service.socket.stat()
    assert stat.S_IMODE(info.st_mode) == 0o660 and info.st_gid == READERS

    nobody = (f"--reuid={NOBODY}", f"--regid={NOBODY}")
    # In the socket's group (a supplementary one): may connect, and reads.
    assert await session_scope(service, *nobody, f"--groups={READERS}") == "read"
    # The operators' group as a supplementary group too: the higher scope wins.
    both = (*nobody, f"--groups={READERS},{OPERATORS}")
    assert await session_scope(service, *both) == "operate"
    # The operators' group as the primary one (SO_PEERCRED's gid).
    primary = (f"--reuid={NOBODY}", f"--regid={OPERATORS}", f"--groups={READERS}")
    assert await session_scope(service, *primary) == "operate"
    # A uid with its own scope, whose groups have none.
    other = (f"--reuid={OTHER}", f"--regid={READERS}", "--clear-groups")
    assert await session_scope(service, *other) == "admin"
    # The socket's group as the primary one, no supplementary groups.
    reader = (f"--reuid={NOBODY}", f"--regid={READERS}", "--clear-groups")
    assert await session_scope(service, *reader) == "read"
    # Not in the socket's group: the file's mode keeps it out before any request.
    assert await session_scope(service, *nobody, "--clear-groups") is None

    async with service.client() as client:  # the service's own uid: admin
        job = await client.submit({"name": "j", "tasks": [{"name": "a", "command": "sleep 30"}]})
    stop = f"/v1/jobs/{job.id}/stop"
    code, out = await as_peer(service, *nobody, f"--groups={READERS}", method="POST", path=stop)
    assert code == 0 and out.endswith("\n403") and "read scope" in out
    code, out = await as_peer(service, *both, method="POST", path=stop)
    assert code == 0 and out.endswith("\n200")
    async with service.client() as client:
        await (await client.get_job(job.id)).wait_for_completion()
        assert (await client.job_snapshot(job.id)).status == "CANCELLED"


async def test_a_peer_with_no_scope_is_refused(service: Service) -> None:
    service.root.chmod(0o755)
    service.config.write_text(
        f'[server]\nsocket_group = "{READERS}"\nsocket_mode = "0660"\n'
        f'allowed_gids = {{"{OPERATORS}" = "operate"}}\n'
    )
    await service.start()
    ids = (f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={READERS}")
    assert await session_scope(service, *ids) == "HTTP 403"
