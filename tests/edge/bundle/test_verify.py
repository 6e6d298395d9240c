"""Tests for `edgekit verify` (edge/bundle/verify.py): the table of canary results and the exit status."""

from __future__ import annotations

import numpy as np

from edge.core.atomic import sha256_file
from tests.edge._bundles import ONNX_FP32, TFLITE_FP32, TFLITE_INT8, flip, rewrite_manifest

# --------------------------------------------------------------------------- edgekit verify


def test_verify_cli_ok(folder, capsys):
    from edgekit.cli import main

    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 0
    out = capsys.readouterr().out
    assert "checksums ok" in out and "3 ok, 0 failed, 0 skipped" in out
    for aid, setting in ((TFLITE_FP32, "litert-xnnpack-t1"), (ONNX_FP32, "ort-cpu-t1")):
        assert any(aid in line and setting in line and " ok " in line for line in out.splitlines())
    # rpi4 runs only tflite: the onnx artifact is skipped, not failed.
    assert main(["verify", str(folder), "--profile", "rpi4"]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 0 failed, 1 skipped" in out and "was built for desktop-cpu" in out
    assert main(["verify", str(folder), "--artifact", ONNX_FP32]) == 0


def test_verify_cli_failures(folder, capsys):
    from edgekit.cli import main

    # Wrong expected scores (with a consistent checksum): the canary fails, exit 1.
    z = dict(np.load(folder / "canary.npz", allow_pickle=False))
    z[f"scores/{TFLITE_INT8}"] = z[f"scores/{TFLITE_INT8}"] + 3.0
    np.savez(folder / "canary.npz", **z)
    rewrite_manifest(folder, lambda m: m["extra"]["files"].update({"canary.npz": sha256_file(folder / "canary.npz")}))
    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 1
    cap = capsys.readouterr()
    assert "2 ok, 1 failed" in cap.out and f"{TFLITE_INT8}: canary FAILED" in cap.err
    # A corrupt artifact: exit 2 with the file named.
    flip(folder / "artifacts" / f"{ONNX_FP32}.onnx")
    assert main(["verify", str(folder)]) == 2
    assert f"artifacts/{ONNX_FP32}.onnx is corrupt" in capsys.readouterr().err


def test_verify_says_when_the_profile_does_not_describe_this_host(folder, tmp_path, monkeypatch, capsys):
    """Even with --profile given (the case it used to stay silent on): one line at start, before the table."""
    import device_profiles.host as host
    from edgekit.cli import main

    monkeypatch.setattr(host.Host, "detect", classmethod(lambda cls: host.Host("x86_64", 2, frozenset())))
    assert main(["verify", str(folder), "--profile", "rpi4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    note = next(i for i, line in enumerate(lines) if "NOT A rpi4" in line)
    assert lines[note] == ("  note: NOT A rpi4: rpi4 is an aarch64 board, this host is x86_64; its setting "
                           "litert-xnnpack-t4 runs 4 threads on 2 cores; canary results are this host's with the "
                           "settings of rpi4, not rpi4 canary results")
    assert note < next(i for i, line in enumerate(lines) if line.startswith("artifact"))
    assert any(line.startswith("  (max diff: the largest difference between these canary scores and the "
                               "workstation's") for line in lines)
    assert lines[-1] == f"next: edgekit bench {folder} --profile rpi4 --out rpi4-table.json"
    # A host the profile describes: no note.
    monkeypatch.setattr(host.Host, "detect", classmethod(lambda cls: host.Host("x86_64", 8, frozenset())))
    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 0
    assert "NOT A" not in capsys.readouterr().out


def test_verify_prints_each_predicted_accuracy_and_fails_a_drift(folder, capsys):
    from edgekit.cli import main
    from tests.edge._bundles import add_predictive_test

    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 0
    assert "no predictive test in this bundle" in capsys.readouterr().out
    add_predictive_test(folder, {}, default=1.0)
    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 0
    out = capsys.readouterr().out
    assert "predicted acc" in out and "3 ok, 0 failed" in out
    assert any(TFLITE_INT8 in line and "1.000" in line for line in out.splitlines())
    add_predictive_test(folder, {TFLITE_INT8: 0.0}, default=1.0)
    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 1
    cap = capsys.readouterr()
    assert "2 ok, 1 failed (1 by drift)" in cap.out and f"{TFLITE_INT8}: predicted accuracy 0.000" in cap.err
    assert "DRIFT" in cap.err
    # a margin of 1 lets any prediction pass
    assert main(["verify", str(folder), "--profile", "desktop-cpu", "--drift-margin", "1"]) == 0
