"""benchmarks.evaluate.turns: the turns' request ranges and the loop that serves them, each policy on its own clock."""

from __future__ import annotations

import time

import pytest

from benchmarks.evaluate.loadgen import RequestRecord
from benchmarks.evaluate.turns import take_turns, turns


def test_turns_split_every_block_and_at_the_contention_windows_edges():
    assert turns(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert turns(250, 100, (60, 190)) == [(0, 60), (60, 100), (100, 190), (190, 200), (200, 250)]
    assert turns(5, 100, (0, 0)) == [(0, 5)]
    with pytest.raises(ValueError, match="at least 1 request"):
        turns(10, 0)


def _record(i: int, t0: float) -> RequestRecord:
    now = time.perf_counter() - t0
    return RequestRecord(index=i, image_index=0, label=0, deadline_ms=1.0, arrival_s=now, sent_s=now, e2e_ms=0.0,
                         status=200)


def test_each_turn_starts_with_the_next_policy_and_each_clock_counts_its_own_turns():
    order: list[tuple[int, int]] = []
    before: list[int] = []

    def send(m: int, i: int, t0: float) -> RequestRecord:
        order.append((m, i))
        if m == 1:
            time.sleep(0.002)  # policy 1 is slow: policy 0's clock must not count it
        return _record(i, t0)

    records, own, cut = take_turns(turns(7, 3), 2, send, 60.0, on_request=before.append)
    assert order == ([(0, i) for i in range(3)] + [(1, i) for i in range(3)] + [(1, i) for i in range(3, 6)]
                     + [(0, i) for i in range(3, 6)] + [(0, 6), (1, 6)])
    assert before == [0, 1, 2] * 2 + [3, 4, 5] * 2 + [6, 6]  # before every request, each policy's own
    assert not cut and [[r.index for r in recs] for recs in records] == [list(range(7))] * 2
    assert own[1] >= 7 * 0.002 > own[0]
    for recs, wall in zip(records, own):
        sent = [r.sent_s for r in recs]
        assert sent == sorted(sent) and 0 <= sent[0] and sent[-1] <= wall


def test_the_budget_cuts_every_policy_at_the_same_turn():
    def send(m: int, i: int, t0: float) -> RequestRecord:
        time.sleep(0.01)
        return _record(i, t0)

    records, _, cut = take_turns(turns(100, 2), 3, send, 0.05)
    assert cut and len({len(r) for r in records}) == 1 and 0 < len(records[0]) < 100
