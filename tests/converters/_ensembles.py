"""A tiny family with [[ensemble]]s, and training it: shared by the ensemble tests of family/, train/ and convert/."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

from converters.train import sweep as tr
from converters.train.options import Schedule, SplitOptions, TrainOptions

PLAIN = "c1-f4-k3-max-d0-vip0-ps0-flatten"
WIDE = "c1-f8-k3-max-d0-vip0-ps0-flatten"
CUSTOM = "c2-f4.4-k3-max-d0-vip01-ps1-flatten"  # pSConv (custom layer) and ViP in the second block

FAMILY = f"""
name = "tinyens"
mode = "grid"
input_size = [28, 28]
pool = "max"
head = "flatten"

[[space]]
filters = [[4], [8]]

[[space]]
filters = [4, 4]
vip = "last"
psconv = true

[[ensemble]]
members = ["{CUSTOM}", "{PLAIN}"]

[[ensemble]]
top = 2
name = "best2"
views = ["id", "left"]
"""


def family_data(body: str = "", head: str = FAMILY) -> dict:
    import tomllib

    return tomllib.loads(head + textwrap.dedent(body))


def train_options(run_dir: Path, family: Path, data_dir: Path | None, **kw) -> TrainOptions:
    base = dict(run_dir=run_dir, family=str(family), data_dir=str(data_dir) if data_dir else None,
                schedule=Schedule(mode="quick", epochs=1, patience=1, batch_size=64, learning_rate=3e-3),
                splits=SplitOptions(val_fraction=0.1, calib_size=64, limit_train=1500, limit_test=300),
                progress=False)
    base.update(kw)
    return TrainOptions(**base)


def run_sweep(o: TrainOptions) -> tuple[list[tr.ModelResult], str]:
    buf = io.StringIO()
    return tr.train_sweep(o, out=buf), buf.getvalue()


def sweep_family(root: Path, text: str, name: str) -> tuple[Path, Path | None, Path, list[tr.ModelResult], str]:
    """Write the family ``text`` as ``root/NAME.toml`` and train it on the real Fashion-MNIST (a synthetic IDX set
    where it is not installed): (family path, data dir or None, run folder, sweep results, output)."""
    from tests.converters.data.test_datasets import REAL_FASHION, write_idx_set

    family = root / f"{name}.toml"
    family.write_text(text)
    data_dir = None
    if not (REAL_FASHION / "train-images-idx3-ubyte.gz").exists():
        data_dir = root / "fm"
        write_idx_set(data_dir, n_train=1500, n_test=300, gz=True)
    run_dir = root / "run"
    results, out = run_sweep(train_options(run_dir, family, data_dir))
    return family, data_dir, run_dir, results, out


def train_record(run_dir: Path, model_id: str) -> dict:
    return json.loads((run_dir / "models" / model_id / "train.json").read_text())
