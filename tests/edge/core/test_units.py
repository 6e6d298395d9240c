"""Tests for edge.core.units: every size the commands print is KB of 1024 bytes."""

from __future__ import annotations

from edge.core.units import kb


def test_sizes_are_kb_of_1024_bytes_with_one_decimal():
    assert kb(1536) == "1.5"
    assert kb(0) == "0.0"
    assert kb(50 * 1024 * 1024) == "51,200.0"
