"""The CPU hog: it really spins, stops by itself, and is killed on stop()."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.evaluate.contention import ContentionSpec, CpuHog


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
    from benchmarks.evaluate.contention import ContentionError, CpuQuota

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


# --- rt: a periodic SCHED_FIFO task on the daemon's cores ---

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


def _core() -> int:
    return max(os.sched_getaffinity(0))


def _rt_hog(duration_s: float, cpu: int) -> CpuHog:
    from benchmarks.evaluate.contention import ContentionError

    try:
        return CpuHog(duration_s, cpu=cpu, rt=True).start()
    except ContentionError as exc:  # not root / no CAP_SYS_NICE: the message says so
        assert "CAP_SYS_NICE" in str(exc)
        pytest.skip(str(exc))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_rt_kind_parse_describe_what():
    from benchmarks.evaluate.contention import KINDS

    assert "rt" in KINDS
    s = ContentionSpec.parse("rt")
    assert s.kind == "rt" and s.share == 0.5 and s.describe() == "rt:half"
    assert ContentionSpec.parse("rt:half") == s
    s = ContentionSpec.parse("rt:0.3")
    assert s.kind == "rt" and s.share == 0.3 and s.describe() == "rt:0.3"
    assert ContentionSpec.parse("rt:full").window(10) == (0, 10)
    assert "SCHED_FIFO" in s.what() and "real-time" in s.what() and "50 us of every 100 us" in s.what()
    with pytest.raises(ValueError, match="contention"):
        ContentionSpec.parse("rt:lots")
    with pytest.raises(ValueError, match="real-time"):
        CpuHog(1, memory=True, rt=True)


def _work(n: int) -> int:
    x = 0
    for i in range(n):
        x = (x * 1103515245 + i) & 0x7FFFFFFF
    return x


def _median_s(n: int, runs: int = 30) -> float:
    import statistics

    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        _work(n)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="SCHED_FIFO needs root here")
def test_rt_hog_slows_work_on_its_core():
    core, before = _core(), os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        n = max(1000, int(10_000 * 1e-3 / _median_s(10_000, runs=10)))  # ~1 ms of work alone
        alone = _median_s(n)
        hog = _rt_hog(3.0, core)
        try:
            assert os.sched_getscheduler(hog.pid or 0) == os.SCHED_FIFO
            loaded = _median_s(n)
            assert hog.running()
        finally:
            hog.stop()
    finally:
        os.sched_setaffinity(0, before)
    ratio = loaded / alone
    print(f"rt slowdown: {alone * 1e3:.3f} ms alone, {loaded * 1e3:.3f} ms with the rt hog: {ratio:.2f}x")
    assert ratio >= 1.3, f"{alone * 1e3:.3f} ms alone vs {loaded * 1e3:.3f} ms with the rt hog ({ratio:.2f}x)"


def _drop_rt_rights() -> None:
    """In the child, before exec: RLIMIT_RTPRIO 0 and, as root, CAP_SYS_NICE out of the bounding set (so
    root loses it across exec). Switching to user nobody instead would fail here: the interpreter lives
    under /root (mode 700). Either way the kernel itself refuses SCHED_FIFO (EPERM)."""
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    if os.geteuid() == 0:
        ctypes.CDLL(None, use_errno=True).prctl(24, 23, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_SYS_NICE


def test_rt_refused_by_the_kernel_says_what_to_do():
    import subprocess
    import sys

    code = ("import sys\nfrom benchmarks.evaluate.contention import ContentionError, CpuHog\n"
            "try:\n    CpuHog(5, cpu=int(sys.argv[1]), rt=True).start().stop()\n    print('accepted')\n"
            "except ContentionError as exc:\n    print(exc)\n")
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              preexec_fn=_drop_rt_rights)

    r = run("-c", code, str(_core()))
    if r.returncode != 0:
        pytest.skip(f"cannot run the module without real-time rights here: {r.stderr[-300:]}")
    if r.stdout.strip() == "accepted":
        pytest.skip("the kernel grants SCHED_FIFO even without root and with RLIMIT_RTPRIO 0 (CAP_SYS_NICE?)")
    msg = r.stdout
    assert "refused real-time scheduling (SCHED_FIFO)" in msg and "CAP_SYS_NICE" in msg, msg
    assert "Operation not permitted" in msg, msg  # the kernel's own reason, passed on
    r = run("-m", "benchmarks.evaluate.contention", "--duration", "5", "--cpu", str(_core()), "--rt")
    assert r.returncode == 3 and r.stdout.startswith("refused: "), (r.returncode, r.stdout, r.stderr)


def test_rt_hog_stops_by_itself_and_on_stop():
    from benchmarks.evaluate.contention import Contention

    hog = _rt_hog(0.6, _core())
    try:
        assert os.sched_getscheduler(hog.pid or 0) == os.SCHED_FIFO
        t0 = time.monotonic()
        assert hog.wait(timeout=10) == 0, "the rt hog should exit on its own with status 0"
        assert 0.4 < time.monotonic() - t0 < 8
    finally:
        hog.stop()
    c = Contention(ContentionSpec.parse("rt"), os.getpid(), {_core()}, None, 30).start()
    pid = c.parts[0].pid
    assert c.parts[0].rt and c.parts[0].running() and os.sched_getscheduler(pid) == os.SCHED_FIFO
    c.stop()
    assert _gone(pid)


def test_rt_hog_exits_when_its_parent_dies():
    import signal
    import subprocess
    import sys

    code = ("import os, sys\nfrom benchmarks.evaluate.contention import ContentionError, CpuHog\n"
            "try:\n    print(CpuHog(30, cpu=int(sys.argv[1]), rt=True).start().pid, flush=True)\n"
            "except ContentionError as exc:\n    print(exc, flush=True)\nos._exit(0)\n")  # no atexit: orphan it
    r = subprocess.run([sys.executable, "-c", code, str(_core())], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    if not r.stdout.strip().isdigit():
        assert "CAP_SYS_NICE" in r.stdout, (r.stdout, r.stderr)
        pytest.skip(r.stdout)
    pid = int(r.stdout)
    try:
        end = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < end:
            time.sleep(0.05)
        assert _gone(pid), "the orphaned rt hog should notice its parent is gone and exit"
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_rt_hog_that_dies_before_reporting_is_a_clear_error(monkeypatch):
    import shutil
    import sys

    from benchmarks.evaluate.contention import ContentionError

    false = shutil.which("false")
    if false is None:
        pytest.skip("no 'false' program")
    monkeypatch.setattr(sys, "executable", false)  # the child exits at once, status 1, without a word
    hog = CpuHog(5, cpu=_core(), rt=True)
    with pytest.raises(ContentionError, match=r"exited \(status 1\) before saying whether it runs real-time"):
        hog.start()
    assert not hog.running()
