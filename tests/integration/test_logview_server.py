"""The log view's server side: a token typed in the address becomes cookies, POSTs need the
CSRF header, and the endpoints the pages read (definition, history, paging). Real HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import anyio
import pytest
from yarl import URL

from aiobatch import Runtime
from aiobatch.events import JobStateChanged

pytestmark = pytest.mark.anyio

ONE = {"name": "one", "tasks": [{"name": "a", "command": "echo hi"}]}
PAIR = {
    "name": "pair",
    "tasks": [
        {
            "name": "in",
            "command": "true",
            "inputs": [{"from": "file:///nowhere/x", "path": "x"}],
        },
        {"name": "out", "depends_on": ["in"], "command": "true"},
    ],
}


async def test_token_in_the_address_becomes_cookies_and_posts_need_csrf(state_dir: Path) -> None:
    async with Runtime(state_dir, logview="127.0.0.1:0") as rt:
        job = await rt.submit(ONE)
        await job.wait_for_completion()
        assert rt.logview_url is not None
        # What its owner may type; the addresses aiobatch prints are links (test_access.py).
        address = f"{rt.logview_url}/ui/jobs/{job.id}?token={rt.logview_token}"
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(rt.logview_url + "/v1/jobs") as refused:
                assert refused.status == 401
                assert job.id not in await refused.text()
            async with browser.get(address + "x") as wrong:
                assert wrong.status == 401
            async with browser.get(address, allow_redirects=False) as signed_in:
                assert signed_in.status == 303
                assert signed_in.headers["Location"] == f"/ui/jobs/{job.id}"
                cookies = signed_in.headers.getall("Set-Cookie")
            port = URL(rt.logview_url).port
            session = next(c for c in cookies if c.startswith(f"aiobatch_session_{port}="))
            assert "HttpOnly" in session and "SameSite=Strict" in session
            assert rt.logview_token not in " ".join(cookies)  # derived values, not the token
            csrf = jar.filter_cookies(URL(rt.logview_url))[f"aiobatch_csrf_{port}"].value

            async with browser.get(rt.logview_url + "/v1/jobs") as listed:
                assert listed.status == 200
                assert [j["id"] for j in await listed.json()] == [job.id]
            retry = f"{rt.logview_url}/v1/jobs/{job.id}/retry"
            async with browser.post(retry) as forged:
                assert forged.status == 403
                assert "X-Aiobatch-CSRF" in (await forged.json())["error"]["message"]
            async with browser.post(retry, headers={"X-Aiobatch-CSRF": "guess"}) as forged:
                assert forged.status == 403
            async with browser.post(retry, headers={"X-Aiobatch-CSRF": csrf}) as done:
                # Reached the runtime, which refuses to retry a job that SUCCEEDED.
                assert done.status == 409
    assert rt.logview_url is not None


async def test_definition_history_and_paged_summaries(state_dir: Path) -> None:
    async with Runtime(state_dir, logview="127.0.0.1:0") as rt:
        async with rt.subscribe() as events:
            first = await rt.submit(ONE)
            second = await rt.submit(PAIR)
            ended = 0
            async for event in events:
                if isinstance(event, JobStateChanged) and event.state in ("SUCCEEDED", "FAILED"):
                    ended += 1
                    if ended == 2:
                        break
        headers = {"Authorization": f"Bearer {rt.logview_token}"}
        base = f"{rt.logview_url}/v1/jobs"
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/{second.id}/definition") as response:
                definition = await response.json()
            async with http.get(f"{base}/{second.id}/history?limit=3") as response:
                history = await response.json()
            async with http.get(f"{base}/{second.id}/history?after={history[-1]['seq']}") as r:
                rest = await r.json()
            async with http.get(f"{base}?limit=1&offset=1") as response:
                page = await response.json()
            async with http.get(f"{base}/{second.id}/history?after=x") as response:
                assert response.status == 400
    tasks = definition["tasks"]
    assert [(t["name"], t["depends_on"]) for t in tasks] == [("in", []), ("out", ["in"])]
    assert tasks[0]["inputs"] == [{"from": "file:///nowhere/x", "path": "x"}]
    assert [h["event"]["type"] for h in history] == [
        "JobSubmitted",
        "JobStateChanged",
        "TaskStateChanged",
    ]
    seqs = [h["seq"] for h in history + rest]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert rest[-1]["event"] == {**rest[-1]["event"], "type": "JobStateChanged"}
    # Newest first: the second page of one is the first job; an ended job counts all done.
    assert [(j["id"], j["done"], j["total"]) for j in page] == [(first.id, 1, 1)]


async def test_run_ui_prints_the_job_page(tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text('{"name": "seen", "tasks": [{"name": "a", "command": "true"}]}')
    aiobatch = Path(sys.executable).with_name("aiobatch")
    done = await anyio.run_process(
        [str(aiobatch), "run", str(spec), "--ui", "--quiet", "--state-dir", str(tmp_path / "s")]
    )
    line = done.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("aiobatch: job page: http://127.0.0.1:")
    assert "/ui/jobs/" in line and "?link=" in line and "token" not in line
