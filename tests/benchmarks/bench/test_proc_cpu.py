"""benchmarks.bench.proc_cpu: a process's time on a core from /proc, summed over its threads."""

from __future__ import annotations

import os
import threading
import time

from benchmarks.bench.proc_cpu import cpu_ns, cpu_ticks


def test_tick_counts_follow_the_threads_time_on_a_core():
    user0, system0 = cpu_ticks(os.getpid())
    end = time.monotonic() + 5.0
    while cpu_ticks(os.getpid())[0] == user0 and time.monotonic() < end:
        sum(range(10_000))  # user-space work until a tick is counted
    user1, system1 = cpu_ticks(os.getpid())
    assert user1 > user0 and system1 >= system0
    assert cpu_ticks(2 ** 22 + 12345) is None  # no such process


def test_nanoseconds_count_every_live_thread():
    before = cpu_ns(os.getpid())
    spun, done = threading.Event(), threading.Event()

    def spin() -> None:
        t = time.thread_time()
        while time.thread_time() - t < 0.05:  # 50 ms on a core, in another thread
            pass
        spun.set()
        done.wait(10)  # a thread's counters leave /proc with it: keep it until it is read
    th = threading.Thread(target=spin)
    th.start()
    assert spun.wait(10)
    after = cpu_ns(os.getpid())
    done.set()
    th.join()
    assert after - before >= 50_000_000
    assert cpu_ns(2 ** 22 + 12345) is None
