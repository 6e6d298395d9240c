"""examples/user_models.py (the user's side of the README's "Your own images and models") runs, and what it
writes imports into one run: MobileNetV2 with its -1..1 convention, the small CNN as .keras, .onnx and .tflite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _folder(root: Path) -> Path:
    """Two classes a CNN tells apart after one epoch: dark and bright noisy squares, as JPEG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 24), ("test", 6)):
        for k, name in enumerate(("dark", "bright")):
            d = root / part / name
            d.mkdir(parents=True)
            for i in range(n):
                level = 40 if k == 0 else 200
                px = np.clip(rng.normal(level, 20, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i:02d}.jpg", quality=95)
    return root


def test_the_examples_models_train_and_import_into_one_run(tmp_path, capsys):
    images = _folder(tmp_path / "images")
    models = tmp_path / "models"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "user_models.py"), str(images), str(models),
                           "--epochs", "1", "--batch-size", "8"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in models.iterdir())
    assert names == ["mobilenet_v2.keras", "small_cnn.keras", "small_cnn.onnx", "small_cnn.tflite"]

    run = tmp_path / "run"
    assert main(["import", str(run), str(models / "mobilenet_v2.keras"), "--input-range=-1..1", "--images",
                 str(images), "--no-progress"]) == 0
    assert main(["import", str(run), *(str(models / n) for n in names[1:]), "--no-progress"]) == 0
    capsys.readouterr()
    meta = json.loads((run / "run.json").read_text())
    assert meta["dataset"] == "images" and meta["class_names"] == ["bright", "dark"]
    assert meta["input_shape"] == [32, 32, 3]  # gray JPEGs, decoded as the first model takes them: RGB
    got = {}
    for d in sorted((run / "models").iterdir()):
        rec = json.loads((d / "train.json").read_text())
        got[d.name] = (rec["source"]["format"], rec["source"]["input"]["range"])
        assert rec["finished"] is True and 0.0 <= rec["test_accuracy"] <= 1.0
    assert got == {"mobilenet_v2": ("keras", "-1..1"), "small_cnn": ("keras", "0..255"),
                   "small_cnn-onnx": ("onnx", "0..255"), "small_cnn-tflite": ("tflite", "0..255")}
    # The three forms of one CNN are one model: the same scores, so the same accuracy.
    accs = {json.loads((run / "models" / m / "train.json").read_text())["test_accuracy"]
            for m in ("small_cnn", "small_cnn-onnx", "small_cnn-tflite")}
    assert len(accs) == 1
