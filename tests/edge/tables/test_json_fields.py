"""edge.tables.json_fields: a JSON object checked against a dataclass's field types, without a table around it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge.tables.json_fields import INT_LIMIT, assert_checkable, checked_fields, json_type, refuse_unknown


class SpecError(ValueError):
    """The error the caller chooses (edge.tables.table passes TableError)."""


@dataclass(frozen=True)
class Spec:
    name: str
    count: int
    ratio: float
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    span: tuple[float, float] | None = None
    limit: int | None = None


GOOD = {"name": "a", "count": 3, "ratio": 0.5}


def check(d: Any, allow_nan: bool = False) -> dict[str, Any]:
    return checked_fields(Spec, d, "spec.json: 'spec'", "fix the file", allow_nan, error=SpecError)


def test_a_good_object_gives_its_keyword_arguments():
    kw = check({**GOOD, "labels": {"x": "y"}, "extra": {"k": [1]}, "span": [1, 2.5], "limit": None})
    assert Spec(**kw) == Spec("a", 3, 0.5, {"x": "y"}, {"k": [1]}, (1.0, 2.5), None)
    assert isinstance(kw["span"][0], float)


def test_missing_optional_keys_are_left_to_the_defaults():
    assert check(GOOD) == GOOD


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("name", 1, r"spec.json: 'spec': key 'name' must be a string \(got an integer\); fix the file"),
        ("count", True, r"key 'count' must be an integer \(got a boolean\)"),
        ("count", 1.0, r"key 'count' must be an integer \(got a number\)"),
        ("count", INT_LIMIT, "key 'count' must be an integer within 64 bits"),
        ("count", -INT_LIMIT - 1, "key 'count' must be an integer within 64 bits"),
        ("ratio", "0.5", r"key 'ratio' must be a number \(got a string\)"),
        ("ratio", False, r"key 'ratio' must be a number \(got a boolean\)"),
        ("ratio", 10**400, "key 'ratio' must be a number within the float range"),
        ("ratio", math.inf, r"key 'ratio' must be a finite number \(got infinity\)"),
        ("ratio", math.nan, r"key 'ratio' must be a finite number \(got NaN\)"),
        ("labels", {"x": 1}, "key 'labels' must be an object whose values are strings"),
        ("extra", [], r"key 'extra' must be an object \(got an array\)"),
        ("span", [1], "key 'span' must be an array of two finite numbers"),
        ("span", [1, math.nan], "key 'span' must be an array of two finite numbers"),
        ("limit", "1", r"key 'limit' must be an integer \(got a string\)"),
    ],
)
def test_a_wrong_type_names_the_key_and_what_it_must_be(key, value, message):
    with pytest.raises(SpecError, match=message):
        check({**GOOD, key: value})


def test_nan_only_when_allowed_and_never_inside_a_pair():
    assert math.isnan(check({**GOOD, "ratio": math.nan}, allow_nan=True)["ratio"])
    with pytest.raises(SpecError, match="key 'ratio' must be a finite number"):
        check({**GOOD, "ratio": math.inf}, allow_nan=True)
    with pytest.raises(SpecError, match="key 'span' must be an array of two finite numbers"):
        check({**GOOD, "span": [math.nan, 1]}, allow_nan=True)


def test_unknown_missing_and_non_objects_are_refused():
    with pytest.raises(SpecError, match="spec.json: 'spec' has an unknown key 'bogus'; fix the file"):
        check({**GOOD, "bogus": 1})
    with pytest.raises(SpecError, match="spec.json: 'spec' lacks the required key 'count'; fix the file"):
        check({"name": "a", "ratio": 0.5})
    with pytest.raises(SpecError, match=r"spec.json: 'spec' must be a JSON object \(got an array\); fix the file"):
        check([GOOD])


def test_an_odd_unknown_key_is_not_quoted():
    secret = "password=hunter2 " * 20
    with pytest.raises(SpecError) as err:
        refuse_unknown({secret: 1}, {"name"}, "where", "hint", error=SpecError)
    assert str(err.value) == "where has an unknown key (not a field name); hint"


def test_messages_never_echo_values():
    secret = "s3cr3t-TOKEN-4f9a1c"
    for key, value in [("name", [secret]), ("count", secret), ("labels", {"k": [secret]}), ("span", [secret, 1])]:
        with pytest.raises(SpecError) as err:
            check({**GOOD, key: value})
        assert secret not in str(err.value)


def test_json_type_words():
    assert [json_type(v) for v in (None, True, "s", 1, 1.5, math.nan, -math.inf, [], {})] == [
        "null", "a boolean", "a string", "an integer", "a number", "NaN", "infinity", "an array", "an object"]


def test_a_field_type_without_a_checker_fails_at_once():
    @dataclass(frozen=True)
    class Odd:
        when: list[int]

    @dataclass(frozen=True)
    class Union:
        value: int | str

    assert_checkable(Spec)
    with pytest.raises(KeyError):
        assert_checkable(Odd)
    with pytest.raises(KeyError):
        assert_checkable(Union)
