"""The one progress bar: tqdm on stderr with messages above it, or plain prints when there is no bar.

Used by the workstation (train, convert) and the board (bench); lives in edge/ because the board
side cannot import converters/. tqdm is optional: without it the messages are printed.
"""

from __future__ import annotations

import sys
from typing import TextIO


class NoBar:
    """What ``progress_bar`` returns when disabled or without tqdm: messages are printed, nothing else."""

    shown = False

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        pass

    def write(self, msg: str, file: TextIO | None = None) -> None:
        print(msg, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar on stderr (count, rate and ETA); messages go above it to ``file`` (stdout) without breaking it."""

    shown = True

    def __init__(self, tqdm_cls, total: float, unit: str, desc: str, initial: int = 0, leave: bool = False,
                 bar_format: str | None = None):
        self._cls = tqdm_cls
        self._bar = tqdm_cls(total=total, initial=initial, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True,
                             leave=leave, bar_format=bar_format)

    def update(self, n: float = 1) -> None:
        self._bar.update(n)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self._bar.set_postfix_str(s, refresh=refresh)

    def set_description_str(self, s: str, refresh: bool = True) -> None:
        self._bar.set_description_str(s, refresh=refresh)

    def write(self, msg: str, file: TextIO | None = None) -> None:
        self._cls.write(msg, file=file or sys.stdout)
        (file or sys.stdout).flush()

    def close(self) -> None:
        self._bar.close()


# For a bar that advances by estimated work (training: by each model's estimated cost, so that the ETA
# holds when big models come last) while its description counts items: the two numbers say what they
# count ("1 of 4 models done, 13% of the estimated work"), not "1/4 models 13%".
WORK_FORMAT = "{desc}, {percentage:.0f}% of the estimated work |{bar}| [{elapsed}<{remaining}{postfix}]"


def done_text(done: int, total: int, noun: str) -> str:
    """The description of a WORK_FORMAT bar: '1 of 4 models done'."""
    return f"{done} of {total} {noun} done"


def progress_bar(total: float, enabled: bool, unit: str = "artifact", desc: str = "convert", *, initial: int = 0,
                 leave: bool = False, bar_format: str | None = None) -> Bar | NoBar:
    """A bar counting ``total`` items from ``initial``; a :class:`NoBar` when not ``enabled`` or tqdm is missing."""
    if not enabled:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar()
    return Bar(tqdm, total, unit, desc, initial=initial, leave=leave, bar_format=bar_format)
