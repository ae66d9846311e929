"""The config of who may use the service: tokens with scopes (from a file or the
environment), socket peers by uid and gid, the socket's group and mode; and the log-view
links' key and credentials."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobatch.config import load_config
from aiobatch.errors import ConfigError, StartupError
from aiobatch.links import KEY_FILE, LinkExpired, LinkKeys, check_hours

TOKEN = "t" * 32


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aiobatch.toml"
    path.write_text(text)
    return path


def test_tokens_from_a_file_and_the_environment_with_their_scopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ci.token").write_text(TOKEN + "\n")
    monkeypatch.setenv("VIEW_TOKEN", "v" * 20)
    loaded = load_config(
        config(
            tmp_path,
            f"""
[server]
http = "127.0.0.1:0"
token = "{"o" * 20}"
[server.tokens.ci]
scope = "operate"
token_file = "{tmp_path / "ci.token"}"
[server.tokens.viewer]
scope = "read"
token_env = "VIEW_TOKEN"
""",
        )
    )
    assert loaded.server.bearer_tokens() == {
        "o" * 20: ("token", "admin"),  # the old key: an admin token
        TOKEN: ("ci", "operate"),
        "v" * 20: ("viewer", "read"),
    }
    assert TOKEN not in repr(loaded)  # the config holds where the token is, not the token


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('scope = "root"\ntoken_env = "HOME"', "$.server.tokens.x.scope: invalid enum value"),
        ('scope = "read"', "$.server.tokens.x: give exactly one of token_file and token_env"),
        (
            'scope = "read"\ntoken_env = "AIOBATCH_TEST_UNSET"',
            "$.server.tokens.x: token_env: $AIOBATCH_TEST_UNSET is not set",
        ),
        (
            'scope = "read"\ntoken_file = "/nonexistent/t"',
            "$.server.tokens.x: token_file: /nonexistent/t: cannot read",
        ),
        (
            'scope = "read"\ntoken_env = "SHORT_TOKEN"',
            "$.server.tokens.x: token_env: the token must be at least 16 printable ASCII",
        ),
        (
            'scope = "read"\ntoken_env = "HOME"\nsecret = 1',
            "$.server.tokens.x.secret: unknown field",
        ),
    ],
)
def test_a_bad_token_entry_is_named_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, problem: str
) -> None:
    monkeypatch.setenv("SHORT_TOKEN", "abc")
    monkeypatch.setenv("HOME", "h" * 20)
    monkeypatch.delenv("AIOBATCH_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as refused:
        load_config(config(tmp_path, f"[server.tokens.x]\n{text}\n"))
    assert problem in str(refused.value)
    assert "abc" not in str(refused.value)  # never the value read


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('http = "127.0.0.1:0"', "$.server.tokens: a token is required when $.server.http"),
        ('socket_mode = "0999"', "$.server.socket_mode: '0999' is not an octal mode"),
        ("socket_mode = 1024", "$.server.socket_mode: 0o2000 is not a mode between 0 and 0o777"),
        ('socket_group = "no-such-group-here"', "$.server.socket_group: no group named"),
        ('socket_group = "4294967295"', "$.server.socket_group: gid 4294967295 is not between"),
        ('allowed_gids = {nogroup = "all"}', "$.server.allowed_gids"),
        ('allowed_gids = {"no-such-group-here" = "read"}', "$.server.allowed_gids"),
        ('allowed_uids = {"-1" = "read"}', "$.server.allowed_uids['-1']: not a uid"),
        ('allowed_uids = {"4294967295" = "read"}', "$.server.allowed_uids.4294967295: not a uid"),
        ('allowed_uids = {1000 = "boss"}', "$.server.allowed_uids"),
        ('token = ""', "$.server.token: empty"),
    ],
)
def test_bad_server_access_keys_are_named_by_their_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(config(tmp_path, f"[server]\n{text}\n"))
    assert problem in str(refused.value)


def test_peers_and_socket_settings(tmp_path: Path) -> None:
    loaded = load_config(
        config(
            tmp_path,
            '[server]\nallowed_uids = {1001 = "read"}\nallowed_gids = {"0" = "operate"}\n'
            'socket_group = "root"\nsocket_mode = "0660"\n',
        )
    ).server
    assert loaded.uid_scopes() == {1001: "read"}
    assert loaded.gid_scopes() == {0: "operate"}
    assert (loaded.socket_gid(), loaded.socket_permissions()) == (0, 0o660)
    listed = load_config(config(tmp_path, "[server]\nallowed_uids = [1001, 1002]\n")).server
    assert listed.uid_scopes() == {1001: "admin", 1002: "admin"}  # the old list: admin
    assert listed.socket_permissions() == 0o600  # the default


# -- links -------------------------------------------------------------------------------


def test_the_key_is_made_private_once_and_kept(tmp_path: Path) -> None:
    keys = LinkKeys(tmp_path)
    keys.open()
    path = tmp_path / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    credential = keys.issue("job", 1)
    again = LinkKeys(tmp_path)
    again.open()
    assert again.verify(credential) is not None
    again.rotate()
    assert again.verify(credential) is None  # rotated: every link is void
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_key_file_others_may_read_or_that_holds_no_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    LinkKeys(tmp_path).open()
    os.chmod(path, 0o644)
    with pytest.raises(StartupError, match="mode 0600"):
        LinkKeys(tmp_path).open()
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(StartupError, match="does not hold a key"):
        LinkKeys(tmp_path).open()


@given(job=st.text(min_size=1, max_size=40), flip=st.integers(min_value=0))
def test_a_credential_altered_anywhere_is_refused(
    tmp_path_factory: object, job: str, flip: int
) -> None:
    keys = LinkKeys(Path("/nonexistent"))
    keys._key = b"k" * 32  # no file needed to sign
    credential = keys.issue(job, 1, now=1000.0)
    claims = keys.verify(credential, now=1000.0)
    assert claims is not None and claims.job == job and claims.scope == "read"
    position = flip % len(credential)
    changed = "A" if credential[position] != "A" else "B"
    altered = credential[:position] + changed + credential[position + 1 :]
    try:
        result = keys.verify(altered, now=1000.0)
    except LinkExpired:
        result = None
    assert result is None or result == claims  # base64's padding bits may be ignored


def test_expiry_and_the_bounds_of_hours() -> None:
    keys = LinkKeys(Path("/nonexistent"))
    keys._key = b"k" * 32
    credential = keys.issue("j", 2, now=0.0)
    assert keys.verify(credential, now=2 * 3600 - 1) is not None
    with pytest.raises(LinkExpired):
        keys.verify(credential, now=2 * 3600)
    for bad in (0, -1, math.nan, math.inf, 8760.5, True, "1"):
        with pytest.raises(ValueError, match="hours"):
            check_hours(bad)
    assert check_hours(8760) == 8760.0 and check_hours(0.01) == 0.01
