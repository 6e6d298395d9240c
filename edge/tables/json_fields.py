"""Checking a JSON object against a frozen dataclass's field types; errors name the key, never its value."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

INT_LIMIT = 1 << 63  # integer fields must lie in [-INT_LIMIT, INT_LIMIT)

# A key or name that is safe to quote in a message: short, and of the characters a variant uses.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.@+:=-]{1,200}")


def json_type(v: Any) -> str:
    """The JSON type of ``v`` in words, to say what a key held without quoting it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number" if math.isfinite(v) else ("NaN" if math.isnan(v) else "infinity")
    if isinstance(v, list):
        return "an array"
    return "an object"


class _Bad(Exception):
    """A value is not of its field's type; ``expected`` says what it must be."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


def _as_str(v: Any, allow_nan: bool) -> str:
    if not isinstance(v, str):
        raise _Bad("a string")
    return v


def _as_int(v: Any, allow_nan: bool) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad("an integer")
    if not -INT_LIMIT <= v < INT_LIMIT:
        raise _Bad("an integer within 64 bits")
    return v


def _as_float(v: Any, allow_nan: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad("a number")
    try:
        x = float(v)
    except OverflowError:
        raise _Bad("a number within the float range") from None
    if math.isinf(x) or (math.isnan(x) and not allow_nan):
        raise _Bad("a finite number")
    return x


def _as_str_dict(v: Any, allow_nan: bool) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise _Bad("an object whose values are strings")
    return dict(v)


def _as_dict(v: Any, allow_nan: bool) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _Bad("an object")
    return v


def _as_float_pair(v: Any, allow_nan: bool) -> tuple[float, float]:
    try:
        if not isinstance(v, list) or len(v) != 2:
            raise _Bad("")
        return (_as_float(v[0], False), _as_float(v[1], False))
    except _Bad:
        raise _Bad("an array of two finite numbers") from None


# Checkers by the annotation text of a dataclass field (the checked dataclasses' modules use
# ``from __future__ import annotations``, so field types are these strings).
_CHECKERS: dict[str, Callable[[Any, bool], Any]] = {
    "str": _as_str,
    "int": _as_int,
    "float": _as_float,
    "dict[str, str]": _as_str_dict,
    "dict[str, Any]": _as_dict,
    "tuple[float, float]": _as_float_pair,
}


def _checker(annotation: str) -> Callable[[Any, bool], Any]:
    base, _, rest = annotation.partition(" | ")
    check = _CHECKERS[base]  # KeyError: a new field type needs a checker above
    if rest == "":
        return check
    if rest != "None":
        raise KeyError(annotation)
    return lambda v, allow_nan: None if v is None else check(v, allow_nan)


def refuse_unknown(d: dict, known: set[str], where: str, hint: str, *, error: Callable[[str], Exception]) -> None:
    """Raise ``error`` naming the first key of ``d`` not in ``known`` (quoted only when it looks like a name)."""
    for k in d:
        if k not in known:
            name = f"'{k}'" if isinstance(k, str) and SAFE_NAME.fullmatch(k) else "(not a field name)"
            raise error(f"{where} has an unknown key {name}; {hint}")


def checked_fields(cls: type, d: Any, where: str, hint: str, allow_nan: bool = False, *,
                   error: Callable[[str], Exception]) -> dict[str, Any]:
    """Keyword arguments for dataclass ``cls`` from the JSON object ``d``, each checked against its field type.

    Unknown keys and missing required keys are refused; a bool is not a number; floats are
    finite (NaN too with ``allow_nan``). Errors are ``error``s: '<where>: key 'K' must be ...; <hint>'.
    """
    if not isinstance(d, dict):
        raise error(f"{where} must be a JSON object (got {json_type(d)}); {hint}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    refuse_unknown(d, set(fields), where, hint, error=error)
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{where} lacks the required key '{name}'; {hint}")
            continue
        try:
            out[name] = _checker(str(f.type))(d[name], allow_nan)
        except _Bad as bad:
            raise error(
                f"{where}: key '{name}' must be {bad.expected} (got {json_type(d[name])}); {hint}"
            ) from None
    return out


def assert_checkable(*classes: type) -> None:
    """Fail at import, not at a daemon's reload, if a field has a type ``checked_fields`` cannot check."""
    for cls in classes:
        for f in dataclasses.fields(cls):
            _checker(str(f.type))
