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


def test_contention_kinds_parse():
    assert ContentionSpec.parse("quota").kind == "quota" and ContentionSpec.parse("quota").share == 0.5
    s = ContentionSpec.parse("membw:0.3")
    assert s.kind == "membw" and s.share == 0.3 and s.describe() == "membw:0.3"
    assert ContentionSpec.parse("cpu:full").window(10) == (0, 10)
    assert ContentionSpec.parse("half").kind == "cpu"
    with pytest.raises(ValueError, match="quota"):
        ContentionSpec.parse("quota", quota=0)


def _busy_child():
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time\nt = time.monotonic() + 20\nwhile time.monotonic() < t: pass"])


def _cpu_share(pid: int, seconds: float = 0.6) -> float:
    import os
    import time

    def ticks():
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    a, t = ticks(), time.monotonic()
    time.sleep(seconds)
    return (ticks() - a) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t)


def test_cpu_quota_throttles_a_process_and_is_removed():
    from benchmarks.contention import ContentionError, CpuQuota

    child = _busy_child()
    try:
        try:
            q = CpuQuota(child.pid, 0.2).start()
        except ContentionError as exc:  # no cgroup cpu controller or not root: the message says so
            assert "quota" in str(exc)
            pytest.skip(str(exc))
        group = q.group
        share = _cpu_share(child.pid)
        q.stop()
        assert share < 0.45, share  # ~0.2 of a core (generous: ticks are coarse)
        assert group is not None and not group.exists()
        assert _cpu_share(child.pid) > share
    finally:
        child.kill()
        child.wait()


def test_memory_bandwidth_hog_runs_and_stops():
    with CpuHog(5, memory=True) as hog:
        import time

        time.sleep(0.5)
        assert hog.running()
    assert not hog.running()
