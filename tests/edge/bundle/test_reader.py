"""Tests for the device-side bundle reader (edge/bundle/reader.py): checksums, listed files, evaluation parts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import edge.bundle.archive
import edge.bundle.canary
import edge.bundle.reader as eb
import edge.bundle.verify
from edge.bundle.reader import BundleError, BundleWarning, open_bundle
from edge.core.atomic import sha256_file
from tests.edge._bundles import ONNX_FP32, TFLITE_FP32, TFLITE_INT8, flip, rewrite_manifest

# --------------------------------------------------------------------------- folder


def test_open_folder(folder):
    b = open_bundle(folder)
    assert b.root == folder and b.source == folder and b.profile == "desktop-cpu"
    assert {a.artifact_id for a in b.artifacts} == {TFLITE_FP32, TFLITE_INT8, ONNX_FP32}
    assert b.artifact_path(ONNX_FP32) == folder / "artifacts" / f"{ONNX_FP32}.onnx"
    assert b.input_shape == (12, 12, 1) and len(b.class_names) == 10
    assert b.manifest_sha256 == sha256_file(folder / "manifest.json")
    with pytest.raises(BundleError, match="unknown artifact 'nope'"):
        b.artifact_path("nope")


def test_flipped_byte_names_the_artifact(folder):
    flip(folder / "artifacts" / f"{TFLITE_INT8}.tflite")
    with pytest.raises(BundleError, match=rf"file artifacts/{TFLITE_INT8}\.tflite is corrupt.*re-copy the bundle"):
        open_bundle(folder)
    # verify=False opens it anyway (e.g. to inspect), the loader of a runtime would then fail on it.
    assert open_bundle(folder, verify=False).profile == "desktop-cpu"


@pytest.mark.parametrize("name", ["eval.npz", "canary.npz"])
def test_flipped_data_file_named(folder, name):
    flip(folder / name, 50)
    with pytest.raises(BundleError, match=rf"file {name} is corrupt"):
        open_bundle(folder)


def test_truncated_artifact_named(folder):
    p = folder / "artifacts" / f"{ONNX_FP32}.onnx"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BundleError, match=rf"artifacts/{ONNX_FP32}\.onnx is corrupt \(\d+ bytes, manifest says"):
        open_bundle(folder)


def test_missing_file_named(folder):
    (folder / "artifacts" / f"{TFLITE_FP32}.tflite").unlink()
    with pytest.raises(BundleError, match=rf"missing file artifacts/{TFLITE_FP32}\.tflite.*re-copy"):
        open_bundle(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a bundle: it has no manifest.json"):
        open_bundle(folder)
    with pytest.raises(BundleError, match="bundle not found"):
        open_bundle(folder / "nowhere")


def test_extra_file_reported(folder):
    (folder / "notes.txt").write_text("hi")
    (folder / "artifacts" / "old.tflite").write_bytes(b"x")
    with pytest.warns(BundleWarning, match="2 file\\(s\\) not listed"):
        b = open_bundle(folder)
    assert b.extra_files == ("artifacts/old.tflite", "notes.txt")


def test_link_outside_refused(folder, tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("s")
    (folder / "artifacts" / "x.tflite").symlink_to(outside)
    with pytest.raises(BundleError, match="'artifacts/x.tflite' is a link to .* outside the bundle"):
        open_bundle(folder)


def test_listed_file_linked_outside_refused(folder, tmp_path):
    p = folder / "artifacts" / f"{TFLITE_FP32}.tflite"
    shutil.move(p, tmp_path / "moved.tflite")
    p.symlink_to(tmp_path / "moved.tflite")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        open_bundle(folder)


@pytest.mark.parametrize("bad", ["../outside.tflite", "/etc/passwd", "artifacts/../../x"])
def test_manifest_path_outside_refused(folder, bad):
    def edit(m):
        m["artifacts"][0]["path"] = bad

    rewrite_manifest(folder, edit)
    with pytest.raises(BundleError, match="points outside the bundle"):
        open_bundle(folder)


def test_an_escaping_manifest_path_names_the_bundle(folder, tmp_path):
    from tests.edge._bundles import tar_folder

    rewrite_manifest(folder, lambda m: m["artifacts"][0].update(path="../outside.tflite"))
    with pytest.raises(BundleError) as info:
        open_bundle(folder)
    assert f"bundle {folder}:" in str(info.value) and "'../outside.tflite'" in str(info.value)
    arc = tar_folder(folder, tmp_path / "escape.tar.gz")
    with pytest.raises(BundleError) as info:
        open_bundle(arc)
    assert f"bundle {arc}:" in str(info.value) and "points outside the bundle" in str(info.value)


def test_run_manifest_is_not_a_bundle(folder):
    rewrite_manifest(folder, lambda m: m["extra"].pop("bundle_version"))
    with pytest.raises(BundleError, match="bundle_version None.*rebuild it with 'edgekit bundle'"):
        open_bundle(folder)
    (folder / "manifest.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="manifest.json is unusable.*not valid JSON"):
        open_bundle(folder)


def test_edge_bundle_has_no_tensorflow():
    src = Path(eb.__file__).read_text()
    assert "tensorflow" not in src and "keras" not in src
    for mod in (edge.bundle.archive, edge.bundle.canary, edge.bundle.verify):  # the rest of what opens and checks a bundle
        src = Path(mod.__file__).read_text()
        assert "tensorflow" not in src and "keras" not in src


# --------------------------------------------------------------------------- verify at load time


def test_verified_artifact_path_checks_the_file_now(folder):
    b = open_bundle(folder)
    path = folder / "artifacts" / f"{TFLITE_INT8}.tflite"
    assert b.verified_artifact_path(TFLITE_INT8) == path == b.artifact_path(TFLITE_INT8)
    flip(path)  # after the bundle was opened and verified
    with pytest.raises(BundleError, match=rf"file artifacts/{TFLITE_INT8}\.tflite is corrupt \(sha256 .*manifest says .*re-copy"):
        b.verified_artifact_path(TFLITE_INT8)
    assert b.verified_artifact_path(ONNX_FP32) == folder / "artifacts" / f"{ONNX_FP32}.onnx"  # others still load


def test_verified_artifact_path_missing_truncated_or_replaced(folder):
    b = open_bundle(folder)
    onnx = folder / "artifacts" / f"{ONNX_FP32}.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10])
    with pytest.raises(BundleError, match=rf"{ONNX_FP32}\.onnx is corrupt \(\d+ bytes, manifest says"):
        b.verified_artifact_path(ONNX_FP32)
    tfl = folder / "artifacts" / f"{TFLITE_FP32}.tflite"
    tfl.unlink()
    with pytest.raises(BundleError, match=rf"missing file artifacts/{TFLITE_FP32}\.tflite"):
        b.verified_artifact_path(TFLITE_FP32)
    os.mkfifo(tfl)  # a FIFO in its place must not block the check
    with pytest.raises(BundleError, match="is a FIFO \\(named pipe\\), not a regular file"):
        b.verified_artifact_path(TFLITE_FP32)
    with pytest.raises(BundleError, match="unknown artifact 'nope'"):
        b.verified_artifact_path("nope")


def test_eval_parts_are_disjoint_halves(tmp_path):
    import numpy as np

    from edge.bundle.reader import open_bundle
    from tests.edge._fixtures import edge_fixture

    b = open_bundle(edge_fixture().bundle)
    all_x, all_y = b.eval_set()
    sx, sy = b.eval_set(part="select")
    vx, vy = b.eval_set(part="serve")
    assert len(sx) + len(vx) == len(all_x) and abs(len(sx) - len(vx)) <= 1
    assert np.array_equal(np.concatenate([sy, vy]).sort(), np.sort(all_y).sort())
    assert np.array_equal(sx, all_x[0::2]) and np.array_equal(vx, all_x[1::2])
    with pytest.raises(ValueError, match="unknown evaluation part"):
        b.eval_set(part="train")
