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


def test_a_short_body_flood_is_refused_past_the_cap_and_measured():
    """2 rounds x 8 connections x (8 MiB - 1) bytes against a 16 MiB cap: one body fits at a time, the rest
    get 503; the daemon still answers afterwards and holds nothing but the asking request's head."""
    fx = edge_fixture()
    r = soak.flood(str(fx.bundle), str(fx.selected_table), str(fx.profile), rounds=2, connections=8, cap_mb=16,
                   hold_s=0.5, say=lambda *a: None)
    assert r["answers"].get(503, 0) >= 2 * 6 and r["answers"].get("none", 0) >= 2
    assert r["ready_after"] == 200 and r["buffered_after"] is not None and r["buffered_after"] < 1024
    assert r["rss_start_mb"] > 0 and r["rss_peak_mb"] >= r["rss_start_mb"]
    text = soak.format_flood(r)
    assert "goal peak <= (start + cap) x 1.10" in text and "goal after within 5 %" in text
    assert text.count("PASS") + text.count("MISS") == 2
