"""The paper's finding on a sweep: accuracy against MACs and against tail latency, the front, and how many are beaten.

    python -m benchmarks.perf.sweep_report TABLE.json --out sweep-report [--run RUN] [--reference tflite-fp32]

From a latency table measured by `edgekit bench` on a sweep's bundle, it reports per model (one
reference artifact per model, default its LiteRT fp32 one, so every model is measured the same
way) and per artifact (all formats and precisions):

- accuracy against MACs and against p95 latency, the Pareto front marked (plots);
- how many are on the front;
- the share some other one beats on both accuracy and latency (strictly): the paper's
  observation that a bigger CNN is often not a more accurate one;
- the share of models that a model with fewer MACs beats on accuracy;
- with ``--run``, the training wall time and time per model from each model's train.json, and per
  block kind (each model's spec.json ``block``: conv, dwsep, mbconv, residual; ensembles and imported
  models apart) how many reach the front and how many another model beats, with accuracy against
  latency drawn per block kind.

Accuracy is the table's, measured on the device on the bundle's selection half.
Never imports TensorFlow: it reads files only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.core.atomic import atomic_write_bytes, atomic_write_text
from edge.tables.selection import pareto_front
from edge.tables.table import LatencyRow, LatencyTable

QUANTILE = "p95"


@dataclass(frozen=True)
class Point:
    name: str  # model id or artifact id
    macs: int
    latency_ms: float
    accuracy: float


@dataclass(frozen=True)
class FrontStats:
    what: str
    count: int
    on_front: int
    dominated: int  # some other point is strictly more accurate and strictly faster
    beaten_by_smaller: int  # some point with strictly fewer MACs is strictly more accurate
    front: tuple[str, ...]

    @property
    def dominated_share(self) -> float:
        return self.dominated / self.count if self.count else float("nan")

    @property
    def beaten_by_smaller_share(self) -> float:
        return self.beaten_by_smaller / self.count if self.count else float("nan")


def points(rows: Sequence[LatencyRow], reference: str | None) -> list[Point]:
    """One point per row, or with ``reference`` ("FORMAT-PRECISION") one per model."""
    out = []
    for r in rows:
        if reference and f"{r.format}-{r.precision}" != reference:
            continue
        out.append(Point(r.model_id if reference else r.variant, int(r.macs), r.latency(QUANTILE), float(r.accuracy)))
    return out


def front_stats(what: str, pts: Sequence[Point]) -> FrontStats:
    lat = np.array([p.latency_ms for p in pts])
    acc = np.array([p.accuracy for p in pts])
    macs = np.array([p.macs for p in pts])
    dominated = sum(bool(np.any((acc > a) & (lat < t))) for a, t in zip(acc, lat))
    smaller = sum(bool(np.any((acc > a) & (macs < m))) for a, m in zip(acc, macs))
    front = pareto_front(pts, lambda p: p.latency_ms, lambda p: p.accuracy)
    return FrontStats(what, len(pts), len(front), dominated, smaller, tuple(p.name for p in front))


def train_times(run: Path) -> dict[str, float]:
    walls = []
    for f in sorted((run / "models").glob("*/train.json")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("finished") and "wall_s" in rec:
            walls.append(float(rec["wall_s"]))
    if not walls:
        return {}
    return {"models": len(walls), "train_s_total": round(sum(walls), 1),
            "train_s_per_model": round(float(np.mean(walls)), 2), "train_s_median": round(float(np.median(walls)), 2)}


def block_kinds(run: Path, names: Sequence[str]) -> dict[str, str]:
    """model id -> its block kind, read from the run's ``models/<id>/spec.json`` ("conv" for a spec written before
    the key existed, "ensemble" for an ensemble, "imported" for a model without a spec)."""
    out = {}
    for name in names:
        try:
            spec = json.loads((run / "models" / name / "spec.json").read_text())
        except (OSError, ValueError):
            out[name] = "imported"
            continue
        out[name] = "ensemble" if spec.get("kind") == "ensemble" else str(spec.get("block", "conv"))
    return out


def block_stats(pts: Sequence[Point], front: Sequence[str], kinds: dict[str, str]) -> list[dict]:
    """Per block kind: its models, how many are on the whole sweep's front, how many some model beats on both."""
    lat = np.array([p.latency_ms for p in pts])
    acc = np.array([p.accuracy for p in pts])
    on = set(front)
    rows = []
    for kind in sorted({kinds.get(p.name, "imported") for p in pts}):
        mine = [i for i, p in enumerate(pts) if kinds.get(p.name, "imported") == kind]
        beaten = sum(bool(np.any((acc > acc[i]) & (lat < lat[i]))) for i in mine)
        rows.append({"block": kind, "count": len(mine), "on_front": sum(pts[i].name in on for i in mine),
                     "dominated": beaten, "dominated_share": round(beaten / len(mine), 4),
                     "best_accuracy": max(float(acc[i]) for i in mine)})
    return rows


def plot_blocks(pts: Sequence[Point], front: Sequence[str], kinds: dict[str, str], path: Path, title: str) -> None:
    """Accuracy against tail latency, one colour per block kind, the sweep's front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for kind in sorted({kinds.get(p.name, "imported") for p in pts}):
        mine = [p for p in pts if kinds.get(p.name, "imported") == kind]
        ax.scatter([p.latency_ms for p in mine], [p.accuracy * 100 for p in mine], s=18, alpha=0.75,
                   label=f"{kind} ({len(mine)})")
    on = sorted((p for p in pts if p.name in set(front)), key=lambda p: p.latency_ms)
    ax.plot([p.latency_ms for p in on], [p.accuracy * 100 for p in on], "-", c="black", lw=1, alpha=0.6,
            label=f"{QUANTILE} latency front ({len(on)})")
    ax.set_xscale("log")
    ax.set_xlabel(f"{QUANTILE} latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot(pts: Sequence[Point], front: Sequence[str], x: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on = set(front)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    xs = np.array([p.macs if x == "macs" else p.latency_ms for p in pts], float)
    ys = np.array([p.accuracy * 100 for p in pts])
    mask = np.array([p.name in on for p in pts])
    ax.scatter(xs[~mask], ys[~mask], s=12, c="tab:gray", alpha=0.6, label=f"off the front ({int((~mask).sum())})")
    order = np.argsort(xs[mask])
    front_name = "MACs front" if x == "macs" else f"{QUANTILE} latency front"
    ax.plot(xs[mask][order], ys[mask][order], "-o", c="tab:red", ms=5, label=f"{front_name} ({int(mask.sum())})")
    ax.set_xscale("log")
    ax.set_xlabel("multiply-accumulates per image" if x == "macs" else f"{QUANTILE} latency (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def build(table_path: Path, out: Path, reference: str, run: Path | None) -> dict:
    table = LatencyTable.load(table_path)
    rows = list(table.rows)
    if not rows:
        raise SystemExit(f"sweep_report: {table_path} has no rows; benchmark a bundle with 'edgekit bench' first")
    per_model = points(rows, reference)
    if not per_model:
        kinds = sorted({f"{r.format}-{r.precision}" for r in rows})
        raise SystemExit(f"sweep_report: no '{reference}' artifacts in {table_path}; --reference one of {kinds}")
    per_artifact = points(rows, None)
    stats = [front_stats(f"models ({reference})", per_model), front_stats("artifacts (all formats)", per_artifact)]
    out.mkdir(parents=True, exist_ok=True)
    m = stats[0]
    plot(per_model, m.front, "latency", out / "accuracy_vs_p95.png",
         f"{m.count} models ({reference}): accuracy vs {QUANTILE} latency, {m.on_front} on the front")
    macs_front = front_stats("macs", [Point(p.name, p.macs, float(p.macs), p.accuracy) for p in per_model])
    plot(per_model, macs_front.front, "macs", out / "accuracy_vs_macs.png",
         f"{m.count} models: accuracy vs MACs, {macs_front.on_front} on the MACs front")
    summary = {
        "table": str(table_path), "device": table.header.cpu_model, "profile": table.header.profile,
        "quantile": QUANTILE, "reference": reference,
        "stats": [asdict(s) | {"dominated_share": round(s.dominated_share, 4),
                               "beaten_by_smaller_share": round(s.beaten_by_smaller_share, 4)} for s in stats],
        "macs_front": list(macs_front.front),
        "accuracy_range": [min(p.accuracy for p in per_model), max(p.accuracy for p in per_model)],
        "macs_range": [min(p.macs for p in per_model), max(p.macs for p in per_model)],
        "p95_range_ms": [min(p.latency_ms for p in per_model), max(p.latency_ms for p in per_model)],
    }
    if run is not None:
        summary["training"] = train_times(run)
        kinds = block_kinds(run, [p.name for p in per_model])
        summary["blocks"] = block_stats(per_model, m.front, kinds)
        plot_blocks(per_model, m.front, kinds, out / "accuracy_vs_p95_by_block.png",
                    f"{m.count} models ({reference}) by block kind: accuracy vs {QUANTILE} latency")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "report.md", format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    lines = [f"# Sweep report: {s['profile']} on {s['device']}", ""]
    lines.append(f"| population | count | on the {s['quantile']} front | beaten on accuracy and latency | "
                 "beaten on accuracy by fewer MACs |")
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for st in s["stats"]:
        lines.append(f"| {st['what']} | {st['count']} | {st['on_front']} | {st['dominated']} "
                     f"({st['dominated_share']:.0%}) | {st['beaten_by_smaller']} "
                     f"({st['beaten_by_smaller_share']:.0%}) |")
    lo, hi = s["accuracy_range"]
    lines += ["", f"- accuracy {lo:.1%}–{hi:.1%}; MACs {s['macs_range'][0]:,}–{s['macs_range'][1]:,}; "
              f"{s['quantile']} {s['p95_range_ms'][0]:.4f}–{s['p95_range_ms'][1]:.4f} ms",
              f"- models on the latency front: {', '.join(s['stats'][0]['front'])}"]
    t = s.get("training")
    if t:
        lines.append(f"- training: {t['models']} models, {t['train_s_total']:.0f} s of training in all, "
                     f"{t['train_s_per_model']:.1f} s per model (median {t['train_s_median']:.1f} s)")
    if s.get("blocks"):
        lines += ["", "| block | models | on the front | beaten on accuracy and latency | best accuracy |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {b['block']} | {b['count']} | {b['on_front']} | {b['dominated']} ({b['dominated_share']:.0%}) | "
                  f"{b['best_accuracy']:.2%} |" for b in s["blocks"]]
    lines += ["", "![accuracy vs p95](accuracy_vs_p95.png)", "", "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    if s.get("blocks"):
        lines += ["![accuracy vs p95 by block kind](accuracy_vs_p95_by_block.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", type=Path, help="latency table from 'edgekit bench' on the sweep's bundle")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md, summary.json and the plots")
    p.add_argument("--reference", default="tflite-fp32", help="the artifact kind that stands for a model")
    p.add_argument("--run", type=Path, default=None, help="the run folder, for training times and block kinds")
    a = p.parse_args(argv)
    s = build(a.table, a.out, a.reference, a.run)
    sys.stdout.write(format_summary(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
