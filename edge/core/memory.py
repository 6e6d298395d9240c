"""Resident memory of a process: the current RSS, the kernel's peak (VmHWM), and the peak over a stretch of code."""

from __future__ import annotations

import gc
import os
from pathlib import Path

MB = 1 << 20


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of ``pid`` (this process by default) in bytes; None where neither /proc nor psutil tells."""
    try:
        with open(f"/proc/{'self' if pid is None else int(pid)}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def rss_mb(pid: int | None = None) -> float:
    """:func:`rss_bytes` in MiB; NaN where unknown."""
    b = rss_bytes(pid)
    return float("nan") if b is None else b / MB


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size since it started or since :func:`reset_peak_rss` (Linux VmHWM)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return peak_rss_bytes() is not None
    except OSError:
        return False


def release_free_heap() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``), so later allocations show up as new RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak resident memory over a stretch of code, minus the RSS when it started.

    Where Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``),
    the peak is exact: the kernel's VmHWM over the whole stretch ("vmhwm-reset"). Elsewhere
    the RSS is read at checkpoints (after load, first inference, warm-up and the timed
    runs) and the largest reading is kept ("rss-checkpoints"); transient peaks between
    checkpoints are then missed. No sampling thread runs, so nothing competes with the
    timed loop for the GIL or a core. Either way it is an RSS delta: memory the allocator
    reuses from an earlier model's freed blocks does not show up, which is why freed heap
    is handed back to the OS (glibc ``malloc_trim``) before each baseline; shared library
    pages mapped by a runtime's first use are counted once, by the warm-up before row one.
    """

    def __init__(self) -> None:
        self.method = "vmhwm-reset" if reset_peak_rss() else "rss-checkpoints"
        self.base = 0
        self.peak = 0

    def start(self) -> None:
        gc.collect()
        release_free_heap()
        if self.method == "vmhwm-reset":
            reset_peak_rss()
        self.base = rss_bytes() or 0
        self.peak = self.base

    def checkpoint(self) -> None:
        self.peak = max(self.peak, rss_bytes() or 0)

    def added_mb(self) -> float:
        self.checkpoint()
        if self.method == "vmhwm-reset":
            hwm = peak_rss_bytes()
            if hwm is not None:
                self.peak = max(self.peak, hwm)
        return max(0.0, (self.peak - self.base) / MB)
