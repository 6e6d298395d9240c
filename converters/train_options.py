"""The typed options of a training sweep: how each model is trained (Schedule), the data splits, the selection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.ray_sweep import RayOptions
from edge.errors import UsageError


@dataclass(frozen=True)
class Schedule:
    """How each model is trained; part of a run's identity (run.json)."""

    mode: str  # "quick" or "full"
    epochs: int
    patience: int  # early stopping on validation accuracy; best weights are restored
    batch_size: int
    learning_rate: float

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UsageError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class SplitOptions:
    """Arguments of converters.datasets.make_splits, recorded in run.json as "splits"."""

    val_fraction: float = 0.1
    calib_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None


# Quick trains the 16 demo specs on 2 cores in about 8 minutes (budget: 15). Measured on three demo
# specs: 24000 images x 4 epochs at batch 64 gains 10-15 accuracy points over 12000 x 3 at batch 128
# for twice the time; all 54000 images x 3 epochs gains 1-2 more for twice that again.
QUICK = Schedule(mode="quick", epochs=4, patience=2, batch_size=64, learning_rate=3e-3)
QUICK_SPLITS = SplitOptions(limit_train=24000, limit_test=None)
FULL = Schedule(mode="full", epochs=30, patience=3, batch_size=64, learning_rate=1e-3)
FULL_SPLITS = SplitOptions(limit_train=None, limit_test=None)


@dataclass(frozen=True)
class TrainOptions:
    run_dir: Path
    family: str
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    schedule: Schedule = QUICK
    splits: SplitOptions = QUICK_SPLITS
    limit: int | None = None
    sample: int | None = None
    force: bool = False
    progress: bool = True
    ray: RayOptions | None = None  # train each spec as a task on Ray (converters.ray_sweep); None: here, in turn

