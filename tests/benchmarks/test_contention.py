"""The CPU hog: it really spins, stops by itself, and is killed on stop()."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.contention import ContentionSpec, CpuHog


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_hog_stops_by_itself():
    hog = CpuHog(0.6).start()
    try:
        assert hog.running()
        t0 = time.monotonic()
        rc = hog.wait(timeout=10)
        assert rc == 0, "the hog should exit on its own with status 0"
        assert 0.4 < time.monotonic() - t0 < 8
        assert not hog.running()
    finally:
        hog.stop()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_hog_spins_and_stop_kills_it():
    with CpuHog(30) as hog:
        time.sleep(1.2)  # includes interpreter start-up
        pid = hog.pid
        busy = _cpu_seconds(pid)
        assert busy > 0.2, f"hog used only {busy:.2f} s CPU"
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5
    assert not hog.running()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_hog_bounds():
    with pytest.raises(ValueError, match="duration"):
        CpuHog(0)
    with pytest.raises(ValueError, match="duration"):
        CpuHog(10**6)
    with pytest.raises(ValueError, match="load"):
        CpuHog(1, load=1.5)


def test_contention_spec_and_window():
    assert not ContentionSpec.parse("none").active
    half = ContentionSpec.parse("half")
    assert half.share == 0.5 and half.window(100) == (25, 75)
    assert ContentionSpec.parse("0.2").window(100) == (40, 60)
    assert ContentionSpec.parse("full").window(10) == (0, 10)
    assert ContentionSpec.parse("none").window(10) == (0, 0)
    for bad in ("2", "-0.5", "lots"):
        with pytest.raises(ValueError, match="contention"):
            ContentionSpec.parse(bad)
