"""Shared utilities of every stage: errors, atomic files and digests, progress bars, text tables, memory."""
