"""The typed options of a training sweep: how each model is trained (Schedule), the data splits, the selection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.cluster.ray_sweep import RayOptions
from converters.data.datasets import IMAGES, DataSource
from converters.data.images import ImageOptions
from edge.core.errors import UsageError


@dataclass(frozen=True)
class Schedule:
    """How each model is trained; part of a run's identity (run.json)."""

    mode: str  # "quick" or "full", or a recipe's name ("long")
    epochs: int
    patience: int  # early stopping on validation accuracy; best weights are restored
    batch_size: int
    learning_rate: float
    decay: str = "none"  # "cosine": the learning rate falls to 0 along a cosine over all the epochs
    augment: str = "none"  # "flip": each training image is mirrored left-right with probability 1/2
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay instead of Adam
    train_images: int | None = None  # train on a seeded subset of this many of the run's training images

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UsageError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.decay not in DECAYS:
            raise UsageError(f"decay must be one of {list(DECAYS)}, got {self.decay!r}")
        if self.augment not in AUGMENTS:
            raise UsageError(f"augment must be one of {list(AUGMENTS)}, got {self.augment!r}")
        if not self.weight_decay >= 0:
            raise UsageError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.train_images is not None and self.train_images < 1:
            raise UsageError(f"train_images must be >= 1 (or None for all), got {self.train_images}")


DECAYS = ("none", "cosine")
AUGMENTS = ("none", "flip")


@dataclass(frozen=True)
class SplitOptions:
    """Arguments of converters.data.datasets.make_splits, recorded in run.json as "splits"."""

    val_fraction: float = 0.1
    calib_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None


# Quick trains each spec on a 24000-image subset of the training part. Measured on three demo specs:
# 24000 images x 4 epochs at batch 64 gains 10-15 accuracy points over 12000 x 3 at batch 128 for
# twice the time; all 54000 images x 3 epochs gains 1-2 more for twice that again.
QUICK = Schedule(mode="quick", epochs=4, patience=2, batch_size=64, learning_rate=3e-3, train_images=24000)
QUICK_SPLITS = SplitOptions(limit_train=None, limit_test=None)
FULL = Schedule(mode="full", epochs=30, patience=3, batch_size=64, learning_rate=1e-3)
FULL_SPLITS = SplitOptions(limit_train=None, limit_test=None)

# Recipes a spec names with ``recipe = "..."`` (converters.family.specs.RECIPES), used instead of the run's
# schedule for that spec. "long": every training image, batch norm's usual companions (AdamW, a
# cosine schedule) and mirrored images, 4 epochs. Measured on a batch-norm 32/64/128 x2 net (29 MMACs):
# 92.7 % test accuracy after a 5-epoch schedule (40 s an epoch on 2 cores), where the quick schedule's
# best members stop near 89.6 %. Fewer epochs or a larger batch do not save time well (measured on the
# demo's members, 2-core AMD EPYC VM, 2026-12-03): batch norm's running statistics lag the weights until
# the cosine has settled them, so 2 epochs at batch 256 ended at 46.7 % test accuracy; the demo fits its
# budget with narrower members.
LONG = Schedule(mode="long", epochs=4, patience=4, batch_size=128, learning_rate=3e-3, decay="cosine",
                augment="flip", weight_decay=5e-4)
RECIPES = {"long": LONG}


@dataclass(frozen=True)
class TrainOptions:
    run_dir: Path
    family: str
    # None: the run's own data when RUN exists, else fashion_mnist; "images" with ``images`` set: an image folder
    dataset: str | None = "fashion_mnist"
    data_dir: str | None = None
    images: ImageOptions | None = None
    seed: int = 0
    schedule: Schedule = QUICK
    splits: SplitOptions = QUICK_SPLITS
    limit: int | None = None
    sample: int | None = None
    force: bool = False
    progress: bool = True
    # train each spec as a task on Ray (converters.cluster.ray_sweep); None: here, in turn
    ray: RayOptions | None = None


    def source(self, run_exists: bool) -> DataSource | None:
        """The data this command names; None: it names none and RUN exists, so the run's own is used."""
        if self.images is not None:
            return DataSource(dataset=IMAGES, images=self.images)
        if self.dataset is None:
            return None if run_exists else DataSource()
        return DataSource(dataset=self.dataset, data_dir=self.data_dir)
