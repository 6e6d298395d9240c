"""Tests for edge.runtime.slowdown: the online filters track a step slowdown, recover, and shrug off junk."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from edge.runtime.slowdown import EwmaSlowdown, KalmanSlowdown, NoSlowdown, make_filter


def feed(f, ratios, expected=2.0):
    for r in ratios:
        f.update(r * expected, expected)
    return f.factor


@pytest.mark.parametrize("name", ["kalman", "ewma"])
def test_tracks_a_step_and_recovers(name):
    f = make_filter(name)
    rng = np.random.default_rng(0)
    assert f.factor == 1.0
    feed(f, 1.0 + 0.05 * rng.standard_normal(50))
    assert f.factor == pytest.approx(1.0, abs=0.1)
    # The board becomes 2.5x slower (contention): within ~20 inferences the estimate follows.
    feed(f, 2.5 * (1.0 + 0.05 * rng.standard_normal(20)))
    assert f.factor == pytest.approx(2.5, rel=0.12)
    # And comes back when the board recovers.
    feed(f, 1.0 + 0.05 * rng.standard_normal(30))
    assert f.factor == pytest.approx(1.0, abs=0.12)
    assert f.updates == 100


def test_kalman_reacts_within_a_few_inferences():
    f = KalmanSlowdown()
    feed(f, [1.0] * 30)
    steps = 0
    while f.factor < 1.8:
        f.update(2.0, 1.0)
        steps += 1
    assert steps <= 12
    # One outlier does not double the estimate.
    g = KalmanSlowdown()
    feed(g, [1.0] * 30)
    g.update(10.0, 1.0)
    assert g.factor < 4.0


def test_junk_is_ignored_and_outliers_are_clipped():
    f = KalmanSlowdown()
    for obs, exp in [(math.nan, 1.0), (math.inf, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -2.0), (0.0, 1.0)]:
        f.update(obs, exp)
    assert f.factor == 1.0 and f.updates == 0
    f.update(1e9, 1.0)  # clipped to RATIO_MAX
    assert math.isfinite(f.factor) and f.factor < 60


def test_reset_and_describe():
    f = KalmanSlowdown()
    feed(f, [3.0] * 10)
    assert f.factor > 2
    d = f.describe()
    assert d["filter"] == "kalman" and d["updates"] == 10 and "variance" in d
    f.reset()
    assert f.factor == 1.0 and f.updates == 0


def test_no_slowdown_stays_at_one():
    f = NoSlowdown()
    feed(f, [5.0] * 10)
    assert f.factor == 1.0


def test_bad_parameters():
    with pytest.raises(ValueError, match="unknown slowdown filter"):
        make_filter("median")
    with pytest.raises(ValueError):
        EwmaSlowdown(alpha=0)
    with pytest.raises(ValueError):
        KalmanSlowdown(q=0)


def test_thread_safe_updates():
    f = KalmanSlowdown()

    def work():
        for _ in range(2000):
            f.update(2.0, 1.0)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert f.updates == 8000
    assert f.factor == pytest.approx(2.0, rel=1e-3)
