"""Test helper for the evaluation tests: a tiny bundle of ONNX linear classifiers (no TensorFlow) and its selected table.

Three variants on real Fashion-MNIST (random data if the Debian package is missing) whose
accuracy and latency both rise: a nearest-centroid classifier on 4x4-pooled pixels, one on
all pixels behind a few permutation layers, and a ridge classifier behind more of them.
The permutation layers (MatMul by a permutation matrix, then Relu on non-negative values)
change nothing in the answer but cost real time, so the variants differ in latency.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import numpy as np

from tests._bundle_builder import INPUT_SHAPE, BundleWriter, fashion_subset, latency_row

PROFILE = "desktop-cpu"
SETTING = "ort-cpu-t1"
# (model id, head, permutation layers)
VARIANTS = (("ek-pool", "pooled", 0), ("ek-centroid", "centroid", 3), ("ek-ridge", "ridge", 10))


def _learnable_random_data(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class k brightens row band k."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.int64)
        x = rng.integers(0, 120, (n, *INPUT_SHAPE)).astype(np.int64)
        for i, k in enumerate(y):
            x[i, 2 * k + 4 : 2 * k + 6] += 120
        return x.clip(0, 255).astype(np.uint8), y

    return (*make(n_train), *make(n_test))


@functools.lru_cache(maxsize=None)
def data(n_train: int = 4000, n_test: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return fashion_subset(n_train, n_test, fallback=_learnable_random_data)


def _head(kind: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W (784,10), b (10,)) of a linear classifier on raw 0..255 pixels."""
    f = x.reshape(len(x), -1).astype(np.float64) / 255.0
    if kind == "pooled":
        # Average 4x4 blocks, then nearest centroid; expressed back on the 784 raw pixels.
        pool = np.zeros((784, 49))
        for r in range(28):
            for c in range(28):
                pool[r * 28 + c, (r // 4) * 7 + c // 4] = 1.0 / 16
        g = f @ pool
        cent = np.stack([g[y == k].mean(0) for k in range(10)])
        w = pool @ (2 * cent.T)
        b = -(cent**2).sum(1)
    elif kind == "centroid":
        cent = np.stack([f[y == k].mean(0) for k in range(10)])
        w, b = 2 * cent.T, -(cent**2).sum(1)
    else:
        onehot = np.eye(10)[y]
        a = np.hstack([f, np.ones((len(f), 1))])
        sol = np.linalg.solve(a.T @ a + 10.0 * np.eye(a.shape[1]), a.T @ onehot)
        w, b = sol[:-1], sol[-1]
    return (w / 255.0).astype(np.float32), b.astype(np.float32)


def _onnx_model(w: np.ndarray, b: np.ndarray, layers: int, seed: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    inits.append(numpy_helper.from_array(np.asarray([-1, 784], np.int64), "flat_shape"))
    nodes.append(helper.make_node("Reshape", ["input", "flat_shape"], ["h0"]))
    cur = "h0"
    # h -> relu(h @ P) permutes features; pixel values are >= 0 so relu keeps them.
    perm_total = np.arange(784)
    for k in range(layers):
        perm = rng.permutation(784)
        p = np.zeros((784, 784), np.float32)
        p[perm, np.arange(784)] = 1.0  # (h @ p)[j] = h[perm[j]]
        inits.append(numpy_helper.from_array(p, f"P{k}"))
        nodes.append(helper.make_node("MatMul", [cur, f"P{k}"], [f"m{k}"]))
        nodes.append(helper.make_node("Relu", [f"m{k}"], [f"h{k + 1}"]))
        cur = f"h{k + 1}"
        perm_total = perm_total[perm]
    # After the layers, feature j is the original pixel perm_total[j].
    inits.append(numpy_helper.from_array(np.ascontiguousarray(w[perm_total]), "W"))
    inits.append(numpy_helper.from_array(b, "B"))
    nodes.append(helper.make_node("MatMul", [cur, "W"], ["z"]))
    nodes.append(helper.make_node("Add", ["z", "B"], ["logits"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclasses.dataclass(frozen=True)
class EvalBundle:
    bundle: Path
    table: Path
    variants: tuple[str, ...]  # in latency order


def make_eval_bundle(root: str | Path, n_eval: int = 120, runs: int = 60, attempts: int = 3) -> EvalBundle:
    """Write ROOT/bundle (CONTRACTS layout) and ROOT/selected.json (kind 'selected')."""
    from device_profiles import load_profile
    from edge.tables.table import DeviceHeader, SelectedTable, SelectionParams

    root = Path(root)
    xtr, ytr, xte, yte = data()
    setting = next(s for s in load_profile(PROFILE).settings if s.name == SETTING)
    for attempt in range(attempts):
        # A busy machine can preempt the timing of a fast variant into the p95 of a slower one:
        # time the bundle again rather than hand the tests a table that is not monotonic.
        shutil.rmtree(root / "bundle", ignore_errors=True)
        writer = BundleWriter(root / "bundle", xte[:n_eval], yte[:n_eval], PROFILE)
        rows = []
        for seed, (mid, head, layers) in enumerate(VARIANTS):
            w, b = _head(head, xtr, ytr)
            added = writer.add(mid, "onnx", "fp32", _onnx_model(w, b, layers, seed), setting, timing_runs=runs)
            rec = added.record
            rows.append(latency_row(rec, setting, "CPUExecutionProvider", added.timings_ms, rec.host_accuracy, n_eval))
        manifest = writer.finish()

        # The selected table needs latency and accuracy strictly rising together; the layers make
        # latency rise, and the heads are ordered by accuracy, but keep the check explicit.
        rows.sort(key=lambda r: r.p95_ms)
        if all(cur.accuracy > prev.accuracy and cur.p95_ms > prev.p95_ms for prev, cur in zip(rows, rows[1:])):
            break
    else:
        raise AssertionError(f"fixture variants are not monotonic after {attempts} timings: "
                             f"{[(r.variant, r.accuracy, r.p95_ms) for r in rows]}")
    header = DeviceHeader(profile=PROFILE, cpu_model="test", cores=2, date=manifest.extra["created"],
                          bundle=str(writer.root))
    sel = SelectedTable(header=header, rows=tuple(rows),
                        params=SelectionParams(quantile="p95", source_table="(test fixture)", method="pareto",
                                               front_size=len(rows), candidates=len(rows)))
    table = sel.save(root / "selected.json")
    return EvalBundle(writer.root, table, tuple(r.variant for r in rows))
