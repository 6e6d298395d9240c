"""benchmarks/perf/predictive_cost.py: the test's share of the bundle and what it adds to the runtime's start."""

from __future__ import annotations

import json

from benchmarks.perf.predictive_cost import main, without_test
from edge.bundle.predictive import PREDICTIVE_NAME
from edge.bundle.reader import open_bundle
from tests.edge._bundles import add_predictive_test
from tests.edge._fixtures import copy_bundle, edge_fixture


def test_it_compares_the_bundle_with_a_copy_without_the_test(tmp_path, capsys, monkeypatch):
    import benchmarks.perf.predictive_cost as cost

    monkeypatch.setattr(cost, "pin_one_core", lambda: None)  # the rest of the suite keeps both cores
    fx = edge_fixture()
    folder = add_predictive_test(copy_bundle(fx, tmp_path / "b"), {})
    bare = without_test(folder, tmp_path / "bare")
    b = open_bundle(bare)  # still a valid bundle, checksums and all
    assert not b.has_predictive_test and b.predictive_test() == {} and not (bare / PREDICTIVE_NAME).exists()
    assert "predictive_test" in json.loads((folder / "manifest.json").read_text())["extra"]
    assert main([str(folder), "--table", str(fx.selected_table), "--profile", str(fx.profile), "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{PREDICTIVE_NAME}" in out and "goal <= 5 %" in out and "added" in out and "goal <= 50 ms" in out


def test_a_bundle_without_a_test_is_refused(tmp_path, capsys):
    fx = edge_fixture()
    assert main([str(fx.bundle), "--table", str(fx.selected_table), "--rounds", "1"]) == 2
    assert "has no predictive test" in capsys.readouterr().err
