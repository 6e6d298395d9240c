"""The daemon's log: one line on stderr per event, prefixed ``edgekit serve:`` (stdout holds the start-up report)."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"edgekit serve: {msg}", file=sys.stderr, flush=True)
