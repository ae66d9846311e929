"""A local task inherits this process's environment as it is when the task first starts; it
is decoded again only when it changed since the last task (name or value, added or gone)."""

from __future__ import annotations

import os

import pytest

from aiobatch.contexts import InheritedEnvironment


def test_the_environment_is_decoded_once_and_again_after_each_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inherited = InheritedEnvironment()
    monkeypatch.setenv("AIOBATCH_TEST_INHERITED", "one")
    first = inherited.now()
    assert first == dict(os.environ) and first["AIOBATCH_TEST_INHERITED"] == "one"
    assert inherited.now() is first  # unchanged: not decoded again

    monkeypatch.setenv("AIOBATCH_TEST_INHERITED", "two")
    assert inherited.now()["AIOBATCH_TEST_INHERITED"] == "two"
    monkeypatch.setenv("AIOBATCH_TEST_ADDED", "é")
    assert inherited.now()["AIOBATCH_TEST_ADDED"] == "é"
    monkeypatch.delenv("AIOBATCH_TEST_INHERITED")
    assert "AIOBATCH_TEST_INHERITED" not in inherited.now()
    assert inherited.now() == dict(os.environ)
