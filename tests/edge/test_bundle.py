"""Tests for the device-side bundle loader (edge/bundle.py): checksums, safe extraction, canary, `edgekit verify`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edge.bundle as eb
from edge.atomic import sha256_file
from edge.bundle import BundleError, BundleWarning, check_canary, compare_scores, open_bundle
from edge.manifest import TensorSpec
from tests.converters.test_bundle import MODEL_ID, make_tiny_run

TFLITE_FP32 = f"{MODEL_ID}.tflite-fp32"
TFLITE_INT8 = f"{MODEL_ID}.tflite-int8"
ONNX_FP32 = f"{MODEL_ID}.onnx-fp32"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A desktop-cpu bundle (tflite + onnx) as a folder, built once for the module."""
    from converters.bundle import build_bundle

    base = tmp_path_factory.mktemp("edge-bundle")
    run = make_tiny_run(base / "run")
    folder = base / "desktop"
    build_bundle(run, "desktop-cpu", folder, eval_size=20, canary_size=8, say=lambda s: None)
    return folder


@pytest.fixture
def folder(bundles, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundles, dst)
    return dst


def _tar(src: Path, out: Path, top: str | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                tar.add(p, arcname=f"{top}/{rel}" if top else rel)
    return out


def _add_member(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes = b"") -> None:
    info.size = len(data) if info.isreg() else 0
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def _evil_tar(folder: Path, out: Path, info: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    """A valid bundle archive plus one extra crafted member."""
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(folder).as_posix())
        _add_member(tar, info, data)
    return out


def _flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite_manifest(folder: Path, edit) -> None:
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


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
    _flip(folder / "artifacts" / f"{TFLITE_INT8}.tflite")
    with pytest.raises(BundleError, match=rf"file artifacts/{TFLITE_INT8}\.tflite is corrupt.*re-copy the bundle"):
        open_bundle(folder)
    # verify=False opens it anyway (e.g. to inspect), the loader of a runtime would then fail on it.
    assert open_bundle(folder, verify=False).profile == "desktop-cpu"


@pytest.mark.parametrize("name", ["eval.npz", "canary.npz"])
def test_flipped_data_file_named(folder, name):
    _flip(folder / name, 50)
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

    _rewrite_manifest(folder, edit)
    with pytest.raises(BundleError, match="points outside the bundle"):
        open_bundle(folder)


def test_run_manifest_is_not_a_bundle(folder):
    _rewrite_manifest(folder, lambda m: m["extra"].pop("bundle_version"))
    with pytest.raises(BundleError, match="bundle_version None.*rebuild it with 'edgekit bundle'"):
        open_bundle(folder)
    (folder / "manifest.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="manifest.json is unusable.*not valid JSON"):
        open_bundle(folder)


# --------------------------------------------------------------------------- archives


def test_archive_extracted_beside_and_reused(folder, tmp_path):
    arc = _tar(folder, tmp_path / "b.tar.gz")
    b = open_bundle(arc)
    cache = tmp_path / "b.tar.gz.d"
    assert b.root == cache and b.source == arc and b.archive_sha256 == sha256_file(arc)
    assert b.extra_files == ()
    marker = cache / eb.CACHE_MARKER
    stamp = marker.stat().st_mtime_ns
    open_bundle(arc)
    assert marker.stat().st_mtime_ns == stamp, "an unchanged archive must reuse its extraction"
    # A cache damaged after extraction is re-extracted from the (good) archive.
    _flip(cache / "artifacts" / f"{TFLITE_FP32}.tflite")
    b = open_bundle(arc)
    assert sha256_file(b.artifact_path(TFLITE_FP32)) == b.artifact(TFLITE_FP32).sha256
    # A new archive at the same path replaces the extraction.
    (folder / "extra.txt").write_text("x")
    _tar(folder, arc)
    with pytest.warns(BundleWarning):
        b = open_bundle(arc)
    assert b.extra_files == ("extra.txt",)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folders left behind"


def test_archive_with_top_folder(folder, tmp_path):
    arc = _tar(folder, tmp_path / "b.tgz", top="bundle-desktop")
    b = open_bundle(arc, cache_dir=tmp_path / "cache")
    assert b.root == tmp_path / "cache" / "b.tgz.d" / "bundle-desktop"
    assert len(b.artifacts) == 3


def test_archive_made_with_tar_dot(folder, tmp_path):
    # `tar czf b.tar.gz -C bundle .` names members "./manifest.json" and has a "." folder member.
    arc = tmp_path / "dot.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(folder, arcname=".")
    assert "./manifest.json" in tarfile.open(arc).getnames()
    b = open_bundle(arc)
    assert b.root == tmp_path / "dot.tar.gz.d" and len(b.artifacts) == 3 and b.extra_files == ()


def test_read_only_place_falls_back_to_temp(folder, tmp_path, monkeypatch):
    arc = _tar(folder, tmp_path / "ro.tar.gz")
    monkeypatch.setattr(eb.tempfile, "tempdir", str(tmp_path / "tmp"))
    real = eb._extract_to_cache

    def refuse_beside(archive, sha, cache):
        if cache.parent == tmp_path:
            raise PermissionError(13, "Read-only file system", str(cache))
        return real(archive, sha, cache)

    monkeypatch.setattr(eb, "_extract_to_cache", refuse_beside)
    b = open_bundle(arc)
    assert str(b.root).startswith(str(tmp_path / "tmp" / "edgekit-bundles"))


def test_flipped_byte_in_archive_member_named(folder, tmp_path):
    _flip(folder / "artifacts" / f"{ONNX_FP32}.onnx")
    arc = _tar(folder, tmp_path / "b.tar.gz")
    with pytest.raises(BundleError, match=rf"file artifacts/{ONNX_FP32}\.onnx is corrupt"):
        open_bundle(arc)


def test_damaged_archive(folder, tmp_path):
    arc = _tar(folder, tmp_path / "b.tar.gz")
    data = arc.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="cut.tar.gz is not a readable tar.gz.*re-copy"):
        open_bundle(tmp_path / "cut.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive at all")
    with pytest.raises(BundleError, match="neither a bundle folder nor a tar.gz"):
        open_bundle(tmp_path / "junk.tar.gz")


def _info(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = type_
    i.linkname = linkname
    return i


@pytest.mark.parametrize(
    "info, why",
    [
        (_info("../escape.txt"), r"'\.\.' in path"),
        (_info("artifacts/../../escape.txt"), r"'\.\.' in path"),
        (_info("/tmp/edgekit-abs-escape.txt"), "absolute path"),
        (_info("artifacts/link.tflite", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (_info("artifacts/rel.tflite", tarfile.SYMTYPE, "../../x"), "symbolic link"),
        (_info("artifacts/hard.tflite", tarfile.LNKTYPE, "manifest.json"), "hard link"),
        (_info("dev/sda", tarfile.BLKTYPE), "device, fifo"),
        (_info("fifo", tarfile.FIFOTYPE), "device, fifo"),
        (_info("a\\..\\b"), "backslash"),
    ],
    ids=["dotdot", "dotdot-nested", "absolute", "symlink-abs", "symlink-rel", "hardlink", "blockdev", "fifo", "backslash"],
)
def test_evil_members_refused(folder, tmp_path, info, why):
    arc = _evil_tar(folder, tmp_path / "evil.tar.gz", info)
    name = info.name
    with pytest.raises(BundleError, match=rf"member '{re.escape(name)}' is refused \(.*{why}"):
        open_bundle(arc)
    # Nothing was extracted, nothing escaped.
    assert not (tmp_path / "evil.tar.gz.d").exists()
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/edgekit-abs-escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_duplicate_and_oversized_members(folder, tmp_path, monkeypatch):
    arc = _evil_tar(folder, tmp_path / "dup.tar.gz", _info("manifest.json"), b"{}")
    with pytest.raises(BundleError, match="member 'manifest.json' appears twice"):
        open_bundle(arc)
    monkeypatch.setattr(eb, "MAX_MEMBER_BYTES", 1000)
    arc = _tar(folder, tmp_path / "big.tar.gz")
    with pytest.raises(BundleError, match="over the 1000 byte cap"):
        open_bundle(arc)
    monkeypatch.setattr(eb, "MAX_MEMBER_BYTES", 1 << 30)
    monkeypatch.setattr(eb, "MAX_TOTAL_BYTES", 5000)
    with pytest.raises(BundleError, match="expands past 5000 bytes"):
        open_bundle(arc)


def test_extra_member_in_archive_reported(folder, tmp_path):
    arc = _evil_tar(folder, tmp_path / "x.tar.gz", _info("README.txt"), b"hello")
    with pytest.warns(BundleWarning, match="README.txt"):
        b = open_bundle(arc)
    assert b.extra_files == ("README.txt",)


# --------------------------------------------------------------------------- canary


class FakeModel:
    """A LoadedModel stand-in returning the host scores plus a chosen perturbation."""

    def __init__(self, scores: np.ndarray, delta: np.ndarray | float = 0.0, out_spec: TensorSpec | None = None):
        self.input_spec = TensorSpec("x", (-1, 12, 12, 1), "float32")
        self.output_spec = out_spec or TensorSpec("y", (-1, scores.shape[1]), "float32")
        self.provider = "fake"
        self._out = scores + delta
        self._i = 0

    def predict(self, batch):
        assert batch.dtype == np.float32 and batch.shape == (1, 12, 12, 1)
        row = self._out[self._i : self._i + 1]
        self._i += 1
        return row


def test_check_canary_with_runtimes(folder):
    from device_profiles import load_profile
    from edge.backends import get_backend

    b = open_bundle(folder)
    prof = load_profile("desktop-cpu")
    for a in b.artifacts:
        for s in prof.settings_for(a.format):
            with get_backend(s.backend).load(b.artifact_path(a.artifact_id), s) as lm:
                r = check_canary(b, a.artifact_id, lm)
            assert r.ok and r.top1_match == 1.0 and not r.skipped, r.message
            assert "canary ok" in r.message


def test_check_canary_detects_wrong_outputs(folder):
    b = open_bundle(folder)
    host = b.canary().scores[TFLITE_FP32]
    assert check_canary(b, TFLITE_FP32, FakeModel(host)).ok
    # A constant offset keeps top-1 but exceeds the fp32 tolerance.
    r = check_canary(b, TFLITE_FP32, FakeModel(host, 0.5))
    assert not r.ok and r.top1_match == 1.0 and "max score diff" in r.message and "canary FAILED" in r.message
    # Swapped classes: top-1 differs.
    r = check_canary(b, TFLITE_FP32, FakeModel(host[:, ::-1].copy()))
    assert not r.ok and r.top1_match < 1.0 and "top-1 differs" in r.message
    r = check_canary(b, TFLITE_FP32, FakeModel(host, np.nan))
    assert not r.ok and "NaN" in r.message

    class Crashing(FakeModel):
        def predict(self, batch):
            raise RuntimeError("kernel exploded")

    r = check_canary(b, TFLITE_FP32, Crashing(host))
    assert not r.ok and "could not be run: RuntimeError: kernel exploded" in r.message


def test_compare_scores_tolerances():
    host = np.array([[5.0, 1.0, 0.0], [2.0, 1.9995, 0.0]], np.float32)
    # Row 1 is a near-tie on the host: a flipped top-1 there is tolerated.
    dev = host.copy()
    dev[1] = [1.9996, 1.9999, 0.0]
    r = compare_scores(host, dev, "fp32")
    assert r.ok and r.near_ties == 1 and r.top1_match == 0.5
    assert r.tolerance == pytest.approx(5e-3)  # 1e-3 x max |score|
    # fp16 and int8 allow more than fp32.
    assert not compare_scores(host, host + 0.05, "fp32").ok
    assert compare_scores(host, host + 0.05, "fp16").ok
    # int8 tolerance is scale-aware: at least a few output quantization steps.
    q = TensorSpec("y", (-1, 3), "int8", scale=0.5, zero_point=0)
    assert compare_scores(host, host + 1.0, "int8", q).ok
    assert not compare_scores(host, host + 1.0, "int8").ok
    assert not compare_scores(host, host[:1], "fp32").ok


def test_canary_size_mismatch_refused(folder):
    z = dict(np.load(folder / "canary.npz", allow_pickle=False))
    z[f"scores/{TFLITE_FP32}"] = z[f"scores/{TFLITE_FP32}"][:3]
    np.savez(folder / "canary.npz", **z)
    _rewrite_manifest(folder, lambda m: m["extra"]["files"].update({"canary.npz": sha256_file(folder / "canary.npz")}))
    with pytest.raises(BundleError, match="canary.npz 'scores/.*' has shape"):
        open_bundle(folder).canary()


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
    _rewrite_manifest(folder, lambda m: m["extra"]["files"].update({"canary.npz": sha256_file(folder / "canary.npz")}))
    assert main(["verify", str(folder), "--profile", "desktop-cpu"]) == 1
    cap = capsys.readouterr()
    assert "2 ok, 1 failed" in cap.out and f"{TFLITE_INT8}: canary FAILED" in cap.err
    # A corrupt artifact: exit 2 with the file named.
    _flip(folder / "artifacts" / f"{ONNX_FP32}.onnx")
    assert main(["verify", str(folder)]) == 2
    assert f"artifacts/{ONNX_FP32}.onnx is corrupt" in capsys.readouterr().err


def test_edge_bundle_has_no_tensorflow():
    src = Path(eb.__file__).read_text()
    assert "tensorflow" not in src and "keras" not in src


# --------------------------------------------------------------------------- verify at load time


def test_verified_artifact_path_checks_the_file_now(folder):
    b = open_bundle(folder)
    path = folder / "artifacts" / f"{TFLITE_INT8}.tflite"
    assert b.verified_artifact_path(TFLITE_INT8) == path == b.artifact_path(TFLITE_INT8)
    _flip(path)  # after the bundle was opened and verified
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

    from edge.bundle import open_bundle
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


# --------------------------------------------------------------------------- canary tolerance across CPUs

# The board check's measurement (scripts/board_check.py --run demo/run; benchmarks/canary_drift.py):
# every artifact of the demo's rpi4 and jetson-orin-nano bundles scored on the same images on this
# x86-64 host and on aarch64 (QEMU, ai-edge-litert 2.3.0, onnxruntime 1.32.0).
DRIFT_FILE = Path(__file__).parent / "data" / "canary_drift_aarch64.json"


def _flip_largest_weight(model_bytes: bytes) -> bytes:
    """Negate the largest-magnitude int8 weight of the first convolution: one flipped weight."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    conv = [d for d in it.get_tensor_details()
            if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] > 1 and "conv" in d["name"].lower()]
    assert conv, "no int8 convolution kernel in the model"
    w = it.get_tensor(conv[0]["index"]).copy()
    raw = w.tobytes()
    at = model_bytes.find(raw)
    assert at >= 0 and model_bytes.find(raw, at + 1) < 0, "the kernel's bytes are not unique in the file"
    i = int(np.argmax(np.abs(w.astype(np.int16))))
    flipped = w.reshape(-1).copy()
    flipped[i] = -max(int(flipped[i]), -127)
    buf = bytearray(model_bytes)
    buf[at : at + len(raw)] = flipped.tobytes()
    return bytes(buf)


def test_measured_aarch64_drift_passes_the_canary():
    measured = json.loads(DRIFT_FILE.read_text())
    rows = [r for p in measured["profiles"].values() for r in p["artifacts"]]
    assert any(r["precision"] == "int8" for r in rows) and len(rows) >= 20
    for r in rows:
        host = np.full((1, 10), r["max_abs_score"], np.float32)
        spec = TensorSpec("y", (-1, 10), "int8", scale=r["output_scale"], zero_point=0) if r.get("output_scale") else None
        tol = eb.canary_tolerance(r["precision"], host, spec)
        assert r["max_abs_diff"] <= tol, f"{r['artifact_id']}: measured drift {r['max_abs_diff']} > tolerance {tol}"


def test_one_flipped_int8_weight_fails_the_canary(folder, tmp_path):
    from edge.backends import get_backend
    from device_profiles import load_profile

    b = open_bundle(folder)
    rec = b.artifact(TFLITE_INT8)
    setting = load_profile("desktop-cpu").settings_for("tflite")[0]
    bad = tmp_path / "flipped.tflite"
    bad.write_bytes(_flip_largest_weight(b.artifact_path(TFLITE_INT8).read_bytes()))
    with get_backend(setting.backend).load(bad, setting) as lm:
        r = check_canary(b, TFLITE_INT8, lm)
    assert not r.ok, r.message
    assert "canary FAILED" in r.message and r.max_abs_diff > 2 * r.tolerance
    # The same artifact unflipped passes.
    with get_backend(setting.backend).load(b.artifact_path(TFLITE_INT8), setting) as lm:
        assert check_canary(b, TFLITE_INT8, lm).ok
    assert rec.precision == "int8"
