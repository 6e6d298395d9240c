"""How far each artifact's scores move between two machines: the measurement behind the canary tolerance.

    # on each machine (the workstation, then the board or the emulated root):
    python -m benchmarks.perf.canary_drift scores BUNDLE --profile rpi4 --images 200 --out scores-aarch64.npz
    # then, anywhere:
    python -m benchmarks.perf.canary_drift compare scores-x86_64.npz scores-aarch64.npz

``scores`` runs every artifact of the bundle, one image at a time as the canary does, on the
first images of the bundle's evaluation set, with the profile's first runtime setting for its
format, and saves the dequantized scores. ``compare`` prints, per artifact, the largest
absolute score difference, the same relative to ``max(1, max |score|)`` (the unit of
``edge.bundle.canary.CANARY_REL_TOL``), top-1 agreement, and whether the canary tolerance allows it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from edge.core.textable import format_table

META_KEY = "__meta__"


def score_bundle(bundle_path: str, profile_name: str | None, images: int) -> tuple[dict[str, np.ndarray], dict]:
    from device_profiles import host_profile_name, load_profile
    from edge.artifacts.tensors import scores as model_scores
    from edge.backends import get_backend
    from edge.bundle.reader import open_bundle

    bundle = open_bundle(bundle_path)
    profile = load_profile(profile_name or host_profile_name())
    x, _ = bundle.eval_set(limit=images)
    scores: dict[str, np.ndarray] = {}
    meta: dict = {"machine": platform.machine(), "emulation": os.environ.get("EDGEKIT_EMULATION", ""),
                  "profile": profile.name, "images": int(len(x)), "artifacts": {}}
    for rec in bundle.artifacts:
        settings = profile.settings_for(rec.format)
        if not settings:
            continue
        model = get_backend(settings[0].backend).load(bundle.artifact_path(rec.artifact_id), settings[0])
        try:
            scores[rec.artifact_id] = model_scores(model, x)
            out = model.output_spec
            meta["artifacts"][rec.artifact_id] = {
                "precision": rec.precision, "format": rec.format, "setting": settings[0].name,
                "provider": getattr(model, "provider", ""),
                "output_scale": out.scale if out is not None and out.quantized else None,
            }
        finally:
            model.close()
    return scores, meta


def save_scores(path: Path, scores: dict[str, np.ndarray], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{META_KEY: np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **scores)
    os.replace(tmp, path)


def load_scores(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z[META_KEY]).decode())
            return {k: z[k] for k in z.files if k != META_KEY}, meta
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"canary_drift: cannot read {path} ({exc}): make it with "
                         "'python -m benchmarks.perf.canary_drift scores BUNDLE --out FILE'") from None


def compare(reference: dict[str, np.ndarray], ref_meta: dict, other: dict[str, np.ndarray],
            other_meta: dict) -> list[dict]:
    """Per artifact in both: max |diff|, relative drift, top-1 agreement, the canary tolerance and its verdict."""
    from edge.artifacts.manifest import TensorSpec
    from edge.bundle.canary import canary_tolerance

    rows = []
    for aid in sorted(set(reference) & set(other)):
        a, b = reference[aid], other[aid]
        if a.shape != b.shape:
            rows.append({"artifact_id": aid, "error": f"shapes differ: {a.shape} vs {b.shape}"})
            continue
        info = ref_meta["artifacts"].get(aid, {})
        scale = info.get("output_scale")
        spec = TensorSpec("out", tuple(a.shape), "int8", scale=scale, zero_point=0) if scale else None
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        unit = max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0
        tol = canary_tolerance(info.get("precision", ""), a, spec)
        rows.append({
            "artifact_id": aid, "precision": info.get("precision", "?"), "format": info.get("format", "?"),
            "max_abs_diff": diff, "relative": diff / unit, "max_abs_score": unit,
            "top1_agree": float(np.mean(np.argmax(a, 1) == np.argmax(b, 1))) if len(a) else 1.0,
            "tolerance": tol, "within": diff <= tol,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scores", help="score every artifact of a bundle on this machine")
    s.add_argument("bundle")
    s.add_argument("--profile", default=None)
    s.add_argument("--images", type=int, default=200)
    s.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare", help="compare two score files (the first is the reference)")
    c.add_argument("reference", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "scores":
        if a.images < 1:
            p.error("--images must be at least 1")
        scores, meta = score_bundle(a.bundle, a.profile, a.images)
        save_scores(a.out, scores, meta)
        print(f"{len(scores)} artifacts scored on {meta['images']} images ({meta['machine']}"
              f"{', ' + meta['emulation'] if meta['emulation'] else ''}) -> {a.out}")
        return 0
    ref, ref_meta = load_scores(a.reference)
    oth, oth_meta = load_scores(a.other)
    rows = compare(ref, ref_meta, oth, oth_meta)
    if a.json:
        print(json.dumps({"reference": {k: ref_meta[k] for k in ("machine", "emulation", "profile", "images")},
                          "other": {k: oth_meta[k] for k in ("machine", "emulation", "profile", "images")},
                          "artifacts": rows}, indent=2))
        return 0
    print(f"reference {ref_meta['machine']} vs {oth_meta['machine']}"
          f"{' (' + oth_meta['emulation'] + ')' if oth_meta.get('emulation') else ''}, {ref_meta['images']} images")
    print(format_table(
        ["artifact", "max|diff|", "relative", "top-1", "tolerance", "within"],
        [[r["artifact_id"], r["error"]] if "error" in r else
         [r["artifact_id"], f"{r['max_abs_diff']:.3g}", f"{r['relative']:.3g}", f"{r['top1_agree']:.3f}",
          f"{r['tolerance']:.3g}", "yes" if r["within"] else "NO"] for r in rows],
        align="lrrrrl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
