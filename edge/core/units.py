"""The one unit file sizes are printed in (convert, bundle, report): KB of 1024 bytes, one decimal."""

from __future__ import annotations

KB = 1024


def kb(size_bytes: int | float) -> str:
    """``size_bytes`` in KB, one decimal, thousands separated: 1536 -> '1.5', 52428800 -> '51,200.0'."""
    return f"{float(size_bytes) / KB:,.1f}"
