"""Tests for edge.core.memory: resident memory readers and the peak over a stretch of code."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from edge.core.memory import PeakRss, rss_bytes, rss_mb


def test_peak_rss_sees_an_allocation():
    rss = PeakRss()
    rss.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MB touched
    rss.checkpoint()
    del block
    added = rss.added_mb()
    assert added >= 50, (rss.method, added)


def test_rss_of_this_process_and_of_another():
    mine = rss_bytes()
    assert mine is not None and mine > 1 << 20
    assert rss_mb(os.getpid()) > 1
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert (rss_bytes(child.pid) or 0) > 0
    finally:
        child.kill()
        child.wait()
