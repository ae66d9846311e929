"""Who may do what, against the real ``aiobatch serve``: each scope over every route of the
one table (``wire.ROUTE_ACCESS``), log-view links (one job, read-only, until they expire or
the key is rotated), and the admin token found nowhere it was not put."""

from __future__ import annotations

import json
import subprocess
import time

import aiohttp
import anyio
import pytest
from yarl import URL

from aiobatch import wire
from aiobatch.links import KEY_FILE, LinkKeys
from aiobatch.server import ControlServer, Limits
from tests.helpers import Gates
from tests.integration.service import AIOBATCH, Service

pytestmark = pytest.mark.anyio

ADMIN, OPERATE, READ = "admin-" + "a" * 40, "operate-" + "o" * 40, "read-" + "r" * 40
TOKENS = {"admin": ADMIN, "operate": OPERATE, "read": READ}
ONE = {"name": "one", "tasks": [{"name": "a", "command": "echo hi"}]}
CONFIG = """
[server]
http = "127.0.0.1:0"
[server.tokens.boss]
scope = "admin"
token_file = "{admin_file}"
[server.tokens.ops]
scope = "operate"
token_env = "OPS_TOKEN"
[server.tokens.viewer]
scope = "read"
token_env = "VIEW_TOKEN"
"""


async def start(service: Service) -> str:
    """The service with a token of each scope (the admin's in a file); its HTTP address."""
    admin_file = service.root / "admin.token"
    admin_file.write_text(ADMIN + "\n")
    service.config.write_text(CONFIG.format(admin_file=admin_file))
    await service.start(OPS_TOKEN=OPERATE, VIEW_TOKEN=READ)
    async with service.client() as client:
        url: str = (await client.health())["server"]["http"]
    return url


async def finished_job(service: Service, name: str = "one") -> str:
    async with service.client() as client:
        job = await client.submit({**ONE, "name": name})
        await job.wait_for_completion()
        return job.id


def needed(method: str, path: str) -> wire.Scope:
    """The issue's rule, written apart from the table: submitting, deleting, changing an env
    (and revoking every link) is admin, every other write (stop, suspend, resume, retry,
    stop instance) operate, every read read."""
    if method in ("DELETE", "PATCH"):  # deleting a job, changing a compute env
        return "admin"
    if method == "POST":
        admin = (wire.API_PREFIX + "/jobs", wire.API_PREFIX + "/logview/rotate")
        return "admin" if path in admin else "operate"
    return "read"


def concrete(path: str, job_id: str) -> str:
    """A route of the table as a request: its parameters filled in for ``job_id``."""
    if path == "/ui/static/{path}":
        return "/ui/static/lib.js"
    url = path.format(job_id=job_id, task="a", index="0", stream="stdout", name="local")
    return url + (f"?job={job_id}" if path == wire.API_PREFIX + "/events" else "")


async def status_of(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> int:
    body = json.dumps(ONE).encode() if method == "POST" and url.endswith("/v1/jobs") else None
    async with http.request(
        method, url, headers=headers, data=body, allow_redirects=False
    ) as answer:
        return answer.status  # leaves a stream (events, follow) at its headers


def test_every_route_of_the_server_has_its_scope_in_the_table() -> None:
    """A route added to the server without a line in wire.ROUTE_ACCESS fails here (and is
    refused to everyone by the middleware meanwhile)."""
    app = ControlServer(None)._application(Limits())  # type: ignore[arg-type]
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert served == set(wire.ROUTE_ACCESS)


async def test_each_scope_over_every_route(service: Service) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    async with aiohttp.ClientSession() as http:
        for method, path in wire.ROUTE_ACCESS:
            target = url + concrete(path, job_id)
            assert await status_of(http, method, target, {}) == 401, (method, path)
            for scope, token in TOKENS.items():
                status = await status_of(http, method, target, {"Authorization": f"Bearer {token}"})
                allowed = wire.scope_covers(scope, needed(method, path))  # type: ignore[arg-type]
                if allowed:
                    assert status not in (401, 403), (scope, method, path, status)
                else:
                    assert status == 403, (scope, method, path, status)
        async with http.get(
            url + "/v1/session", headers={"Authorization": f"Bearer {OPERATE}"}
        ) as session:
            assert await session.json() == {
                "scope": "operate",
                "actions": ["stop", "suspend", "resume", "retry"],
                "job": None,
                "expires": None,
            }


async def sign_in(http: aiohttp.ClientSession, address: str) -> str:
    """Open a link as a browser does; the address it lands on."""
    async with http.get(address, allow_redirects=False) as first:
        assert first.status == 303
        cookie = next(c for c in first.headers.getall("Set-Cookie") if "aiobatch_link_" in c)
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=" in cookie
        location = first.headers["Location"]
    assert "link=" not in location
    return location


async def test_a_link_shows_its_job_and_nothing_else(service: Service) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    other = await finished_job(service, "other")
    async with service.client() as client:
        address = await client.logview_address(job_id, hours=2)
    assert address is not None and address.startswith(f"{url}/ui/jobs/{job_id}?link=l1.")
    assert all(token not in address for token in TOKENS.values())
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        assert await sign_in(browser, address) == f"/ui/jobs/{job_id}"
        csrf = {"X-Aiobatch-CSRF": "forged"}
        for (method, path), access in wire.ROUTE_ACCESS.items():
            for job in (job_id, other):
                status = await status_of(browser, method, url + concrete(path, job), csrf)
                if access.link == "any" or (access.link is not None and job == job_id):
                    assert status == 200, (method, path, job, status)
                else:
                    assert status == 403, (method, path, job, status)
        async with browser.get(f"{url}/v1/events") as everything:
            assert everything.status == 403
        async with browser.get(f"{url}/v1/session") as session:
            answer = await session.json()
        assert answer["scope"] == "read" and answer["actions"] == []
        assert answer["job"] == job_id
        assert 2 * 3600 - 60 < answer["expires"] - time.time() <= 2 * 3600 + 1


async def test_an_expired_link_gets_401_and_a_page_that_says_so(service: Service) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    keys = LinkKeys(service.state_dir)  # the service's own key, to sign a link in the past
    keys.open()
    expired = keys.issue(job_id, 1, now=time.time() - 2 * 3600)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{url}/ui/jobs/{job_id}?link={expired}") as page:
            assert page.status == 401
            assert page.content_type == "text/html"
            assert "This link has expired" in await page.text()
        port = URL(url).port
        cookies = {f"aiobatch_link_{port}": expired}
        async with browser.get(f"{url}/v1/jobs/{job_id}", cookies=cookies) as api:
            assert api.status == 401
            assert "expired" in (await api.json())["error"]["message"]
        async with browser.get(f"{url}/ui/jobs/{job_id}", cookies=cookies) as page:
            assert page.status == 401 and "This link has expired" in await page.text()
        # Still valid: the same key signs the same job for an hour from now.
        fresh = keys.issue(job_id, 1)
        async with browser.get(
            f"{url}/v1/jobs/{job_id}", cookies={f"aiobatch_link_{port}": fresh}
        ) as ok:
            assert ok.status == 200


async def test_a_link_cookie_of_bytes_that_are_not_text_gets_401_not_an_error(
    service: Service,
) -> None:
    """Anyone may send any bytes: a cookie that is no link is refused like a forged one."""
    address = URL(await start(service))
    assert address.host is not None and address.port is not None
    cookie = b"aiobatch_link_%d=l1.\xff\xfe.abc" % address.port
    request = b"GET /v1/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: %b\r\n\r\n"
    async with await anyio.connect_tcp(address.host, address.port) as stream:
        await stream.send(request % cookie)
        answer = b""
        with anyio.fail_after(10):
            async for chunk in stream:
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


async def test_a_new_key_revokes_every_link_and_a_restart_keeps_them(service: Service) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    async with service.client() as client:
        address = await client.logview_address(job_id)
    assert address is not None
    credential = address.split("?link=")[1]
    key = service.state_dir / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600

    async def status(base: str) -> int:
        async with aiohttp.ClientSession() as browser:
            port = URL(base).port
            cookies = {f"aiobatch_link_{port}": credential}
            async with browser.get(f"{base}/v1/jobs/{job_id}", cookies=cookies) as answer:
                return answer.status

    assert await status(url) == 200
    await service.close()
    url = await start(service)  # the same key: links survive a restart
    assert await status(url) == 200
    await service.close()
    key.unlink()  # the documented rotation: remove the key, start again
    url = await start(service)
    assert await status(url) == 401


async def test_cli_logview_rotate_revokes_every_link_at_once(service: Service) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    async with service.client() as client:
        address = await client.logview_address(job_id)
    assert address is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await sign_in(browser, address)
        async with browser.get(f"{url}/v1/jobs/{job_id}") as before:
            assert before.status == 200
        done = await anyio.run_process(
            [str(AIOBATCH), "logview", "--rotate", "--socket", str(service.socket)]
        )
        assert b"revoked" in done.stdout
        async with browser.get(f"{url}/v1/jobs/{job_id}") as after:
            assert after.status == 401
            assert "revoked" in (await after.json())["error"]["message"]
    async with service.client() as client:  # new links work
        fresh = await client.logview_address(job_id)
    assert fresh is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await sign_in(browser, fresh)
        async with browser.get(f"{url}/v1/jobs/{job_id}") as again:
            assert again.status == 200


async def test_revoking_links_cuts_what_they_are_still_being_sent(service: Service) -> None:
    """A link's event stream and its wait, opened on a running job, end at the rotation:
    the stream is cut (it must not look complete), the wait answers 401."""
    url = await start(service)
    gates = Gates(service.root / "gates", 1)
    async with service.client() as client:
        job = await client.submit(
            {"name": "held", "tasks": [{"name": "a", "command": gates.command}]}
        )
        address = await client.logview_address(job.id)
    assert address is not None
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        await sign_in(browser, address)
        events = await browser.get(f"{url}/v1/events?job={job.id}")
        assert events.status == 200
        await events.content.readline()  # the stream runs: its first event is in
        async with anyio.create_task_group() as tg:
            waited: list[int] = []

            async def wait() -> None:
                async with browser.get(f"{url}/v1/jobs/{job.id}/wait") as answer:
                    waited.append(answer.status)

            tg.start_soon(wait)
            async with service.client() as client:
                with anyio.fail_after(10):
                    while (await client.health())["server"]["long_requests"] < 2:  # noqa: ASYNC110
                        await anyio.sleep(0.05)  # the server says no more: ask again
                await anyio.run_process(
                    [str(AIOBATCH), "logview", "--rotate", "--socket", str(service.socket)]
                )
        with anyio.fail_after(10):
            cut = await read_to_the_end(events)
        assert isinstance(cut, aiohttp.ClientPayloadError)  # cut, not ended as if complete
        assert waited == [401]
    await gates.release(0)


async def read_to_the_end(response: aiohttp.ClientResponse) -> Exception | None:
    """Read a streamed answer to its end; the error that cut it, if one did."""
    try:
        while await response.content.readline():
            pass
    except aiohttp.ClientPayloadError as exc:
        return exc
    finally:
        response.release()
    return None


@pytest.mark.parametrize("arguments", [["logview"], ["logview", "JOB", "--rotate"]])
def test_cli_logview_wants_a_job_or_rotate(arguments: list[str]) -> None:
    done = subprocess.run(
        [str(AIOBATCH), *arguments, "--socket", "/nonexistent.sock"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "give a JOB, or --rotate" in done.stderr


@pytest.mark.parametrize("hours", ["0", "-1", "nan", "inf", "8761", "x"])
def test_cli_logview_refuses_hours_out_of_range(hours: str) -> None:
    done = subprocess.run(
        [str(AIOBATCH), "logview", "JOB", "--hours", hours, "--socket", "/nonexistent.sock"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "--hours" in done.stderr and "Traceback" not in done.stderr


async def test_cli_logview_prints_a_link_and_the_token_is_nowhere(
    service: Service, capfd: pytest.CaptureFixture[str]
) -> None:
    url = await start(service)
    job_id = await finished_job(service)
    done = await anyio.run_process(
        [str(AIOBATCH), "logview", job_id, "--hours", "0.5", "--socket", str(service.socket)]
    )
    address = done.stdout.decode().strip()
    assert address.startswith(f"{url}/ui/jobs/{job_id}?link=")
    status = await anyio.run_process(
        [str(AIOBATCH), "status", job_id, "--json", "--socket", str(service.socket)]
    )
    pages = [address, done.stderr.decode(), status.stdout.decode(), status.stderr.decode()]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(address) as page:
            pages.append(await page.text())
        for path in ("", "/definition", "/history", "/tasks/a", "/tasks/a/instances/0"):
            async with browser.get(f"{url}/v1/jobs/{job_id}{path}") as answer:
                assert answer.status == 200
                pages.append(await answer.text())
        for cookie in browser.cookie_jar:
            pages.append(cookie.value)
    await service.close()
    captured = capfd.readouterr()
    assert "server_started" in captured.err + captured.out  # the service's log, searched too
    pages.append(captured.err + captured.out)
    for secret in TOKENS.values():
        assert all(secret not in text for text in pages)
        for file in service.state_dir.rglob("*"):
            if file.is_file():
                assert secret.encode() not in file.read_bytes(), file
