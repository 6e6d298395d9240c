"""Measure what pSConv and ViP save at inference: dense vs sparse/virtual-pooled twins, timed side by side.

Run: ``.venv/bin/python -m converters.family.psconv_report [--runs 300] [--backend litert|onnxruntime]``.
Each pair is built with random weights (latency does not depend on training), converted to fp32
in memory, loaded with the same runtime setting, and timed interleaved (A, B, A, B, ...) so that
CPU contention and frequency changes hit both alike. The report gives params, MACs, p50/p90
latency and the measured ratio next to the MAC ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.core.textable import format_table

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from converters.family.keras_build import build_model, count_params_macs  # noqa: E402
from converters.family.specs import ModelSpec  # noqa: E402


@dataclass(frozen=True)
class Variant:
    label: str
    spec: ModelSpec
    psconv_implementation: str = "shifted"


def default_pairs() -> list[tuple[str, Variant, Variant]]:
    """(title, baseline, variant) pairs at demo scale and at a size where convs dominate."""
    small = ModelSpec(filters=(16, 32, 64), pool="max", dense=32)
    large = ModelSpec(filters=(32, 64), convs=2, pool="max", dense=64)
    pairs = []
    for size, base in (("demo-size", small), ("large", large)):
        plain = Variant(base.model_id, base)
        ps = replace(base, psconv=True)
        vip = replace(base, vip=(0,) + (1,) * (base.blocks - 1))
        vip_all = replace(base, vip=(1,) * base.blocks)
        pairs.append((f"{size} pSConv (shifted 2x2) vs dense 3x3", plain, Variant(ps.model_id, ps)))
        pairs.append((f"{size} pSConv masked-3x3 reference vs dense 3x3", plain,
                      Variant(ps.model_id + "[masked]", ps, "masked")))
        pairs.append((f"{size} ViP (all but block 1) vs plain", plain, Variant(vip.model_id, vip)))
        pairs.append((f"{size} ViP (every block) vs plain", plain, Variant(vip_all.model_id, vip_all)))
    return pairs


def _convert(model, backend: str, tmp: Path, tag: str) -> bytes:
    if backend == "litert":
        import tensorflow as tf

        return tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp / f"{tag}.onnx"
    model.export(str(path), format="onnx", verbose=False)
    return path.read_bytes()


def _setting(backend: str):
    from device_profiles import host_profile_name, load_profile

    fmt = "tflite" if backend == "litert" else "onnx"
    profile = load_profile(host_profile_name())
    settings = [s for s in profile.settings_for(fmt) if s.backend == backend]
    if not settings:
        raise SystemExit(f"profile {profile.name} has no {backend} runtime setting")
    return profile.name, settings[0]


def measure(pairs, input_shape=(28, 28, 1), runs: int = 300, warmup: int = 20, backend: str = "litert", seed: int = 0):
    """Rows of dicts: pair title, variant, params, macs, p50_ms, p90_ms for each side, plus ratios."""
    import keras

    from edge.backends import get_backend

    keras.utils.set_random_seed(seed)
    profile, setting = _setting(backend)
    be = get_backend(backend)
    rng = np.random.default_rng(seed)
    x = (rng.random((1, *input_shape)) * 255).astype(np.float32)
    loaded: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for _, *variants in pairs:
            for v in variants:
                if v.label in loaded:
                    continue
                model = build_model(v.spec, input_shape, psconv_implementation=v.psconv_implementation)
                params, macs = count_params_macs(model)
                ref = np.asarray(model(x))  # also marks the model as called, which ONNX export requires
                blob = _convert(model, backend, tmp, f"m{len(loaded)}")
                lm = be.load(blob, setting)
                got = lm.predict(x)
                err = float(np.max(np.abs(ref - got)))
                lm.set_input(x)
                loaded[v.label] = (lm, params, macs, err, len(blob))
    rows = []
    for title, a, b in pairs:
        la, lb = loaded[a.label][0], loaded[b.label][0]
        for _ in range(warmup):
            la.invoke_prepared()
            lb.invoke_prepared()
        ta, tb = np.empty(runs), np.empty(runs)
        for i in range(runs):
            # Alternate which goes first so neither always runs on a just-warmed cache.
            order = ((la, ta), (lb, tb)) if i % 2 == 0 else ((lb, tb), (la, ta))
            for lm, arr in order:
                t0 = time.perf_counter()
                lm.invoke_prepared()
                arr[i] = (time.perf_counter() - t0) * 1e3
        rows.append(dict(title=title, a=a.label, b=b.label, a_info=loaded[a.label][1:], b_info=loaded[b.label][1:],
                         a_p50=float(np.percentile(ta, 50)), b_p50=float(np.percentile(tb, 50)),
                         a_p90=float(np.percentile(ta, 90)), b_p90=float(np.percentile(tb, 90))))
    return profile, setting, be.version(), rows


def format_report(profile, setting, version, rows, runs) -> str:
    lines = [f"pSConv / ViP inference saving — {version}, setting {setting.name} (profile {profile}), "
             f"batch 1, fp32, {runs} interleaved runs each"]
    for r in rows:
        (pa, ma, ea, sa), (pb, mb, eb, sb) = r["a_info"], r["b_info"]
        lines.append("")
        lines.append(r["title"])
        table = format_table(("model", "params", "MACs", "bytes", "p50 ms", "p90 ms", "max|Δ| vs keras"),
                             [(r["a"], pa, f"{ma:,d}", sa, f"{r['a_p50']:.4f}", f"{r['a_p90']:.4f}", f"{ea:.2e}"),
                              (r["b"], pb, f"{mb:,d}", sb, f"{r['b_p50']:.4f}", f"{r['b_p90']:.4f}", f"{eb:.2e}")],
                             align="lrrrrrr", sep=" ")
        lines += ["  " + line for line in table.split("\n")]
        lines.append(f"  ratio variant/baseline: params {pb / pa:.3f}  MACs {mb / ma:.3f}  "
                     f"p50 latency {r['b_p50'] / r['a_p50']:.3f}  p90 latency {r['b_p90'] / r['a_p90']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300, help="timed runs per model (interleaved)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--backend", choices=("litert", "onnxruntime"), default="litert")
    ap.add_argument("--input", default="28,28,1", help="input shape H,W,C (default 28,28,1)")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.input.split(","))
    profile, setting, version, rows = measure(default_pairs(), shape, args.runs, args.warmup, args.backend)
    print(format_report(profile, setting, version, rows, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
