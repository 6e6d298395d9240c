"""Tests for edge.tables.significance: the paired test that drops a step the selection images cannot resolve."""

from __future__ import annotations

import numpy as np
import pytest

from edge.tables.selection import select_subset
from edge.tables.significance import paired_gain_z
from tests.edge.tables.test_selection import _with_correct, row, table


def test_a_step_the_selection_images_cannot_resolve_is_dropped():
    n = 1000
    base = np.zeros(n, bool)
    base[:850] = True
    # "noise": 6 more right and 4 fewer: +0.2 points, z = 2/sqrt(10) = 0.63 -> dropped
    noise = base.copy()
    noise[850:856] = True
    noise[:4] = False
    # "real": 60 more right, 10 fewer: +5 points, z = 50/sqrt(70) = 5.98 -> kept
    real = base.copy()
    real[850:910] = True
    real[:10] = False
    a = _with_correct(row("a", 1.0, 0), base)
    b = _with_correct(row("b", 2.0, 0), noise)
    c = _with_correct(row("c", 3.0, 0), real)
    assert paired_gain_z(b, a) == pytest.approx(2 / np.sqrt(10))
    sel = select_subset(table(a, b, c))
    assert sel.variants == (a.variant, c.variant)
    assert "not significant" in sel.params.dropped[b.variant] and sel.params.method == "paired-pareto"
    assert select_subset(table(a, b, c), significance=0).variants == (a.variant, b.variant, c.variant)
    # Without per-image records the test cannot run and every Pareto step stays.
    plain = select_subset(table(row("a", 1.0, 0.85), row("b", 2.0, 0.852), row("c", 3.0, 0.9)))
    assert len(plain.rows) == 3
