"""The soak benchmark, bounded to seconds on the small test bundle: every answer is 200, 408 or 503."""

from __future__ import annotations

from benchmarks.perf import soak
from tests.edge._fixtures import edge_fixture


def test_a_short_soak_answers_everything_within_bounds():
    fx = edge_fixture()
    r = soak.run(str(fx.bundle), str(fx.selected_table), str(fx.profile), seconds=10, clients=2, idle=50,
                 say=lambda *a: None)
    assert r["answered"] > 0 and not r["bad_status"] and not r["errors"] and r["five_xx"] == 0
    assert r["open_connections"] >= 50 and r["threads"] >= 1 and r["fds"] > 50
    assert "goal only 200/408/503" in soak.format_results(r)
