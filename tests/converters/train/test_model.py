"""Tests for converters/train/model.py: per-spec schedules (recipes), the seeded training subset, the
flip augmentation of the tf.data pipeline, and train_one with a recipe."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from converters.family.specs import ModelSpec
from converters.train import model as train_model
from converters.train.model import spec_schedule, train_subset
from converters.train.options import LONG, QUICK, RECIPES, Schedule

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside keras.saving

RUN = Schedule(mode="quick", epochs=2, patience=1, batch_size=64, learning_rate=2e-3, train_images=50)
# What the "long" recipe is patched to here: every new schedule option at once, one epoch.
FAST_LONG = Schedule(mode="long", epochs=1, patience=1, batch_size=32, learning_rate=3e-3, decay="cosine",
                     augment="flip", weight_decay=5e-4, train_images=100)


@pytest.fixture(scope="module")
def splits(data_dir):
    """The tiny IDX dataset split: 270 train, 30 val, 20 calib, 60 test images of 28x28x1."""
    from converters.data.datasets import load_dataset, make_splits

    return make_splits(load_dataset("fashion_mnist", data_dir), val_fraction=0.1, calib_size=20, seed=0)


def _rows(x_sub: np.ndarray, x_all: np.ndarray) -> list[int]:
    """Where each image of ``x_sub`` sits in ``x_all`` (the tiny set's random images are all distinct)."""
    where = {img.tobytes(): i for i, img in enumerate(x_all)}
    assert len(where) == len(x_all)
    return [where[img.tobytes()] for img in x_sub]


# --- which schedule and which images ------------------------------------------------------------


def test_spec_schedule_uses_the_recipe_else_the_run_schedule():
    plain = ModelSpec(filters=(4,))
    long = ModelSpec(filters=(4,), batch_norm=True, recipe="long")
    assert spec_schedule(plain, RUN) is RUN
    assert spec_schedule(ModelSpec(filters=(4,), batch_norm=True), RUN) is RUN  # batch norm alone: no recipe
    assert spec_schedule(long, RUN) == LONG == RECIPES["long"]
    assert spec_schedule(long, QUICK) == LONG  # whatever the run's schedule


def test_train_subset_is_all_or_a_seeded_subset(splits):
    n = len(splits.x_train)
    assert n == 270
    for sched in (dataclasses.replace(RUN, train_images=None), dataclasses.replace(RUN, train_images=n),
                  dataclasses.replace(RUN, train_images=n + 1000)):
        x, y = train_subset(splits, sched, seed=0)
        assert x is splits.x_train and y is splits.y_train

    x, y = train_subset(splits, dataclasses.replace(RUN, train_images=100), seed=0)
    assert x.shape == (100, *splits.x_train.shape[1:]) and y.shape == (100,) and x.dtype == splits.x_train.dtype
    rows = _rows(x, splits.x_train)
    assert len(set(rows)) == 100 and rows == sorted(rows)  # distinct images, in the run's order
    np.testing.assert_array_equal(y, splits.y_train[rows])  # labels stay with their images

    # Same seed: same images, whatever else the schedule says (so every spec of a run sees them).
    x2, y2 = train_subset(splits, dataclasses.replace(FAST_LONG, train_images=100), seed=0)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    # Another seed: another subset.
    x3, _ = train_subset(splits, dataclasses.replace(RUN, train_images=100), seed=1)
    assert set(_rows(x3, splits.x_train)) != set(rows)


# --- the flip augmentation ------------------------------------------------------------------------


def _images(n: int = 200, hw: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images none of which is its own mirror; each label is the image's index."""
    x = np.random.default_rng(3).integers(0, 256, (n, hw, hw, 1), dtype=np.uint8)
    assert not any(np.array_equal(img, img[:, ::-1]) for img in x)
    return x, np.arange(n, dtype=np.int64)


def test_tf_dataset_flip_mirrors_some_images_of_each_batch():
    x, y = _images()
    seen = {"same": 0, "mirrored": 0}
    batches = list(train_model.tf_dataset(x, y, 50, shuffle_seed=7, augment="flip").as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [50] * 4
    got_labels = np.concatenate([b[1] for b in batches])
    assert sorted(got_labels) == list(y) and not np.array_equal(got_labels, y)  # every image once, shuffled
    for xb, yb in batches:
        assert xb.dtype == np.float32 and xb.shape == (50, 6, 6, 1)
        flipped = []
        for img, label in zip(xb, yb):
            src = x[label].astype(np.float32)
            if np.array_equal(img, src):
                flipped.append(False)
            else:
                np.testing.assert_array_equal(img, src[:, ::-1])  # left-right, not up-down
                flipped.append(True)
        assert 0 < sum(flipped) < len(flipped)  # some but not all of each batch
        seen["mirrored"] += sum(flipped)
        seen["same"] += len(flipped) - sum(flipped)
    assert 40 < seen["mirrored"] < 160  # about half


def test_tf_dataset_without_augmentation_keeps_images():
    x, y = _images(60)
    for augment, seed in (("none", 7), ("flip", None)):
        batches = list(train_model.tf_dataset(x, y, 16, shuffle_seed=seed, augment=augment).as_numpy_iterator())
        xs = np.concatenate([b[0] for b in batches])
        ys = np.concatenate([b[1] for b in batches])
        if augment == "none":
            np.testing.assert_array_equal(xs, x[ys].astype(np.float32))
        else:  # in order, and some mirrored
            np.testing.assert_array_equal(ys, y)
            assert any(not np.array_equal(a, b) for a, b in zip(xs, x.astype(np.float32)))
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        train_model.tf_dataset(x, y, 16, shuffle_seed=None, augment="rotate")


# --- train_one with a recipe ----------------------------------------------------------------------


def test_train_one_uses_the_recipe_and_records_it(splits, tmp_path, monkeypatch):
    from converters.family.keras_build import load_keras_model

    monkeypatch.setattr(train_model, "RECIPES", {"long": FAST_LONG})
    spec = ModelSpec(filters=(4,), pool="max", head="flatten", batch_norm=True, recipe="long")
    lines: list[str] = []
    rec = train_model.train_one(spec, splits, tmp_path / spec.model_id, RUN, seed=0, write=lines.append)
    saved = json.loads((tmp_path / spec.model_id / "train.json").read_text())
    assert saved == rec and rec["model_id"] == spec.model_id and rec["finished"] is True
    assert rec["schedule"] == dataclasses.asdict(FAST_LONG)
    assert (rec["schedule"]["mode"], rec["schedule"]["decay"], rec["schedule"]["augment"]) == ("long", "cosine", "flip")
    assert rec["train_images"] == 100 and rec["epochs"] == 1  # the recipe's subset and epochs, not the run's
    assert rec["test_images"] == len(splits.x_test)
    model = load_keras_model(tmp_path / spec.model_id / "model.keras")
    assert any(type(layer).__name__ == "BatchNormalization" for layer in model.layers)

    # A spec without a recipe in the same run: the run's schedule and its subset.
    plain = ModelSpec(filters=(4,), pool="max", head="flatten")
    rec2 = train_model.train_one(plain, splits, tmp_path / plain.model_id, RUN, seed=0, write=lines.append)
    assert rec2["schedule"] == dataclasses.asdict(RUN) and rec2["train_images"] == 50 and rec2["epochs"] == 2
    assert any("epoch 1/1" in ln for ln in lines) and any("epoch 2/2" in ln for ln in lines)


def test_optimizer_follows_the_schedule():
    import keras

    adam = train_model._optimizer(RUN, steps_per_epoch=10)
    assert type(adam) is keras.optimizers.Adam
    assert float(keras.ops.convert_to_numpy(adam.learning_rate)) == pytest.approx(RUN.learning_rate)
    adamw = train_model._optimizer(FAST_LONG, steps_per_epoch=10)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(5e-4)
    sched = adamw._learning_rate
    assert isinstance(sched, keras.optimizers.schedules.CosineDecay)
    assert sched.decay_steps == FAST_LONG.epochs * 10
    assert float(sched(0)) == pytest.approx(3e-3) and float(sched(10)) == pytest.approx(0.0, abs=1e-9)


def test_a_spec_at_its_own_resolution_trains_on_the_resized_images(resolution_run):
    """train -> model.keras at each spec's resolution; MACs as the spec estimates them at that size."""
    from converters.family.keras_build import load_keras_model
    from converters.family.specs import ModelSpec
    from tests.conftest import RESOLUTIONS

    run = resolution_run["run"]
    macs = {}
    for mid, n in RESOLUTIONS.items():
        model = load_keras_model(run / "models" / mid / "model.keras")
        assert tuple(model.inputs[0].shape[1:]) == (n, n, 1)
        rec = json.loads((run / "models" / mid / "train.json").read_text())
        spec = ModelSpec.load(run / "models" / mid / "spec.json")
        assert spec.resolution == (n, n) and rec["macs"] == spec.estimate_macs((28, 28, 1), 10)
        assert rec["test_accuracy"] > 0.3  # learnt from the resized images
        macs[n] = rec["macs"]
    assert macs[20] < macs[28] < macs[36]


@dataclasses.dataclass(frozen=True)
class _Splits:
    x_train: np.ndarray
    x_val: np.ndarray
    x_calib: np.ndarray
    x_test: np.ndarray

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])


def test_at_resolution_resizes_every_split_with_the_one_resize():
    from converters.train.model import at_resolution
    from edge.artifacts.images import resize_pixels

    rng = np.random.default_rng(0)
    s = _Splits(*(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8) for n in (6, 2, 3, 0)))
    assert at_resolution(s, ModelSpec(filters=(4,))) is s
    assert at_resolution(s, ModelSpec(filters=(4,), resolution=28)) is s
    r = at_resolution(s, ModelSpec(filters=(4,), resolution=16))
    np.testing.assert_array_equal(r.x_train, resize_pixels(s.x_train, (16, 16)))
    assert r.x_val.shape == (2, 16, 16, 1) and r.x_calib.shape == (3, 16, 16, 1) and r.x_test.shape == (0, 16, 16, 1)
