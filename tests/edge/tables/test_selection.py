"""Tests for edge.tables.selection: Pareto front, epsilon, limits (DP vs brute force), selected table files and the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.tables.selection import epsilon_filter, expected_accuracy, pareto_front, row_memory_mb, select_subset
from edge.tables.table import DeviceHeader, LatencyRow, LatencyTable, SelectedTable, TableError


def row(name: str, p95: float, acc: float, mem: float = 1.0, setting: str = "litert-xnnpack-t1", mean: float | None = None) -> LatencyRow:
    mean = p95 * 0.8 if mean is None else mean
    return LatencyRow(
        variant=f"{name}@{setting}", artifact_id=name, model_id=name.split(".")[0], format="tflite",
        precision="fp32", setting=setting, backend="litert", provider="xnnpack", threads=1, accuracy=acc,
        eval_count=100, samples=100, mean_ms=mean, std_ms=0.1, min_ms=p95 * 0.5, p50_ms=p95 * 0.7,
        p90_ms=p95 * 0.9, p95_ms=p95, p99_ms=p95 * 1.2, max_ms=p95 * 2, load_ms=1.0, first_inference_ms=p95,
        preprocess_ms=0.01, peak_rss_mb=mem, size_bytes=0,
    )


def table(*rows: LatencyRow) -> LatencyTable:
    return LatencyTable(header=DeviceHeader(profile="desktop-cpu"), rows=tuple(rows))


def test_pareto_front_is_strictly_monotonic_and_drops_dominated():
    t = table(
        row("a", 1.0, 0.60),
        row("b", 2.0, 0.55),  # slower and less accurate than a: dominated
        row("c", 3.0, 0.70),
        row("d", 3.0, 0.72),  # same latency as c, more accurate: c goes
        row("e", 4.0, 0.72),  # same accuracy as d, slower: goes
        row("f", 5.0, 0.80),
    )
    sel = select_subset(t)
    assert [r.artifact_id for r in sel.rows] == ["a", "d", "f"]
    for prev, cur in zip(sel.rows, sel.rows[1:]):
        assert cur.p95_ms > prev.p95_ms and cur.accuracy > prev.accuracy
    assert set(sel.params.dropped) == {"b@litert-xnnpack-t1", "c@litert-xnnpack-t1", "e@litert-xnnpack-t1"}
    assert sel.params.method == "pareto" and sel.params.front_size == 3 and sel.params.candidates == 6


def test_same_artifact_under_two_settings_are_separate_candidates():
    t = table(
        row("m", 2.0, 0.8, setting="litert-xnnpack-t1"),
        row("m", 5.0, 0.8, setting="litert-plain-t1"),
        row("s", 1.0, 0.7, setting="litert-plain-t1"),
    )
    sel = select_subset(t)
    assert sel.variants == ("s@litert-plain-t1", "m@litert-xnnpack-t1")
    assert "m@litert-plain-t1" in sel.params.dropped


def test_quantile_changes_the_ordering():
    # b is faster on average but has a long tail.
    a = row("a", 2.0, 0.7, mean=1.5)
    b = row("b", 4.0, 0.8, mean=1.0)
    assert [r.artifact_id for r in select_subset(table(a, b), quantile="p95").rows] == ["a", "b"]
    assert [r.artifact_id for r in select_subset(table(a, b), quantile="mean").rows] == ["b"]


def test_epsilon_drops_small_gains():
    front = [row("a", 1, 0.70), row("b", 2, 0.705), row("c", 3, 0.72), row("d", 4, 0.721), row("e", 5, 0.75)]
    kept = epsilon_filter(front, 0.01)
    assert [r.artifact_id for r in kept] == ["a", "c", "e"]
    sel = select_subset(table(*front), epsilon=0.01)
    assert [r.artifact_id for r in sel.rows] == ["a", "c", "e"]
    assert sel.params.method == "epsilon-pareto"
    assert epsilon_filter(front, 0.0) == front


def test_expected_accuracy_by_hand():
    rows = [row("a", 1, 0.5), row("b", 3, 0.9)]
    # Deadlines uniform on [0, 4]: [0,1) nothing fits (0), [1,3) a (0.5), [3,4] b (0.9).
    assert expected_accuracy(rows, "p95", (0, 4)) == pytest.approx((0 * 1 + 0.5 * 2 + 0.9 * 1) / 4)
    # A single deadline scores the best member that fits it.
    assert expected_accuracy(rows, "p95", (2, 2)) == pytest.approx(0.5)


def brute_force(front, k, budget, drange):
    best, best_set = -1.0, None
    for m in range(1, len(front) + 1):
        if k is not None and m > k:
            break
        for sub in itertools.combinations(front, m):
            if budget is not None and sum(row_memory_mb(r) for r in sub) > budget + 1e-9:
                continue
            v = expected_accuracy(list(sub), "p95", drange)
            if v > best + 1e-12:
                best, best_set = v, sub
    return best, best_set


def test_max_models_keeps_the_subset_losing_least_expected_accuracy():
    rows = [row("a", 1, 0.60), row("b", 2, 0.70), row("c", 3, 0.71), row("d", 8, 0.90), row("e", 10, 0.91)]
    sel = select_subset(table(*rows), max_models=3)
    assert len(sel.rows) == 3
    assert sel.params.method == "expected-accuracy-dp"
    best, _ = brute_force(pareto_front(rows), 3, None, (1, 15))  # default: fastest to 1.5 x slowest
    assert sel.params.expected_accuracy == pytest.approx(best, abs=1e-6)
    # The fastest must stay (below it everything misses) and the big jump to d must be kept.
    assert sel.rows[0].artifact_id == "a" and "d" in [r.artifact_id for r in sel.rows]
    assert all("max 3 models" in why for v, why in sel.params.dropped.items())


def test_memory_budget_drops_what_does_not_fit_alone_and_respects_the_total():
    rows = [row("a", 1, 0.6, mem=10), row("b", 2, 0.7, mem=30), row("c", 3, 0.8, mem=50), row("huge", 4, 0.9, mem=500)]
    sel = select_subset(table(*rows), memory_budget_mb=70)
    assert "huge@litert-xnnpack-t1" in sel.params.dropped
    assert sum(row_memory_mb(r) for r in sel.rows) <= 70
    best, _ = brute_force(pareto_front(rows[:3]), None, 70, (1, 4.5))
    assert sel.params.expected_accuracy == pytest.approx(best, abs=1e-6)
    with pytest.raises(ValueError, match="no variant fits"):
        select_subset(table(*rows), memory_budget_mb=5)


def test_deadline_range_steers_the_choice():
    rows = [row("a", 1, 0.5), row("b", 2, 0.6), row("c", 9, 0.7), row("d", 10, 0.95)]
    # Only long deadlines: the two slow, accurate ones (c covers [9.5, 10), d the rest).
    long = select_subset(table(*rows), max_models=2, deadline_range=(9.5, 20))
    assert [r.artifact_id for r in long.rows] == ["c", "d"]
    # Only short deadlines: the two fast ones.
    short = select_subset(table(*rows), max_models=2, deadline_range=(1, 3))
    assert [r.artifact_id for r in short.rows] == ["a", "b"]
    assert short.params.deadline_range_ms == (1.0, 3.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 100), st.integers(1, 9)), min_size=1, max_size=7
    ),
    st.one_of(st.none(), st.integers(1, 4)),
    st.one_of(st.none(), st.integers(5, 25)),
)
def test_dp_matches_brute_force(spec, k, budget):
    rows = [row(f"m{i}", float(lat), acc / 100.0, mem=float(mem)) for i, (lat, acc, mem) in enumerate(spec)]
    t = table(*rows)
    try:
        sel = select_subset(t, max_models=k, memory_budget_mb=budget)
    except ValueError:
        assert budget is not None and all(row_memory_mb(r) > budget for r in pareto_front(rows))
        return
    front = [r for r in pareto_front(rows) if budget is None or row_memory_mb(r) <= budget]
    drange = (front[0].p95_ms, 1.5 * front[-1].p95_ms)
    best, _ = brute_force(front, k, budget, drange)
    assert sel.params.expected_accuracy == pytest.approx(best, abs=1e-6)
    assert k is None or len(sel.rows) <= k
    assert budget is None or sum(row_memory_mb(r) for r in sel.rows) <= budget + 1e-9
    for prev, cur in zip(sel.rows, sel.rows[1:]):
        assert cur.p95_ms > prev.p95_ms and cur.accuracy > prev.accuracy


def test_bad_arguments_are_refused():
    t = table(row("a", 1, 0.5))
    with pytest.raises(ValueError, match="quantile"):
        select_subset(t, quantile="p42")
    with pytest.raises(ValueError, match="epsilon"):
        select_subset(t, epsilon=-0.1)
    with pytest.raises(ValueError, match="max models"):
        select_subset(t, max_models=0)
    with pytest.raises(ValueError, match="deadline range"):
        select_subset(t, deadline_range=(5, 1))
    with pytest.raises(ValueError, match="no rows"):
        select_subset(table())
    with pytest.raises(ValueError, match="positive finite"):
        select_subset(table(row("nan", math.nan, 0.5)))


def test_save_load_roundtrip_and_validation(tmp_path):
    sel = select_subset(table(row("a", 1, 0.5), row("b", 2, 0.6)), source_table="t.json")
    p = sel.save(tmp_path / "sel.json")
    assert (tmp_path / "sel.csv").exists()
    back = SelectedTable.load(p)
    assert back.rows == sel.rows
    assert back.params == sel.params
    assert back.params.quantile == "p95" and back.params.epsilon == 0.0
    d = json.loads(p.read_text())
    assert d["kind"] == "selected"
    assert set(d["selection"]) >= {"quantile", "epsilon", "max_models", "memory_budget_mb", "source_table", "method"}
    with pytest.raises(TableError, match="profile"):
        SelectedTable.load(p, profile="rpi4")

    # A latency table is not a selected one.
    table(row("a", 1, 0.5)).save(tmp_path / "lat.json")
    with pytest.raises(TableError, match="edgekit select"):
        SelectedTable.load(tmp_path / "lat.json")
    # Non-monotonic rows are refused.
    d["rows"] = list(reversed(d["rows"]))
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(TableError, match="not monotonic"):
        SelectedTable.load(tmp_path / "bad.json")
    # Truncated JSON.
    (tmp_path / "trunc.json").write_text(p.read_text()[:50])
    with pytest.raises(TableError, match="not valid JSON"):
        SelectedTable.load(tmp_path / "trunc.json")
    d["rows"] = []
    (tmp_path / "empty.json").write_text(json.dumps(d))
    with pytest.raises(TableError, match="no rows"):
        SelectedTable.load(tmp_path / "empty.json")


def test_cli_select(tmp_path, capsys):
    from edgekit.cli import main

    rows = [row("a", 1, 0.6, mem=100), row("b", 2, 0.7, mem=100), row("c", 3, 0.8, mem=100), row("d", 4, 0.5)]
    table(*rows).save(tmp_path / "lat.json")
    out = tmp_path / "sel.json"
    rc = main(["select", str(tmp_path / "lat.json"), "--max-models", "2", "--deadline-range", "1:4", "--out", str(out)])
    assert rc == 0
    sel = SelectedTable.load(out)
    assert len(sel.rows) == 2 and sel.params.max_models == 2
    assert "wrote" in capsys.readouterr().out
    # --profile takes its memory budget (desktop-cpu: 2048 MB) and checks the table's profile.
    rc = main(["select", str(tmp_path / "lat.json"), "--profile", "desktop-cpu", "--out", str(out)])
    assert rc == 0 and SelectedTable.load(out).params.memory_budget_mb == 2048
    rc = main(["select", str(tmp_path / "lat.json"), "--profile", "rpi4", "--out", str(out)])
    assert rc == 2
    assert "measured with profile 'desktop-cpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", str(tmp_path / "lat.json"), "--deadline-range", "x", "--out", str(out)])


def test_default_range_gives_the_most_accurate_variant_deadlines_to_win():
    rows = [row("small", 0.006, 0.70), row("medium", 0.031, 0.80), row("large", 9.0, 0.88)]
    sel = select_subset(table(*rows), max_models=2)
    assert [r.artifact_id for r in sel.rows] == ["medium", "large"]
    assert sel.params.deadline_range_ms == pytest.approx((0.006, 13.5))


# --------------------------------------------------------------------------- reload safety: only TableError, no echo

SECRET = "s3cr3t-TOKEN-4f9a1c"


def _selected_dict() -> dict:
    return select_subset(table(row("a", 1, 0.5), row("b", 2, 0.6)), source_table="t.json").to_dict()


def _load(tmp_path, d) -> SelectedTable:
    p = tmp_path / "sel.json"
    p.write_text(json.dumps(d))
    return SelectedTable.load(p)


@pytest.mark.parametrize(
    "where, key, value, message",
    [
        ("row", "accuracy", math.nan, r"row 0 \('a@litert-xnnpack-t1'\): key 'accuracy' must be a finite number \(got NaN\)"),
        ("row", "p99_ms", -math.inf, "key 'p99_ms' must be a finite number"),
        ("row", "accuracy", "0.5", "key 'accuracy' must be a number"),
        ("selection", "quantile", SECRET, r"'selection': key 'quantile' must be one of \["),
        ("selection", "quantile", 95, "key 'quantile' must be a string"),
        ("selection", "epsilon", None, "key 'epsilon' must be a number"),
        ("selection", "max_models", 2.5, "key 'max_models' must be an integer"),
        ("selection", "deadline_range_ms", [1, SECRET], "key 'deadline_range_ms' must be an array of two finite numbers"),
        ("selection", "deadline_range_ms", [1], "key 'deadline_range_ms' must be an array of two finite numbers"),
        ("selection", "dropped", {"v": 1}, "key 'dropped' must be an object whose values are strings"),
        ("selection", "bogus", 1, "'selection' has an unknown key 'bogus'"),
        ("top", "selection", [SECRET], r"'selection' must be a JSON object \(got an array\)"),
    ],
)
def test_selected_table_wrong_types(tmp_path, where, key, value, message):
    d = _selected_dict()
    target = {"row": d["rows"][0], "selection": d["selection"], "top": d}[where]
    target[key] = value
    with pytest.raises(TableError, match=message) as err:
        _load(tmp_path, d)
    assert "sel.json" in str(err.value) and "re-run 'edgekit select'" in str(err.value)
    assert SECRET not in str(err.value)


def test_selection_keys_may_be_missing(tmp_path):
    d = _selected_dict()
    d["selection"] = {"quantile": "p95"}
    assert _load(tmp_path, d).params.epsilon == 0.0
    del d["selection"]
    assert _load(tmp_path, d).params.quantile == "p95"


# JSON values of every type, the secret among the strings.
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", SECRET, "p95", "x" * 300]),
)
_json_value = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)


def _paths(d: dict) -> list[tuple]:
    """Every key path of a selected table's dict (top level, header, selection, first row)."""
    out: list[tuple] = [(k,) for k in d]
    out += [("header", k) for k in d["header"]] + [("selection", k) for k in d["selection"]]
    out += [("rows", 0, k) for k in d["rows"][0]] + [("rows", 0), ("rows", 1)]
    return out


_PATHS = _paths(_selected_dict())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PATHS), _json_value)
def test_any_mutation_gives_a_table_or_a_table_error(path, value):
    d = _selected_dict()
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    try:
        # Through the JSON text, as a reload reads it (NaN and Infinity written as JSON allows).
        sel = SelectedTable.from_dict(json.loads(json.dumps(d)), src="sel.json")
    except TableError as exc:
        msg = str(exc)
        assert msg.startswith("sel.json") and SECRET not in msg
        assert "edgekit" in msg  # says what to do
        return
    for r in sel.rows:  # what loads is usable by the daemon
        assert isinstance(r.variant, str) and isinstance(r.threads, int)
        assert all(math.isfinite(r.latency(q)) for q in ("mean", "p50", "p90", "p95", "p99", "max"))
        assert math.isfinite(r.accuracy) and not isinstance(r.accuracy, bool)


@settings(max_examples=200, deadline=None)
@given(_json_value)
def test_any_json_document_gives_a_table_error(value):
    with pytest.raises(TableError) as err:
        SelectedTable.from_dict(json.loads(json.dumps(value)), src="sel.json")
    assert SECRET not in str(err.value)


def test_long_or_odd_variant_names_are_not_echoed(tmp_path):
    d = _selected_dict()
    d["rows"].reverse()  # not monotonic
    d["rows"][0]["variant"] = "x" * 300
    d["rows"][1]["variant"] = "line\nbreak\x1b[31m"
    with pytest.raises(TableError, match=r"not monotonic at row 1: its p95 latency .* those of row 0; re-run") as err:
        _load(tmp_path, d)
    assert "xxx" not in str(err.value) and "\x1b" not in str(err.value)


def _with_correct(r: LatencyRow, right) -> LatencyRow:
    import dataclasses

    from edge.tables.table import encode_correct

    return dataclasses.replace(r, correct=encode_correct(right), eval_count=len(right), accuracy=float(right.mean()))


def test_the_correct_mask_survives_a_table_round_trip(tmp_path):
    import numpy as np

    from edge.tables.table import decode_correct

    right = np.random.default_rng(0).random(333) < 0.8
    r = _with_correct(row("a", 1.0, 0), right)
    t = table(r)
    t.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json").rows[0]
    assert np.array_equal(decode_correct(back.correct, back.eval_count), right)
    assert "correct" not in (tmp_path / "t.csv").read_text().splitlines()[0]
    assert decode_correct("not base64!", 10) is None and decode_correct(back.correct, 5000) is None


# ----------------------------------------------------------------------------- a front too small to adapt over


def _graded(name: str, p95: float, right: int) -> LatencyRow:
    """A row that got the first ``right`` of 100 images right (its per-image record, for the paired test)."""
    import dataclasses

    import numpy as np

    from edge.tables.table import encode_correct

    mask = np.arange(100) < right
    return dataclasses.replace(row(name, p95, right / 100), correct=encode_correct(mask))


def test_a_front_of_fewer_than_three_variants_is_warned_about_with_why_and_what_to_try():
    from edge.tables.selection import FEW_VARIANTS, few_variants_warning

    assert FEW_VARIANTS == 3
    # One variant: every other row is slower and no more accurate.
    one = select_subset(table(row("a", 1, 0.8), row("b", 2, 0.7), row("c", 3, 0.8), row("d", 4, 0.75)))
    w = few_variants_warning(one)
    assert w.startswith("warning: only 1 variant kept, so the runtime serves that variant to every request: "
                        "there is nothing to adapt between.")
    assert "3 of 4 rows are dominated" in w
    assert "a larger --sample at 'edgekit train'" in w and "--family demo" in w
    assert "--significance" in w  # and why loosening it would not help here: it dropped nothing
    # Two variants, a third dropped by the paired test: the advice names a less strict test.
    two = select_subset(table(_graded("a", 1, 60), _graded("b", 2, 61), _graded("c", 3, 90)))
    assert [r.artifact_id for r in two.rows] == ["a", "c"]
    w = few_variants_warning(two)
    assert w.startswith("warning: only 2 variants kept, so the runtime can only choose between these two.")
    assert "1 more was dropped because the paired test at --significance 0.05 cannot tell" in w
    assert "--significance 0.2 here (0 turns it off and keeps every Pareto step)" in w
    assert few_variants_warning(select_subset(table(_graded("a", 1, 60), _graded("b", 2, 61), _graded("c", 3, 90)),
                                              significance=0)) == ""


def test_cli_select_warns_on_stderr_and_says_what_comes_next(tmp_path, capsys):
    from edgekit.cli import main

    table(row("a", 1, 0.8), row("b", 2, 0.7)).save(tmp_path / "lat.json")
    out = tmp_path / "sel.json"
    assert main(["select", str(tmp_path / "lat.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "warning: only 1 variant kept" in printed.err and "warning" not in printed.out
    assert f"next: edgekit serve BUNDLE --table {out} --profile desktop-cpu" in printed.out
    rows = [row("a", 1, 0.6), row("b", 2, 0.7), row("c", 3, 0.8)]
    table(*rows).save(tmp_path / "lat3.json")
    assert main(["select", str(tmp_path / "lat3.json"), "--out", str(out)]) == 0
    assert "warning" not in capsys.readouterr().err
