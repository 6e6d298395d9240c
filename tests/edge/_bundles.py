"""A desktop-cpu bundle folder (tflite + onnx) built from the tiny run, and helpers that archive or damage one.

The ``bundles`` and ``folder`` fixtures (tests/edge/conftest.py) build it once per session and copy it per test.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.converters.pack.test_packer import MODEL_ID, make_tiny_run

TFLITE_FP32 = f"{MODEL_ID}.tflite-fp32"
TFLITE_INT8 = f"{MODEL_ID}.tflite-int8"
ONNX_FP32 = f"{MODEL_ID}.onnx-fp32"


def build_desktop_bundle(base: Path) -> Path:
    """A desktop-cpu bundle folder under ``base``."""
    from converters.pack.packer import build_bundle

    run = make_tiny_run(base / "run")
    folder = base / "desktop"
    build_bundle(run, "desktop-cpu", folder, eval_size=20, canary_size=8, say=lambda s: None)
    return folder


def tar_folder(src: Path, out: Path, top: str | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src).as_posix()
                tar.add(p, arcname=f"{top}/{rel}" if top else rel)
    return out


def add_member(tar: tarfile.TarFile, info: tarfile.TarInfo, data: bytes = b"") -> None:
    info.size = len(data) if info.isreg() else 0
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def evil_tar(folder: Path, out: Path, info: tarfile.TarInfo, data: bytes = b"evil") -> Path:
    """A valid bundle archive plus one extra crafted member."""
    with tarfile.open(out, "w:gz") as tar:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(folder).as_posix())
        add_member(tar, info, data)
    return out


def flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_manifest(folder: Path, edit) -> None:
    p = folder / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


def add_predictive_test(folder: Path, predicted: dict[str, float], default: float = 0.99) -> Path:
    """Give the bundle ``folder`` a predictive test whose regressors are constant: each artifact is predicted
    ``predicted.get(artifact_id, default)`` whatever its scores (what the board does with a prediction is under
    test, not the regressor: tests/converters/pack/test_predictive.py builds real ones)."""
    import numpy as np

    from edge.bundle.predictive import PREDICTIVE_NAME, AccuracyRegressor, ArtifactTest, dump_tests
    from edge.core.atomic import sha256_file

    m = json.loads((folder / "manifest.json").read_text())
    shape = m["extra"]["input_shape"]
    tests = {}
    for a in m["artifacts"]:
        aid, classes = a["artifact_id"], int(a["output"]["shape"][-1])
        reg = AccuracyRegressor(np.zeros(4), np.ones(4), np.zeros(4), predicted.get(aid, default))
        tests[aid] = ArtifactTest(aid, np.zeros((2, *shape), np.uint8), np.zeros((2, classes), np.float32), reg,
                                  a["sha256"], False, 0.01, 0.02, 1.0)  # no ceiling in the way
    np.savez(folder / PREDICTIVE_NAME, **dump_tests(tests))
    m["extra"]["files"][PREDICTIVE_NAME] = sha256_file(folder / PREDICTIVE_NAME)
    m["extra"]["predictive_test"] = {"file": PREDICTIVE_NAME, "images": 2, "artifacts": sorted(tests)}
    (folder / "manifest.json").write_text(json.dumps(m))
    return folder
