"""benchmarks/perf/host_phases.py: windows of the same small work, and what their medians say about phases."""

from __future__ import annotations

import pytest

from benchmarks.perf import host_phases
from benchmarks.perf.host_phases import Phases


def test_slow_windows_and_the_length_of_their_runs():
    ph = Phases(starts_s=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), medians_us=(2.0, 2.1, 4.5, 4.4, 2.0, 4.0))
    assert ph.fastest_us == 2.0 and ph.slowest_us == 4.5
    assert ph.slow == (False, False, True, True, False, True)
    assert ph.slow_share == pytest.approx(0.5)
    assert ph.mean_slow_run_s == pytest.approx(1.5)  # runs of 2 and 1 windows, 1 s apart
    steady = Phases(starts_s=(0.0, 1.0), medians_us=(2.0, 2.2))
    assert steady.slow_share == 0 and steady.mean_slow_run_s == 0


def test_main_watches_and_prints_the_summary(capsys):
    assert host_phases.main(["--seconds", "0.5", "--window-ms", "5", "--cpu", "-1", "--every", "1"]) == 0
    out = capsys.readouterr().out
    assert "windows of 5 ms over 0.5 s" in out and "fastest" in out and "ratio" in out


def test_bad_arguments_say_what_is_allowed(capsys):
    assert host_phases.main(["--seconds", "0"]) == 2
    assert "--seconds must be in" in capsys.readouterr().err
