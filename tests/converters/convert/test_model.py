"""Tests for converters/convert/model.py: one model's conversion checks the reloaded model against training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.convert.model import ModelDir, _check_reload


def test_model_that_no_longer_loads_as_trained_is_flagged():
    md = ModelDir("m", Path("m"), Path("m/model.keras"), {"test_accuracy": 1.0, "test_images": 4})
    labels = np.array([0, 1, 2, 3])
    half = np.eye(4, 10, dtype=np.float32)[[0, 1, 0, 0]]  # 2 of 4 right now, 4 of 4 at training time
    msgs: list[str] = []
    _check_reload(md, half, labels, None, msgs.append)
    assert len(msgs) == 1 and msgs[0].startswith("WARN  m:") and "50.00%" in msgs[0] and "100.00%" in msgs[0]
    msgs.clear()
    _check_reload(md, half, labels, 2, msgs.append)  # a different (limited) test set: no comparison
    _check_reload(md, np.eye(4, 10, dtype=np.float32), labels, None, msgs.append)  # as trained
    assert msgs == []
