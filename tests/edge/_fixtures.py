"""Test helper for the daemon tests: a tiny real bundle, its measured latency table, and a daemon subprocess.

The bundle follows the CONTRACTS layout by hand (no converters): three untrained Keras
CNNs of very different cost, converted in this process to TFLite (one of them int8), a
manifest written with edge.manifest, eval.npz, and canary.npz whose host scores come from
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
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

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
    from edge.front import select_subset
    from edge.table import DeviceHeader, LatencyTable

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


class DaemonProc:
    """`edgekit serve` as a real subprocess on an ephemeral loopback port."""

    def __init__(self, bundle: Path, table: Path, *args: str, profile: Path | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 90.0, nofile: int | None = None):
        argv = [PYTHON, "-m", "edgekit.cli", "serve", str(bundle), "--table", str(table), "--port", "0"]
        if profile is not None:
            argv += ["--profile", str(profile)]
        argv += list(args)
        e = dict(os.environ, PYTHONUNBUFFERED="1")
        e.pop("EDGEKIT_TOKEN", None)
        e.update(env or {})
        self.argv = argv
        def limit_fds() -> None:  # as a board's default 'ulimit -n' would
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(argv, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=e,
                                     preexec_fn=limit_fds if nofile else None)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()
        self.url = ""
        end = time.monotonic() + start_timeout
        while time.monotonic() < end:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line is None:
                break
            if line.startswith("listening on "):
                self.url = line.split("listening on ", 1)[1].strip()
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"daemon did not start: rc={self.proc.returncode}\nstdout:\n{''.join(self.stdout)}"
                               f"\nstderr:\n{''.join(self.stderr)[-4000:]}")
        self.host, port = self.url.split("//", 1)[1].rsplit(":", 1)
        self.port = int(port)

    def _pump(self, stream, sink: list[str], signal_lines: bool) -> None:
        for line in stream:
            sink.append(line)
            if signal_lines:
                self._lines.put(line)
        if signal_lines:
            self._lines.put(None)

    @property
    def log(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "DaemonProc":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_daemon(*args: str, bundle: Path | None = None, table: Path | None = None,
                 env: dict[str, str] | None = None, nofile: int | None = None) -> DaemonProc:
    fx = edge_fixture()
    return DaemonProc(bundle or fx.bundle, table or fx.selected_table, *args, profile=fx.profile, env=env,
                      nofile=nofile)
