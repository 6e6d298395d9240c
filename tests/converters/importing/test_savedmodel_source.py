"""Tests for converters.importing.savedmodel_source: the graph screened before TensorFlow loads it, regular files
only, scores from the serving signature with the convention folded in, the folder copied into the run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from converters.importing.conventions import DEFAULT, parse_input_range
from converters.importing.savedmodel_source import SavedModelSource, tree_sha256
from converters.importing.sources import open_source
from edge.core.errors import UsageError
from tests.converters.importing._models import keras_cnn


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sm")
    model = keras_cnn(rescale=False)
    model.export(str(root / "net"), format="tf_saved_model", verbose=False)
    return model, root / "net"


def _evil(path, marker):
    import tensorflow as tf

    class Evil(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.zeros((64, 10)))

        @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])
        def __call__(self, x):
            tf.io.write_file(str(marker), "ran")
            return tf.matmul(tf.reshape(x, (-1, 64)), self.w)

    e = Evil()
    tf.saved_model.save(e, str(path), signatures=e.__call__)


@pytest.mark.slow
def test_scores_with_the_convention_folded_in_and_the_copy(exported, tmp_path):
    model, path = exported
    src = open_source(path)
    assert isinstance(src, SavedModelSource) and (src.input_hwc, src.classes) == ((8, 8, 1), 10)
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    conv = parse_input_range("-1..1")
    assert np.allclose(src.scores(x, conv), model(x.astype(np.float32) / 127.5 - 1).numpy(), atol=1e-5)
    assert np.allclose(src.scores(x, DEFAULT), model(x.astype(np.float32)).numpy(), atol=1e-4)
    (tmp_path / "m").mkdir()
    out = src.write(tmp_path / "m", conv)
    assert out.name == "saved_model" and tree_sha256(out) == src.sha256 == tree_sha256(path)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["saved_model"]


@pytest.mark.slow
def test_a_file_writing_graph_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    _evil(tmp_path / "evil", marker)
    assert not marker.exists()
    with pytest.raises(UsageError) as e:
        open_source(tmp_path / "evil")
    assert str(tmp_path / "evil") in str(e.value) and "runs the op WriteFile" in str(e.value)
    assert not marker.exists()


@pytest.mark.slow
def test_symlinks_and_damaged_graphs_are_refused_by_name(exported, tmp_path):
    import shutil

    _, path = exported
    linked = tmp_path / "linked"
    shutil.copytree(path, linked)
    os.symlink("/etc/hostname", linked / "variables" / "extra")
    with pytest.raises(UsageError, match="is a symlink; a SavedModel folder may hold regular files only"):
        open_source(linked)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    pb = broken / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:100])
    with pytest.raises(UsageError, match=f"{pb} is not a SavedModel"):
        open_source(broken)
