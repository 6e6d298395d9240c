"""A bounded CPU hog: a separate process that spins one core for a stated time, then stops by itself.

It simulates a board slowing down (another process, a throttled core) during a policy
comparison. The hog is bounded three ways: it exits after its duration, it exits when
its parent dies, and the parent kills it on stop(), on exit and on context-manager exit.
"""

from __future__ import annotations

import argparse
import atexit
import os
import subprocess
import sys
import time
from dataclasses import dataclass

MAX_HOG_S = 3600.0


@dataclass(frozen=True)
class ContentionSpec:
    """Which part of a run is under contention: ``none``, ``half`` (the middle half) or a SHARE
    in (0, 1] (the middle SHARE of the requests). ``load`` is the busy fraction of one core."""

    share: float = 0.0
    load: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "ContentionSpec":
        s = str(spec).strip().lower()
        if s in ("none", "0", ""):
            return cls(0.0)
        if s == "half":
            return cls(0.5)
        if s == "full":
            return cls(1.0)
        try:
            share = float(s)
        except ValueError:
            raise ValueError(f"unknown contention '{spec}'; use none, half, full or a share of the run in (0, 1]") from None
        if not 0.0 < share <= 1.0:
            raise ValueError(f"contention share must be in (0, 1], got {spec}")
        return cls(share)

    @property
    def active(self) -> bool:
        return self.share > 0.0

    def describe(self) -> str:
        return "none" if not self.active else ("half" if self.share == 0.5 else f"{self.share:g}")

    def window(self, count: int) -> tuple[int, int]:
        """[start, stop) request indices under contention: the middle ``share`` of ``count``."""
        if not self.active or count <= 0:
            return (0, 0)
        n = max(1, int(round(self.share * count)))
        start = (count - n) // 2
        return (start, start + n)


def _spin(duration_s: float, load: float, parent: int) -> None:
    """Busy-loop for ``duration_s`` (``load`` share of each 10 ms period busy), then return."""
    end = time.monotonic() + duration_s
    period = 0.010
    x = 0
    next_parent_check = 0.0
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if now >= next_parent_check:
            # An orphaned hog would distort whatever runs next: leave when the parent is gone.
            if os.getppid() != parent:
                return
            next_parent_check = now + 0.2
        busy_until = min(end, now + period * load)
        while time.monotonic() < busy_until:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        if load < 1.0:
            time.sleep(period * (1.0 - load))


class CpuHog:
    """Start with ``start()``; it stops by itself after ``duration_s`` or on ``stop()``/exit."""

    def __init__(self, duration_s: float, load: float = 1.0, cpu: int | None = None):
        if not 0 < duration_s <= MAX_HOG_S:
            raise ValueError(f"CPU hog duration must be in (0, {MAX_HOG_S:g}] s, got {duration_s}")
        if not 0 < load <= 1.0:
            raise ValueError(f"CPU hog load must be in (0, 1], got {load}")
        self.duration_s = float(duration_s)
        self.load = float(load)
        self.cpu = cpu
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
            "benchmarks.contention",
            "--duration",
            repr(self.duration_s),
            "--load",
            repr(self.load),
            "--parent",
            str(os.getpid()),
        ]
        if self.cpu is not None:
            cmd += ["--cpu", str(int(self.cpu))]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        self.stopped_at = None
        atexit.register(self.stop)
        return self

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.contention", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, required=True, help="seconds to spin, then exit")
    ap.add_argument("--load", type=float, default=1.0, help="busy share of one core, (0, 1]")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is no longer the parent")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core (Linux)")
    a = ap.parse_args(argv)
    duration = min(max(a.duration, 0.0), MAX_HOG_S)
    load = min(max(a.load, 0.01), 1.0)
    if a.cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {a.cpu})
        except OSError:
            pass
    _spin(duration, load, a.parent if a.parent is not None else os.getppid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
