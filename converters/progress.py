"""A tqdm progress bar on stderr whose messages go above it to stdout, or plain prints when there is no bar."""

from __future__ import annotations

import sys
from typing import TextIO


class NoBar:
    """What ``progress_bar`` returns when disabled or without tqdm: messages are printed, nothing else."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, msg: str, file: TextIO | None = None) -> None:
        print(msg, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar on stderr (count, rate and ETA); messages go above it to ``file`` (stdout) without breaking it."""

    def __init__(self, tqdm_cls, total: int, unit: str, desc: str):
        self._cls = tqdm_cls
        self._bar = tqdm_cls(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, n: float = 1) -> None:
        self._bar.update(n)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._bar.set_postfix_str(s, refresh=refresh)

    def write(self, msg: str, file: TextIO | None = None) -> None:
        self._cls.write(msg, file=file or sys.stdout)
        (file or sys.stdout).flush()

    def close(self) -> None:
        self._bar.close()


def progress_bar(total: int, enabled: bool, unit: str = "artifact", desc: str = "convert") -> Bar | NoBar:
    if not enabled:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar()
    return Bar(tqdm, total, unit, desc)
