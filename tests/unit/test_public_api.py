from __future__ import annotations

import io
import json
import subprocess
import sys

import structlog

import aiobatch
from aiobatch.logging import configure_logging


def test_every_public_name_imports() -> None:
    for name in aiobatch.__all__:
        assert getattr(aiobatch, name) is not None, name


def test_import_pulls_in_no_docker_or_s3_client() -> None:
    code = (
        "import sys, aiobatch, aiobatch.cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiodocker', 'aiobotocore', 'botocore', 'yaml', 'tqdm')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_logs_are_json_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream)
    try:
        structlog.get_logger("t").info("job_submitted", job_id="j1")
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["event"], record["job_id"], record["level"]) == ("job_submitted", "j1", "info")


def test_logs_are_readable_on_the_console() -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream)
    try:
        structlog.get_logger("t").info("job_submitted", job_id="j1")
    finally:
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "job_submitted" in text and "job_id=j1" in text
    assert not text.lstrip().startswith("{")


def test_secrets_never_reach_the_log() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    try:
        structlog.get_logger("t").info(
            "storage_opened", endpoint="http://s3", secret_access_key="s3cr3t", token="t0k"
        )
    finally:
        structlog.reset_defaults()
    record = json.loads(stream.getvalue())
    assert record["endpoint"] == "http://s3"
    assert record["secret_access_key"] == record["token"] == "[redacted]"
    assert "s3cr3t" not in stream.getvalue()
