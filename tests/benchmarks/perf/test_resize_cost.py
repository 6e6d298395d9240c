"""benchmarks.perf.resize_cost on a real bundle whose variant takes 36x36 images of its 28x28 ones: the kit's resize
beside the bare call, and serving beside bench's own timed loop, in process and through the daemon."""

from __future__ import annotations

import json
import re

from benchmarks.perf import resize_cost


def test_prints_the_resize_and_served_beside_bench(resolution_run, tmp_path, capsys):
    table = json.loads(resolution_run["table"].read_text())
    sel = json.loads(resolution_run["selected"].read_text())
    sel["rows"] = [next(r for r in table["rows"] if "-r36.tflite-fp32@" in r["variant"])]  # one row: a front
    (tmp_path / "one.json").write_text(json.dumps(sel))
    rc = resize_cost.main([str(resolution_run["bundle"]), "--table", str(tmp_path / "one.json"), "--profile",
                           str(resolution_run["profile"]), "--images", "16", "--rounds", "1", "--requests", "40",
                           "--serve-rounds", "2", "--daemon", "--spin-us", "500"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^\s+36x36\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert "goal kit resize (as serving calls it) <= 1.2x a bare cv2.resize call into a buffer: worst" in out
    rows = re.findall(r"r36\.tflite-fp32@\S+: served [\d.]+ us, bench [\d.]+ us: ([\d.]+)[ ,].*resizes", out)
    assert len(rows) == 2 and all(float(r) > 0 for r in rows), out  # in process and through the daemon
    assert "goal daemon served/table <= 1.1 for the variants that resize (side by side): worst" in out
    # The daemon's row also times bench idling, before each run, as long as the daemon's core between requests.
    idle = re.findall(r"r36\.tflite-fp32@\S+: served .*, bench idling (\d+) us before each run [\d.]+ us: ([\d.]+)",
                      out)
    assert len(idle) == 1 and int(idle[0][0]) > 0 and float(idle[0][1]) > 0, out
    assert "the same with bench idling as the daemon's core does between requests" in out
    # --spin-us: a second daemon busy polling, side by side with the sleeping one, over bench's back-to-back loop.
    spin = re.findall(r"r36\.tflite-fp32@\S+: served .*; busy polling 500 us: served ([\d.]+) us, over bench ([\d.]+), "
                      r"over table p50 ([\d.]+)  resizes", out)
    assert len(spin) == 1 and all(float(v) > 0 for v in spin[0]), out
    assert re.search(r"goal daemon served/table <= 1\.1 for the variants that resize, the daemon busy polling 500 us "
                     r".*: worst [\d.]+ -> (met|NOT met)", out), out


def test_a_bundle_without_a_resizing_variant_says_so(resolution_run, tmp_path, capsys):
    table = json.loads(resolution_run["table"].read_text())
    sel = json.loads(resolution_run["selected"].read_text())
    sel["rows"] = [next(r for r in table["rows"] if "-r28.tflite-fp32@" in r["variant"])]
    (tmp_path / "one.json").write_text(json.dumps(sel))
    assert resize_cost.main([str(resolution_run["bundle"]), "--table", str(tmp_path / "one.json"), "--profile",
                             str(resolution_run["profile"]), "--images", "8"]) == 0
    assert "no variant of the table takes another input size: nothing resizes" in capsys.readouterr().out


def test_counts_below_one_are_refused_by_name(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        resize_cost.main(["bundle", "--table", "t.json", "--serve-rounds", "0"])
    assert e.value.code == 2 and "--serve-rounds must be at least 1, got 0" in capsys.readouterr().err


def test_a_busy_polling_window_out_of_range_or_without_the_daemon_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        resize_cost.main(["bundle", "--table", "t.json", "--daemon", "--spin-us", "-1"])
    assert e.value.code == 2 and "--spin-us must be 0 (off) to 100000 microseconds, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        resize_cost.main(["bundle", "--table", "t.json", "--spin-us", "200"])
    assert e.value.code == 2 and "--spin-us busy-polls the daemon: add --daemon" in capsys.readouterr().err


def test_the_options_check_themselves_where_they_are_made():
    import pytest

    from edge.core.errors import UsageError

    assert resize_cost.ResizeCostOptions("b", "t.json").requests == 400
    with pytest.raises(UsageError, match="--requests must be at least 1, got 0"):
        resize_cost.ResizeCostOptions("b", "t.json", requests=0)
    with pytest.raises(UsageError, match="add --daemon"):
        resize_cost.ResizeCostOptions("b", "t.json", spin_us=100)
