"""Bounded contention for a policy comparison: CPU hogs on the daemon's cores, a CPU-bandwidth
throttle on the daemon (the kernel's CPU quota, a stand-in for thermal throttling),
memory-bandwidth load, or a periodic real-time task on the daemon's cores (it preempts the
daemon every ~100 us: a fine-grained stand-in for a throttled clock or a control loop).

Each kind stops by itself: a hog, memory or real-time process exits after its duration or when its
parent dies, and the parent kills it on stop(), on exit and on context-manager exit; the
throttle's cgroup is removed on stop() and at exit, and the daemon moved back first.
``ContentionSchedule`` turns an episode on and off by request index, the same for every policy.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import math
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.evaluate.placement import Placement
from edge.core.errors import EdgekitError, UsageError

MAX_HOG_S = 3600.0
KINDS = ("cpu", "quota", "membw", "rt")
QUOTA_PERIOD_US = 1000  # the kernel's smallest CFS period: throttling at a 1 ms grain, like a slow clock
MEMBW_BYTES = 64 << 20  # per copy: far beyond any cache
RT_BUSY_US, RT_IDLE_US = 50, 50  # the rt task's period: busy, then asleep (sleep overshoots: ~0.4 busy)


class ContentionError(EdgekitError, RuntimeError):
    """This machine cannot apply the asked contention (no cgroup cpu controller, not root...)."""


@dataclass(frozen=True)
class ContentionSpec:
    """Which part of a run is under contention, and what kind.

    ``none``; ``half`` / ``full`` / a SHARE in (0, 1] (a CPU hog on each of the daemon's cores
    for the middle SHARE of the requests); or ``KIND`` / ``KIND:half`` / ``KIND:SHARE`` with
    KIND one of ``cpu``, ``quota`` (the daemon gets ``quota`` of one core's time, at a 1 ms
    grain), ``membw`` (memory-bandwidth load on the other cores) or ``rt`` (a SCHED_FIFO task on
    each of the daemon's cores, busy 50 us of every 100 us). A KIND alone means half."""

    share: float = 0.0
    load: float = 1.0
    kind: str = "cpu"
    quota: float = 0.4

    @classmethod
    def parse(cls, spec: str, quota: float = 0.4) -> "ContentionSpec":
        s = str(spec).strip().lower()
        if not 0.01 <= quota <= 1.0:
            raise UsageError(f"contention quota must be in [0.01, 1] of one core, got {quota}")
        if s in ("none", "0", ""):
            return cls(0.0, quota=quota)
        kind, _, rest = s.partition(":")
        if kind in KINDS:
            s = rest or "half"
        else:
            kind = "cpu"
        if s == "half":
            return cls(0.5, kind=kind, quota=quota)
        if s == "full":
            return cls(1.0, kind=kind, quota=quota)
        try:
            share = float(s)
        except ValueError:
            raise UsageError(f"unknown contention '{spec}'; use none, half, full, a share of the run in (0, 1], "
                             f"or KIND[:SHARE] with KIND one of {list(KINDS)}") from None
        if not 0.0 < share <= 1.0:
            raise UsageError(f"contention share must be in (0, 1], got {spec}")
        return cls(share, kind=kind, quota=quota)

    @property
    def active(self) -> bool:
        return self.share > 0.0

    def describe(self) -> str:
        if not self.active:
            return "none"
        share = "half" if self.share == 0.5 else ("full" if self.share == 1.0 else f"{self.share:g}")
        extra = f" ({self.quota:g} of a core)" if self.kind == "quota" else ""
        return f"{self.kind}:{share}{extra}"

    def what(self) -> str:
        """What the contention does, in words."""
        return {
            "cpu": "one busy process on each of the daemon's cores",
            "quota": f"the daemon throttled to {self.quota:g} of one core (CPU quota, {QUOTA_PERIOD_US} us period)",
            "membw": "memory-bandwidth load (large copies) on the other cores",
            "rt": f"a periodic real-time task on each of the daemon's cores (SCHED_FIFO, busy {RT_BUSY_US} us "
                  f"of every {RT_BUSY_US + RT_IDLE_US} us)",
        }[self.kind]

    def window(self, count: int) -> tuple[int, int]:
        """[start, stop) request indices under contention: the middle ``share`` of ``count``."""
        if not self.active or count <= 0:
            return (0, 0)
        n = max(1, int(round(self.share * count)))
        start = (count - n) // 2
        return (start, start + n)


def _ticks(duration_s: float, parent: int):
    """Yield until ``duration_s`` has passed or ``parent`` is gone (an orphaned hog would distort
    whatever runs next); each step is one unit of the hog's work."""
    end = time.monotonic() + duration_s
    next_parent_check = 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if now >= next_parent_check:
            if os.getppid() != parent:
                return
            next_parent_check = now + 0.2
        yield now, end


def _spin(duration_s: float, load: float, parent: int, period: float = 0.010) -> None:
    """Busy-loop for ``duration_s`` (``load`` share of each ``period`` seconds busy), then return.

    Run under SCHED_FIFO at a 100 us period (the rt kind) it preempts whatever else is on its core
    each time it wakes; the kernel's RT throttling (sched_rt_runtime_us, 950000 of every 1000000 by
    default) leaves the core's other tasks 5% even if the loop misbehaves."""
    x = 0
    for now, end in _ticks(duration_s, parent):
        busy_until = min(end, now + period * load)
        while time.monotonic() < busy_until:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if load < 1.0:
            time.sleep(period * (1.0 - load))


def _copy(duration_s: float, parent: int) -> None:
    """Stream large copies for ``duration_s``: memory bandwidth, not cache, is what it uses."""
    import numpy as np

    src = np.ones(MEMBW_BYTES // 8)
    dst = np.empty_like(src)
    for _ in _ticks(duration_s, parent):
        np.copyto(dst, src)
        src, dst = dst, src


class CpuHog:
    """Start with ``start()``; it stops by itself after ``duration_s`` or on ``stop()``/exit.
    With ``memory`` it streams large copies instead of spinning (memory-bandwidth load); with ``rt``
    it is a periodic SCHED_FIFO task (``_spin`` at a 100 us period), and start() raises ContentionError
    if the kernel refuses."""

    memory = False

    def __init__(self, duration_s: float, load: float = 1.0, cpu: int | None = None, memory: bool = False,
                 rt: bool = False):
        if not 0 < duration_s <= MAX_HOG_S:
            raise UsageError(f"CPU hog duration must be in (0, {MAX_HOG_S:g}] s, got {duration_s}")
        if not 0 < load <= 1.0:
            raise UsageError(f"CPU hog load must be in (0, 1], got {load}")
        if memory and rt:
            raise UsageError("a hog is either a memory-bandwidth or a real-time one, not both")
        self.duration_s = float(duration_s)
        self.load = float(load)
        self.cpu = cpu
        self.memory, self.rt = memory, rt
        self._proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> "CpuHog":
        if self.running():
            return self
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.evaluate.contention",
            "--duration",
            repr(self.duration_s),
            "--load",
            repr(self.load),
            "--parent",
            str(os.getpid()),
        ]
        if self.cpu is not None:
            cmd += ["--cpu", str(int(self.cpu))]
        if self.memory:
            cmd.append("--memory")
        if self.rt:
            cmd.append("--rt")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE if self.rt else subprocess.DEVNULL)
        self.started_at = time.monotonic()
        self.stopped_at = None
        atexit.register(self.stop)
        if self.rt:
            self._check_rt()
        return self

    def _check_rt(self, timeout: float = 5.0) -> None:
        """Read the rt child's report ("ok" or "refused: WHY"); stop it and raise unless "ok"."""
        p = self._proc
        assert p is not None and p.stdout is not None
        fd, buf, end, eof = p.stdout.fileno(), b"", time.monotonic() + timeout, False
        while b"\n" not in buf and (left := end - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 256)
            eof = not chunk  # the child is gone
            if eof:
                break
            buf += chunk
        p.stdout.close()
        line = buf.decode(errors="replace").partition("\n")[0].strip()
        if line == "ok":
            return
        self.stop()
        if line.startswith("refused:"):
            raise ContentionError(
                f"the kernel refused real-time scheduling (SCHED_FIFO) for the rt contention "
                f"({line.partition(':')[2].strip()}); run as root or give the process CAP_SYS_NICE "
                "(or raise RLIMIT_RTPRIO), or use --contention quota, cpu or membw")
        why = f"exited (status {p.returncode})" if eof or line else f"did not report within {timeout:g} s"
        raise ContentionError(f"the rt contention process {why} before saying whether it runs real-time"
                              + (f" ({line})" if line else "") + "; use --contention quota, cpu or membw")

    def stop(self, timeout: float = 2.0) -> None:
        """Kill the hog (if still running) and reap it; safe to call more than once."""
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> "CpuHog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CpuQuota:
    """The kernel's CPU quota on one process: it gets ``fraction`` of one core's time in every
    1 ms period, the rest of the period it waits (cgroup v1 ``cpu`` or cgroup v2 ``cpu.max``)."""

    def __init__(self, pid: int, fraction: float, period_us: int = QUOTA_PERIOD_US):
        if not 0.01 <= fraction <= 1.0:
            raise UsageError(f"CPU quota must be in [0.01, 1] of one core, got {fraction}")
        self.pid, self.fraction, self.period_us = int(pid), float(fraction), int(period_us)
        self.group: Path | None = None
        self.home: Path | None = None
        self.v2 = False

    @staticmethod
    def _controller() -> tuple[Path, bool]:
        """(root of the cpu hierarchy, is cgroup v2)."""
        with open("/proc/self/mounts") as fh:
            mounts = [line.split() for line in fh]
        for _, where, fstype, opts, *_ in mounts:
            if fstype == "cgroup" and "cpu" in opts.split(","):
                return Path(where), False
        for _, where, fstype, *_ in mounts:
            if fstype == "cgroup2" and "cpu" in (Path(where) / "cgroup.controllers").read_text().split():
                return Path(where), True
        raise ContentionError("no cgroup 'cpu' controller is mounted, so the CPU quota cannot be set; "
                              "use --contention cpu or membw, or mount it "
                              "(mount -t cgroup -o cpu none /sys/fs/cgroup/cpu)")

    def _current(self, root: Path) -> Path:
        with open(f"/proc/{self.pid}/cgroup") as fh:
            for line in fh:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if (self.v2 and ctrls == "") or (not self.v2 and "cpu" in ctrls.split(",")):
                    return root / path.lstrip("/")
        return root

    def start(self) -> "CpuQuota":
        root, self.v2 = self._controller()
        self.home = self._current(root)
        group = root / f"edgekit-throttle-{os.getpid()}-{self.pid}"
        quota = max(1000, int(round(self.fraction * self.period_us)))  # the kernel's floor is 1 ms of quota
        period = self.period_us if quota == int(round(self.fraction * self.period_us)) else \
            int(round(quota / self.fraction))
        try:
            group.mkdir(exist_ok=True)
            self.group = group
            if self.v2:
                (group / "cpu.max").write_text(f"{quota} {period}")
            else:
                (group / "cpu.cfs_period_us").write_text(str(period))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            (group / "cgroup.procs").write_text(str(self.pid))
        except OSError as exc:
            self.stop()
            why = "run it as root" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else exc.strerror
            raise ContentionError(f"the kernel refused the CPU quota under {root} ({exc.strerror}); {why}, "
                                  "or use --contention cpu or membw") from None
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        group, self.group = self.group, None
        if group is None:
            return
        try:
            if self.home is not None and Path(f"/proc/{self.pid}").exists():
                (self.home / "cgroup.procs").write_text(str(self.pid))
        except OSError:
            pass
        for _ in range(50):  # the group empties once the process has moved
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.01)
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def __enter__(self) -> "CpuQuota":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Contention:
    """One contention episode of ``spec.kind`` against a process on ``cpus``: start() and stop()."""

    def __init__(self, spec: ContentionSpec, pid: int, cpus: set[int] | None, other_cpus: set[int] | None,
                 duration_s: float):
        self.spec, self.pid, self.cpus, self.other = spec, pid, cpus, other_cpus
        self.duration_s = duration_s
        self.parts: list = []

    def start(self) -> "Contention":
        k = self.spec.kind
        try:
            if k in ("cpu", "rt"):
                for c in sorted(self.cpus) if self.cpus else [None]:
                    self.parts.append(CpuHog(self.duration_s, load=self.spec.load, cpu=c, rt=k == "rt").start())
            elif k == "quota":
                self.parts.append(CpuQuota(self.pid, self.spec.quota).start())
            elif k == "membw":
                for c in sorted(self.other) if self.other else [None]:
                    self.parts.append(CpuHog(self.duration_s, cpu=c, memory=True).start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.parts:
            p.stop()
        self.parts = []


class ContentionSchedule:
    """Starts the contention when request ``start`` is issued and stops it at request ``stop``.

    Keyed by request index, not wall time, so every policy (and the oracle pass) is under
    contention for exactly the same requests even though their runs take different times.
    ``target`` names the process it acts on (the daemon, or this process for the oracle pass)
    and the cores it runs on.
    """

    def __init__(self, spec: ContentionSpec, count: int, max_s: float, placement: Placement | None = None):
        self.spec = spec
        self.start, self.stop = spec.window(count)
        self.max_s = max_s
        self.placement = placement or Placement(None, None)
        self.pid = os.getpid()
        self.active: Contention | None = None
        self.t0 = time.perf_counter()
        self.intervals: list[list[float]] = []  # [on_s, off_s] from t0

    def target(self, pid: int) -> None:
        self.pid = pid

    def reset(self) -> None:
        self.halt()
        self.t0 = time.perf_counter()
        self.intervals = []

    def __call__(self, i: int) -> None:
        if not self.spec.active:
            return
        if i == self.start and self.active is None:
            p = self.placement
            self.active = Contention(self.spec, self.pid, None if p.server is None else set(p.server),
                                     None if p.client is None else set(p.client), self.max_s).start()
            self.intervals.append([time.perf_counter() - self.t0, float("nan")])
        elif i == self.stop:
            self.halt()

    def halt(self) -> None:
        if self.active is not None:
            self.active.stop()
            self.active = None
            if self.intervals and not math.isfinite(self.intervals[-1][1]):
                self.intervals[-1][1] = time.perf_counter() - self.t0

    def record(self) -> list[list[float]]:
        return [[round(a, 4), round(b, 4)] for a, b in self.intervals]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.evaluate.contention", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, required=True, help="seconds to spin, then exit")
    ap.add_argument("--load", type=float, default=1.0, help="busy share of one core, (0, 1]")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is no longer the parent")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core (Linux)")
    ap.add_argument("--memory", action="store_true", help="stream large copies (memory bandwidth) instead of spinning")
    ap.add_argument("--rt", action="store_true", help="with --cpu: a periodic SCHED_FIFO task; prints 'ok' or "
                    "'refused: WHY' (then exits 3)")
    a = ap.parse_args(argv)
    duration = min(max(a.duration, 0.0), MAX_HOG_S)
    load = min(max(a.load, 0.01), 1.0)
    if a.cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {a.cpu})
        except OSError:
            pass
    parent = a.parent if a.parent is not None else os.getppid()
    if a.rt:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError as exc:  # PermissionError included: no CAP_SYS_NICE and RLIMIT_RTPRIO 0
            print(f"refused: {exc.strerror}", flush=True)
            return 3
        print("ok", flush=True)
        period = (RT_BUSY_US + RT_IDLE_US) / 1e6
        _spin(duration, RT_BUSY_US / (RT_BUSY_US + RT_IDLE_US), parent, period=period)
    elif a.memory:
        _copy(duration, parent)
    else:
        _spin(duration, load, parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
