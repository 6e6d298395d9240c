"""Host phases: does this machine run the same small work at one speed, or in phases? (why in-process policies
take turns in ``edgekit evaluate``: ``benchmarks.evaluate.inproc``)

    .venv/bin/python -m benchmarks.perf.host_phases [--seconds 30] [--window-ms 10] [--cpu 0]

Pinned to one core, it times one unit of the serving path's own kind of work (cast, shift and scale ten scores,
take their argmax: what reading a quantized model's answer costs) back to back, in windows of ``--window-ms``,
with a 0.2 s pause between windows, for ``--seconds``. It prints each window's median in time order (every
``--every``-th), then the fastest and slowest window, their ratio, and the share of windows more than
``SLOW_RATIO`` x the fastest ("slow"), with the mean length of a run of slow windows in seconds. On a quiet
dedicated core the ratio stays near 1; this project's 2-core VM read 2.6 us against 4.2-5.0 us, alternating about
once a second. A comparison that serves one policy for 0.05-0.5 s then the next would compare phases, not policies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

SLOW_RATIO = 1.3  # a window this much slower than the fastest is in a slow phase
PAUSE_S = 0.2


@dataclass(frozen=True)
class Phases:
    """The windows' medians (us) and start times (s), and what they add up to."""

    starts_s: tuple[float, ...]
    medians_us: tuple[float, ...]

    @property
    def fastest_us(self) -> float:
        return min(self.medians_us)

    @property
    def slowest_us(self) -> float:
        return max(self.medians_us)

    @property
    def slow(self) -> tuple[bool, ...]:
        f = self.fastest_us
        return tuple(m > SLOW_RATIO * f for m in self.medians_us)

    @property
    def slow_share(self) -> float:
        return float(np.mean(self.slow)) if self.medians_us else 0.0

    @property
    def mean_slow_run_s(self) -> float:
        """The mean length in seconds of a run of consecutive slow windows (0 when none is slow)."""
        runs, n = [], 0
        for s in self.slow + (False,):
            if s:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        if not runs or len(self.starts_s) < 2:
            return 0.0
        step = (self.starts_s[-1] - self.starts_s[0]) / (len(self.starts_s) - 1)
        return float(np.mean(runs)) * step


def unit() -> None:
    """One unit of work: a quantized answer read (cast, shift, scale) and its argmax."""
    y = (_RAW.astype(np.float32) - 3) * 0.0125
    y.argmax()


_RAW = np.arange(10, dtype=np.int8).reshape(1, 10)


def measure(seconds: float, window_ms: float) -> Phases:
    t00 = time.perf_counter()
    starts, medians = [], []
    pc = time.perf_counter
    while pc() - t00 < seconds:
        start = pc()
        laps = []
        while pc() - start < window_ms / 1000.0:
            t = pc()
            unit()
            laps.append(pc() - t)
        starts.append(start - t00)
        medians.append(float(np.median(laps)) * 1e6)
        time.sleep(PAUSE_S)
    return Phases(tuple(starts), tuple(medians))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.perf.host_phases", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to watch (default 30)")
    ap.add_argument("--window-ms", type=float, default=10.0, help="length of one timed window (default 10)")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0; -1: do not pin)")
    ap.add_argument("--every", type=int, default=5, help="print every N-th window (default 5)")
    a = ap.parse_args(argv)
    if not (0 < a.seconds <= 3600 and 0 < a.window_ms <= 1000 and a.every >= 1):
        print("error: --seconds must be in (0, 3600], --window-ms in (0, 1000], --every >= 1", file=sys.stderr)
        return 2
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {a.cpu})
        except OSError as exc:
            print(f"error: cannot pin to cpu {a.cpu}: {exc.strerror}; pass --cpu -1 or another core", file=sys.stderr)
            return 2
    ph = measure(a.seconds, a.window_ms)
    for t, m, s in list(zip(ph.starts_s, ph.medians_us, ph.slow))[:: a.every]:
        print(f"{t:7.2f} s  {m:6.2f} us{'  slow' if s else ''}")
    print(f"{len(ph.medians_us)} windows of {a.window_ms:g} ms over {a.seconds:g} s, cpu {a.cpu}: fastest "
          f"{ph.fastest_us:.2f} us, slowest {ph.slowest_us:.2f} us, ratio {ph.slowest_us / ph.fastest_us:.2f}x; "
          f"{ph.slow_share:.0%} of the windows slower than {SLOW_RATIO:g}x the fastest, in runs of "
          f"{ph.mean_slow_run_s:.2f} s on average")
    return 0


if __name__ == "__main__":
    sys.exit(main())
