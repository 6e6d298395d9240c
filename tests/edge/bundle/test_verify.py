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
