"""Whether a more accurate variant is really more accurate: a paired (McNemar) test on per-image correctness.

Accuracy measured on a few thousand images resolves about a point, while neighbours on a front
often differ by a fraction of one; the benchmark records which images each variant got right
(``LatencyRow.correct``), so two variants can be compared on the same images.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from edge.tables.table import LatencyRow, decode_correct


def paired_gain_z(better: LatencyRow, base: LatencyRow) -> float | None:
    """McNemar's statistic for "``better`` is more accurate than ``base`` on the same images":
    (b - c) / sqrt(b + c), b = images only ``better`` gets right, c = images only ``base`` gets right.
    None when either row lacks its per-image record or they were measured on different counts."""
    if better.eval_count != base.eval_count:
        return None
    x, y = decode_correct(better.correct, better.eval_count), decode_correct(base.correct, base.eval_count)
    if x is None or y is None:
        return None
    b, c = int(np.sum(x & ~y)), int(np.sum(~x & y))
    if b + c == 0:
        return 0.0
    return (b - c) / math.sqrt(b + c)


def significance_filter(front: Sequence[LatencyRow], level: float) -> tuple[list[LatencyRow], dict[str, str]]:
    """Keep the fastest, then each variant whose accuracy gain over the last kept one passes a one-sided
    paired (McNemar) test at ``level`` on the images the benchmark measured both on. A step the selection
    images cannot resolve is dropped: its measured gain could be noise, and a policy would pay its extra
    latency for nothing. Rows without per-image records are kept (the test cannot run)."""
    if level <= 0 or not front:
        return list(front), {}
    from statistics import NormalDist

    z_crit = NormalDist().inv_cdf(1.0 - level)
    kept, why = [front[0]], {}
    for r in front[1:]:
        z = paired_gain_z(r, kept[-1])
        if z is None or z >= z_crit:
            kept.append(r)
        else:
            why[r.variant] = (f"its accuracy gain over {kept[-1].variant} is not significant on the selection images "
                              f"(paired z {z:.2f} < {z_crit:.2f}, one-sided level {level:g})")
    return kept, why
