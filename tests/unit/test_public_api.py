from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

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


def _python(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env or None
    )
    return done.stdout


def test_structlog_waits_for_the_first_line_at_the_configured_level() -> None:
    out = _python(
        "import sys\n"
        "from aiobatch.logging import configure_logging, get_logger\n"
        "configure_logging('json', 'warning', sys.stdout)\n"
        "log = get_logger('t')\n"
        "log.info('below_the_level')\n"
        "log.debug('below_the_level')\n"
        "print('structlog' in sys.modules)\n"
        "log.warning('at_the_level', job_id='j1')\n"
        "print('structlog' in sys.modules)\n"
    )
    before, line, after = out.splitlines()
    assert (before, after) == ("False", "True")
    record = json.loads(line)
    assert (record["event"], record["level"], record["job_id"]) == ("at_the_level", "warning", "j1")


def test_a_configuration_made_after_ours_wins() -> None:
    # A host program configures structlog itself after aiobatch's configure_logging, before
    # aiobatch logs anything: aiobatch's lines go where the host said.
    out = _python(
        "import sys\n"
        "from aiobatch.logging import configure_logging, get_logger\n"
        "configure_logging('json', 'warning', sys.stderr)\n"
        "import structlog\n"
        "structlog.configure(processors=[structlog.processors.KeyValueRenderer()],\n"
        "                    logger_factory=structlog.PrintLoggerFactory(sys.stdout))\n"
        "get_logger('t').info('from_aiobatch')\n"
    )
    assert out.strip() == "event='from_aiobatch'"


def test_a_job_that_succeeds_imports_no_structlog(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: one\ntasks:\n  - name: t\n    command: ['true']\n")
    out = _python(
        "import sys\n"
        "from aiobatch import cli\n"
        f"sys.argv = ['aiobatch', 'run', {str(tmp_path / 'job.yaml')!r}]\n"
        "code = cli.main()\n"
        "print(code, 'structlog' in sys.modules)\n",
        AIOBATCH_STATE_DIR=str(tmp_path / "state"),
        PATH=os.environ["PATH"],
    )
    assert out.splitlines()[-1] == "0 False"


def test_a_first_line_that_cannot_import_structlog_is_written_plainly_and_never_raises() -> None:
    # No file descriptor or memory left to import structlog, the very trouble a first line
    # may report: the line goes to stderr as it is (secrets redacted), and once the import
    # works again, lines go through structlog.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from aiobatch.logging import configure_logging, get_logger\n"
            "configure_logging('json', 'warning', sys.stdout)\n"
            "sys.modules['structlog'] = None  # import structlog raises ImportError\n"
            "log = get_logger('t')\n"
            "log.error('dispatch_paused', reason='system_limit', token='t0k')\n"
            "log.bind(job_id='j1').warning('bound')\n"
            "del sys.modules['structlog']\n"
            "log.error('imported')\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    first, second = done.stderr.splitlines()
    assert first.startswith("error dispatch_paused reason='system_limit' token='[redacted]' ")
    assert second.startswith("warning bound job_id='j1' ")
    assert json.loads(done.stdout)["event"] == "imported"
