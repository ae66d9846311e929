"""Webhook targets where they enter (the config's [[notifications]], a spec's notify:) with
their bounds and field paths, and what a delivery is made of: which events a target hears
of, the body, its signature and its id."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobatch.config import Config, load_config
from aiobatch.errors import ConfigError, SpecError
from aiobatch.events import (
    InstanceStateChanged,
    InstanceStopRequested,
    JobStateChanged,
    JobSubmitted,
    TaskStateChanged,
    event_encoder,
)
from aiobatch.notifications import (
    body_bytes,
    delivery_id,
    event_tags,
    headers,
    notify_type,
)
from aiobatch.notify_types import (
    MAX_NOTIFY_BODY_BYTES,
    MAX_NOTIFY_TARGETS,
    MAX_NOTIFY_URL_CHARS,
    NOTIFY_EVENTS,
    NotifyDef,
    NotifySpec,
)
from aiobatch.spec import JobDef, decode_spec, resolve_spec

SECRET_LOOKALIKE = "hunter2-not-a-source"


def config_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "aiobatch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [line.removeprefix(f"{path}: ") for line in str(info.value).splitlines()]


def spec_problems(notify: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve_spec(job(notify))
    return list(info.value.errors)


def job(notify: Any) -> dict[str, Any]:
    return {"name": "j", "tasks": [{"name": "a", "command": "true"}], "notify": notify}


# -- the config ------------------------------------------------------------------------------


def test_config_targets_with_their_defaults_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "aiobatch.toml"
    path.write_text(
        '[[notifications]]\nurl = "https://hooks.example.com/a"\nevents = ["job_failed"]\n'
        '[[notifications]]\nurl = "http://127.0.0.1:8080/b?x=1"\n'
        'events = ["job_succeeded", "instance_failed"]\nsecret = "env:HOOK_KEY"\n'
        'tries = 3\nbackoff = "250ms"\ntimeout = 5\n'
    )
    config = load_config(path)
    assert config.notify_targets() == (
        NotifyDef(url="https://hooks.example.com/a", events=("job_failed",)),
        NotifyDef(
            url="http://127.0.0.1:8080/b?x=1",
            events=("job_succeeded", "instance_failed"),
            secret="env:HOOK_KEY",
            tries=3,
            backoff_s=0.25,
            timeout_s=5.0,
        ),
    )
    first = config.notify_targets()[0]
    assert (first.tries, first.backoff_s, first.timeout_s, first.secret) == (8, 1.0, 10.0, None)
    assert load_config(None).notify_targets() == ()


def test_config_problems_name_their_field_and_bound_all_at_once(tmp_path: Path) -> None:
    text = (
        '[[notifications]]\nurl = "ftp://hooks.example.com/"\nevents = ["job_failed", "job_gone"]\n'
        "tries = 21\n"
        '[[notifications]]\nurl = "https://hooks.example.com/"\n'
        'events = ["job_failed", "task_failed", "job_failed"]\n'
        f'secret = "{SECRET_LOOKALIKE}"\ntimeout = "301s"\nbackoff = "2h"\n'
        '[[notifications]]\nurl = "https://hooks.example.com/"\nevents = []\n'
        '[[notifications]]\nurl = "https://user:pw@hooks.example.com/"\nevents = ["job_failed"]\n'
        f'[[notifications]]\nurl = "https://h/{"x" * MAX_NOTIFY_URL_CHARS}"\n'
        'events = ["job_failed"]\n'
        '[[notifications]]\nurl = "https:///path"\nevents = ["job_failed"]\nsecret = "file:rel"\n'
        '[[notifications]]\nurl = "http://h:99999/"\nevents = ["job_failed"]\nbackoff = nan\n'
        '[[notifications]]\nurl = "http://h/a b"\nevents = ["job_failed"]\nsurprise = 1\n'
    )
    problems = config_problems(tmp_path, text)
    every = ", ".join(NOTIFY_EVENTS)
    assert problems == [
        f"$.notifications[0].events[1]: invalid enum value 'job_gone' (one of: {every})",
        "$.notifications[0].tries: expected `int` <= 20",
        "$.notifications[7].surprise: unknown field",
        "$.notifications[1].events[2]: job_failed is listed twice",
        "$.notifications[1].secret: not a secret source (not shown: it may be the secret "
        "itself); a source is file:/abs/path (read when an attempt starts) or env:VAR (the "
        "runtime's environment)",
        "$.notifications[1].backoff: at most 3600 seconds, got '2h'",
        "$.notifications[1].timeout: at most 300 seconds, got '301s'",
        "$.notifications[2].url: the same URL as $.notifications[1]",
        "$.notifications[2].events: needs at least one event",
        "$.notifications[3].url: credentials in the URL are not taken (not shown); sign with "
        "`secret` instead",
        f"$.notifications[4].url: at most {MAX_NOTIFY_URL_CHARS} characters, "
        f"got {MAX_NOTIFY_URL_CHARS + 10}",
        "$.notifications[5].url: 'https:///path' names no host",
        "$.notifications[5].secret: a file: source needs an absolute path (file:/abs/path)",
        "$.notifications[6].url: not a URL (Port out of range 0-65535)",
        "$.notifications[6].backoff: bad duration nan: must be a number of seconds, not NaN",
        "$.notifications[7].url: 'http://h/a b' holds whitespace or a control character",
    ]
    assert not any(SECRET_LOOKALIKE in problem or "pw@" in problem for problem in problems)


def test_config_takes_at_most_16_targets_and_an_array_of_tables(tmp_path: Path) -> None:
    entry = '[[notifications]]\nurl = "https://h/{}"\nevents = ["job_failed"]\n'
    many = "".join(entry.format(i) for i in range(MAX_NOTIFY_TARGETS + 1))
    assert config_problems(tmp_path, many) == [
        f"$.notifications: at most {MAX_NOTIFY_TARGETS} targets, got {MAX_NOTIFY_TARGETS + 1}"
    ]
    path = tmp_path / "ok.toml"
    path.write_text("".join(entry.format(i) for i in range(MAX_NOTIFY_TARGETS)))
    assert len(load_config(path).notify_targets()) == MAX_NOTIFY_TARGETS
    assert config_problems(tmp_path, '[notifications]\nurl = "https://h/"\n') == [
        "$.notifications: expected a list of targets, got dict"
    ]


def test_a_config_made_in_python_is_checked_when_its_targets_are_read() -> None:
    config = Config(notifications=(NotifySpec(url="gopher://h/", events=("job_failed",)),))
    with pytest.raises(ConfigError, match=r"\$\.notifications\[0\]\.url: 'gopher://h/' is not"):
        config.notify_targets()


# -- the spec --------------------------------------------------------------------------------


def test_a_job_s_targets_are_resolved_stored_and_decoded_back() -> None:
    defn = resolve_spec(
        job([{"url": "https://h/x", "events": ["job_failed", "task_failed"], "secret": "file:/k"}])
    )
    assert defn.notify == (
        NotifyDef(url="https://h/x", events=("job_failed", "task_failed"), secret="file:/k"),
    )
    stored = msgspec.json.encode(defn)
    assert msgspec.json.decode(stored, type=JobDef) == defn
    assert decode_spec(job([{"url": "https://h/x", "events": ["job_failed"]}])).notify == (
        NotifySpec(url="https://h/x", events=("job_failed",)),
    )
    assert resolve_spec(job([])).notify == ()


def test_a_spec_stored_before_notifications_still_decodes() -> None:
    stored = json.loads(msgspec.json.encode(resolve_spec(job([]))))
    del stored["notify"]
    assert msgspec.json.decode(json.dumps(stored), type=JobDef).notify == ()


def test_spec_problems_name_their_field() -> None:
    assert spec_problems(
        [
            {"url": "https://h/", "events": ["job_failed"], "secret": SECRET_LOOKALIKE},
            {"url": "file:///etc/passwd", "events": ["instance_retried"]},
            {"url": "https://h/", "events": ["job_failed"], "tries": 0},
            "https://h/",
        ]
    ) == [
        "$.notify[1].events[0]: invalid enum value 'instance_retried' (one of: "
        f"{', '.join(NOTIFY_EVENTS)})",
        "$.notify[2].tries: expected `int` >= 1",
        "$.notify[3]: expected `object`, got `str`",
        "$.notify[0].secret: not a secret source (not shown: it may be the secret itself); a "
        "source is file:/abs/path (read when an attempt starts) or env:VAR (the runtime's "
        "environment)",
        "$.notify[2].url: the same URL as $.notify[0]",
    ]
    assert spec_problems({"url": "https://h/"}) == ["$.notify: expected `array`, got `object`"]
    many = [{"url": f"https://h/{i}", "events": ["job_failed"]} for i in range(17)]
    assert spec_problems(many) == [f"$.notify: at most {MAX_NOTIFY_TARGETS} targets, got 17"]


# -- a delivery ------------------------------------------------------------------------------


def test_which_events_a_target_can_hear_of() -> None:
    def job_state(state: str) -> JobStateChanged:
        return JobStateChanged(job_id="j", state=state, reason=None, ts=1.0)

    def instance(state: str) -> InstanceStateChanged:
        return InstanceStateChanged(
            job_id="j", task="t", index=0, attempt=1, state=state, reason=None, ts=1.0
        )

    assert notify_type(JobSubmitted(job_id="j", name="n", ts=1.0)) == "job_submitted"
    assert [notify_type(job_state(s)) for s in ("RUNNING", "FAILED", "SUBMITTED")] == [
        "job_running",
        "job_failed",
        None,
    ]
    task = TaskStateChanged(job_id="j", task="t", state="SKIPPED", reason=None, ts=1.0)
    assert notify_type(task) == "task_skipped"
    assert notify_type(msgspec.structs.replace(task, state="READY")) is None
    # A failed attempt that is retried goes back to PENDING: only the last one is a failure.
    assert [notify_type(instance(s)) for s in ("FAILED", "PENDING", "RUNNING")] == [
        "instance_failed",
        None,
        None,
    ]
    stop = InstanceStopRequested(job_id="j", task="t", index=0, attempt=1, reason="r", ts=1.0)
    assert notify_type(stop) is None
    assert event_tags({"job_failed", "job_submitted", "instance_failed"}) == {
        "JobStateChanged",
        "JobSubmitted",
        "InstanceStateChanged",
    }
    # Every type a target may ask for is one some event has.
    assert all(event_tags({kind}) for kind in NOTIFY_EVENTS)


def test_the_body_carries_the_event_as_the_events_api_encodes_it() -> None:
    event = JobStateChanged(job_id="j1", state="FAILED", reason="task_failed: a", ts=5.0)
    encoded = event_encoder.encode(event)
    body = body_bytes("job_failed", "j1", "nightly", 7, "d-1", encoded)
    assert json.loads(body) == {
        "type": "job_failed",
        "job_id": "j1",
        "job_name": "nightly",
        "seq": 7,
        "delivery": "d-1",
        "event": json.loads(encoded),
    }
    big = event_encoder.encode(msgspec.structs.replace(event, reason="x" * MAX_NOTIFY_BODY_BYTES))
    cut = json.loads(body_bytes("job_failed", "j1", "nightly", 7, "d-1", big))
    assert (cut["event"], cut["truncated"], cut["seq"]) == (None, True, 7)


def test_a_delivery_id_is_stable_and_names_one_event_to_one_target() -> None:
    first = delivery_id("config:https://h/", "j1", 7)
    assert first == delivery_id("config:https://h/", "j1", 7)
    others = {
        delivery_id("job:0", "j1", 7),
        delivery_id("config:https://h/", "j2", 7),
        delivery_id("config:https://h/", "j1", 8),
    }
    assert first not in others and len(others) == 3


@given(
    body=st.binary(max_size=2048),
    secret=st.text(st.characters(codec="utf-8"), min_size=1, max_size=64),
)
def test_the_signature_is_the_hmac_sha256_of_the_exact_body(body: bytes, secret: str) -> None:
    sent = headers("job_failed", "d-1", body, secret)
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert sent["X-Aiobatch-Signature"] == f"sha256={expected}"
    assert (sent["X-Aiobatch-Event"], sent["X-Aiobatch-Delivery"]) == ("job_failed", "d-1")
    tampered = headers("job_failed", "d-1", body + b" ", secret)["X-Aiobatch-Signature"]
    assert tampered != sent["X-Aiobatch-Signature"]
    assert "X-Aiobatch-Signature" not in headers("job_failed", "d-1", body, None)
