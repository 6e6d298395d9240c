"""Name patterns on the command line (``--only``): a glob when it has ``*?[``, else a substring."""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence


def split_patterns(values: Iterable[str]) -> list[str]:
    """Repeated and comma-separated option values -> the patterns, blanks dropped."""
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def matches(patterns: Sequence[str], *names: str) -> bool:
    """Whether any of ``names`` matches any pattern."""
    for pat in patterns:
        glob = any(c in pat for c in "*?[")
        for n in names:
            if (fnmatch.fnmatchcase(n, pat) if glob else pat in n):
                return True
    return False
