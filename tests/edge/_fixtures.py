"""Test helper for the daemon tests: a tiny real bundle, its measured latency table, and a daemon subprocess.

The bundle follows the CONTRACTS layout by hand (no converters): three untrained Keras
CNNs of very different cost, converted in this process to TFLite (one of them int8), a
manifest written with edge.artifacts.manifest, eval.npz, and canary.npz whose host scores come from
edge.backends.  A small profile TOML runs every artifact under two LiteRT settings
(XNNPACK on and off), so the latency table has the same artifact under two runtime
settings.  Latencies are measured here with the real runtime; accuracies are assigned
(0.70 / 0.80 / 0.88 by model size) because the models are untrained and the daemon only
needs a monotonic table.  Built once per machine and cached in the temp folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks.evaluate.daemon_proc import Daemon
from tests._bundle_builder import (
    INPUT_SHAPE,
    BundleWriter,
    fashion_split,
    keras_cnn,
    latency_row,
    time_predict,
    to_tflite,
)

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
FIXTURE_VERSION = 3
PROFILE_NAME = "edge-test"
# model id -> (format, precision, assigned accuracy)
MODELS = {
    "small": ("tflite", "fp32", 0.70),
    "medium": ("tflite", "int8", 0.80),
    "large": ("tflite", "fp32", 0.88),
}
LAYERS = {"small": ("c4", "p4"), "medium": ("c16", "c32", "p2"), "large": ("c64", "c64", "c96", "p2")}
PROFILE_TOML = f"""
name = "{PROFILE_NAME}"
description = "edgekit daemon tests: LiteRT with and without XNNPACK on this host"
arch = "x86_64"
memory_budget_mb = 512
workers = 1

[[build]]
format = "tflite"
precisions = ["fp32", "int8"]

[[runtime]]
name = "litert-xnnpack-t1"
backend = "litert"
threads = 1
xnnpack = true

[[runtime]]
name = "litert-plain-t1"
backend = "litert"
threads = 1
xnnpack = false
"""


def sample_images(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Real Fashion-MNIST test images if installed, else deterministic noise."""
    try:
        return fashion_split("t10k", n)
    except OSError:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n, *INPUT_SHAPE), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def _build(root: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from device_profiles import load_profile
    from edge.backends import get_backend
    from edge.tables.selection import select_subset
    from edge.tables.table import DeviceHeader, LatencyTable

    bundle = root / "bundle"
    (root / "profile.toml").write_text(PROFILE_TOML)
    profile = load_profile(root / "profile.toml")
    images, labels = sample_images(64)
    writer = BundleWriter(bundle, images, labels, PROFILE_NAME)
    for mid, (fmt, prec, _) in MODELS.items():
        km = keras_cnn(LAYERS[mid])
        writer.add(mid, fmt, prec, to_tflite(km, prec, calib=images[:32]), profile.settings[0], host_accuracy=False,
                   params=int(km.count_params()))
    records = writer.records
    writer.finish(sort_by_id=False)

    # Timing noise on a busy machine can reorder the tiny models; measure again until the
    # selected table has one variant per model (the tests rely on three).
    backend = get_backend("litert")
    for _attempt in range(4):
        rows = []
        for rec in records:
            for s in profile.settings:
                with backend.load(bundle / rec.path, s) as m:
                    t = time_predict(m, images[:1], runs=60 if rec.model_id == "large" else 200)
                    rows.append(latency_row(rec, s, m.provider, t, accuracy=MODELS[rec.model_id][2],
                                            eval_count=len(images)))
        header = DeviceHeader(profile=PROFILE_NAME, cores=os.cpu_count() or 0, bundle=str(bundle),
                              date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              settings={"note": "edgekit test fixture: measured latencies, assigned accuracies"})
        LatencyTable(header=header, rows=tuple(rows)).save(root / "latency.json")
        sel = select_subset(LatencyTable.load(root / "latency.json"), source_table=str(root / "latency.json"))
        if len({r.model_id for r in sel.rows}) == len(MODELS):
            break
    sel.save(root / "selected.json")


@dataclass(frozen=True)
class EdgeFixture:
    root: Path
    bundle: Path
    profile: Path
    latency_table: Path
    selected_table: Path

    @property
    def variants(self) -> tuple[str, ...]:
        """The selected variants, fastest first."""
        return tuple(r["variant"] for r in json.loads(self.selected_table.read_text())["rows"])

    def images(self, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
        return sample_images(n)


@functools.lru_cache(maxsize=None)
def edge_fixture() -> EdgeFixture:
    """The cached fixture (built on first use, a few seconds; shared by test processes via the temp folder)."""
    root = Path(tempfile.gettempdir()) / f"edgekit-edge-fixture-v{FIXTURE_VERSION}-{os.getuid()}"
    if not (root / "selected.json").exists():
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None:
            import pytest

            pytest.skip("building the daemon test bundle needs TensorFlow (the train extra)")
        tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
        try:
            _build(tmp)
            # Paths inside the table header point at tmp; harmless, the header is informative only.
            try:
                os.rename(tmp, root)
            except OSError:  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return EdgeFixture(root, root / "bundle", root / "profile.toml", root / "latency.json", root / "selected.json")


def copy_bundle(fx: EdgeFixture, dest: Path) -> Path:
    shutil.copytree(fx.bundle, dest)
    return dest


# ----------------------------------------------------------------------------- the daemon


class DaemonProc(Daemon):
    """`edgekit serve` on a test bundle, started on construction; its output kept in ``stdout`` and ``stderr``.

    Runs from the repository root without the caller's EDGEKIT_TOKEN; ``nofile`` caps its open
    files as a board's default ``ulimit -n`` would.
    """

    def __init__(self, bundle: Path, table: Path, *args: str, profile: Path | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 90.0, nofile: int | None = None):
        argv = [PYTHON, "-m", "edgekit.cli", "serve", str(bundle), "--table", str(table), "--port", "0"]
        if profile is not None:
            argv += ["--profile", str(profile)]
        argv += list(args)
        super().__init__(argv, start_timeout_s=start_timeout, env={"EDGEKIT_TOKEN": None, **(env or {})},
                         cwd=REPO, nofile=nofile)
        self.start()

    def stop(self, timeout: float = 20.0) -> int | None:
        return super().stop(timeout)


def start_daemon(*args: str, bundle: Path | None = None, table: Path | None = None,
                 env: dict[str, str] | None = None, nofile: int | None = None) -> DaemonProc:
    fx = edge_fixture()
    return DaemonProc(bundle or fx.bundle, table or fx.selected_table, *args, profile=fx.profile, env=env,
                      nofile=nofile)
