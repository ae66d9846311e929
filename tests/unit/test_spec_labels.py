"""Job labels in the spec: their bounds, each refused with ``$.labels.KEY`` and the limit, and
the ``KEY=VALUE`` filters of ``--label`` and ``?label=``."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiobatch.errors import SpecError
from aiobatch.labels import checked_labels, label_filters, parse_label_filter
from aiobatch.limits import MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS
from aiobatch.spec import decode_spec, json_schema, resolve_spec


def job(labels: Any) -> dict[str, Any]:
    return {"name": "j", "tasks": [{"name": "t", "command": "true"}], "labels": labels}


def errors_of(spec: Any) -> list[str]:
    with pytest.raises(SpecError) as info:
        resolve_spec(spec)
    return list(info.value.errors)


def test_labels_are_kept_with_the_job() -> None:
    labels = {"team": "ml", "app.example.com/run": "nightly-42", "empty": "", "x_y-z": "é ü"}
    defn = resolve_spec(job(labels))
    assert defn.labels == labels
    assert decode_spec(job(labels)).labels == labels
    assert resolve_spec(job({})).labels == {}
    assert resolve_spec({"name": "j", "tasks": [{"name": "t", "command": "true"}]}).labels == {}


def test_at_most_max_labels() -> None:
    assert len(resolve_spec(job({f"k{i}": "v" for i in range(MAX_LABELS)})).labels) == MAX_LABELS
    too_many = {f"k{i}": "v" for i in range(MAX_LABELS + 1)}
    assert errors_of(job(too_many)) == [f"$.labels: at most {MAX_LABELS} labels, got 65"]


@pytest.mark.parametrize(
    "key",
    ["", "-lead", ".lead", "/lead", "a b", "a=b", "naïve", "k" * (MAX_LABEL_KEY_CHARS + 1)],
)
def test_bad_keys_are_refused_with_the_rule(key: str) -> None:
    (error,) = errors_of(job({key: "v"}))
    assert "is not a label key: 1 to 63 of ASCII letters, digits" in error
    assert error.startswith("$.labels")


def test_longest_key_and_value_are_taken() -> None:
    key, value = "k" * MAX_LABEL_KEY_CHARS, "v" * MAX_LABEL_VALUE_CHARS
    assert resolve_spec(job({key: value})).labels == {key: value}


def test_a_value_too_long_names_the_key_and_the_limit() -> None:
    value = "v" * (MAX_LABEL_VALUE_CHARS + 1)
    assert errors_of(job({"team": value})) == [
        f"$.labels.team: value of at most {MAX_LABEL_VALUE_CHARS} characters, got 257"
    ]


@pytest.mark.parametrize("char", ["\x00", "\n", "\x1b", "\x7f", "\x9b"])
def test_control_characters_in_values_are_refused(char: str) -> None:
    errors = errors_of(job({"team": f"a{char}b"}))
    assert any(e.startswith("$.labels.team") for e in errors), errors


def test_values_must_be_strings() -> None:
    (error,) = errors_of(job({"team": ["ml"]}))
    assert error.startswith("$.labels") and "expected `str`, got `array`" in error, error


def test_json_schema_has_labels() -> None:
    assert "labels" in json_schema()["$defs"]["JobSpec"]["properties"]


def test_filters_parse_key_equals_value() -> None:
    assert parse_label_filter("team=ml") == ("team", "ml")
    assert parse_label_filter("team=") == ("team", "")
    assert parse_label_filter("a/b=x=y") == ("a/b", "x=y")  # the first '=' ends the key
    assert label_filters(["team=ml", "run=1", "team=ml"]) == {"team": "ml", "run": "1"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("team", "expected KEY=VALUE"),
        ("=ml", "is not a label key"),
        ("te am=ml", "is not a label key"),
        ("team=a\nb", "control character"),
        ("team=" + "v" * 257, "at most 256 characters"),
    ],
)
def test_malformed_filters_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_label_filter(text)


def test_one_key_with_two_values_is_refused() -> None:
    with pytest.raises(ValueError, match="team is given another value too"):
        label_filters(["team=ml", "team=web"])


def test_python_filters_are_checked_as_labels() -> None:
    assert checked_labels({"team": "ml"}) == {"team": "ml"}
    with pytest.raises(ValueError, match=r"labels\['a=b'\]: key 'a=b' is not a label key"):
        checked_labels({"a=b": "c"})


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}", fullmatch=True),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cc"]), max_size=256),
        max_size=MAX_LABELS,
    )
)
def test_every_label_within_bounds_is_taken_and_filters_back(labels: dict[str, str]) -> None:
    assert resolve_spec(job(labels)).labels == labels
    assert label_filters([f"{k}={v}" for k, v in labels.items()]) == labels
