"""Plain-text tables for the command line: every column padded to its widest cell."""

from __future__ import annotations

from typing import Iterable, Sequence

from edge.core.errors import UsageError


def format_table(
    head: Sequence[object],
    rows: Iterable[Sequence[object]],
    align: str = "",
    sep: str = "  ",
    rule: bool = False,
) -> str:
    """``head`` and ``rows`` as lines of columns joined by ``sep``, trailing spaces stripped.

    ``align`` has one letter per column, ``l`` (left) or ``r`` (right); columns it does not
    cover are left-aligned. ``rule`` draws a line of dashes under the header. A row with
    fewer cells than the header ends in a note: its last cell is written as it is, across
    the columns left, and does not widen its column.
    """
    if any(a not in "lr" for a in align):
        raise UsageError(f"align takes one letter per column, 'l' or 'r'; got {align!r}")
    top = [str(c) for c in head]
    body = [[str(c) for c in r] for r in rows]
    n = len(top)
    widths = [len(h) for h in top]
    for r in body:
        if len(r) > n:
            raise UsageError(f"a row has {len(r)} cells but the header {n}: {r}")
        padded = r if len(r) == n else r[:-1]
        for c, x in enumerate(padded):
            widths[c] = max(widths[c], len(x))

    def line(cells: list[str]) -> str:
        out = [x.rjust(widths[c]) if c < len(align) and align[c] == "r" else x.ljust(widths[c])
               for c, x in enumerate(cells if len(cells) == n else cells[:-1])]
        if len(cells) < n and cells:
            out.append(cells[-1])
        return sep.join(out).rstrip()

    lines = [line(top)]
    if rule:
        lines.append(line(["-" * w for w in widths]))
    lines += [line(r) for r in body]
    return "\n".join(lines)
