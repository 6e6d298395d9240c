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


def _specs(run: Path, names: Sequence[str]) -> dict[str, dict]:
    """model id -> its ``models/<id>/spec.json`` (absent for an imported model or an unreadable file)."""
    out = {}
    for name in names:
        try:
            spec = json.loads((run / "models" / name / "spec.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(spec, dict):
            out[name] = spec
    return out


def block_kinds(run: Path, names: Sequence[str], specs: dict[str, dict] | None = None) -> dict[str, str]:
    """model id -> its block kind, from the run's ``models/<id>/spec.json`` (``specs`` if already read): "conv" for
    a spec written before the key existed, "ensemble" for an ensemble, "imported" for a model without a spec."""
    specs = _specs(run, names) if specs is None else specs
    return {n: ("imported" if n not in specs else "ensemble" if specs[n].get("kind") == "ensemble"
                else str(specs[n].get("block", "conv"))) for n in names}


@dataclass(frozen=True)
class GridCell:
    alpha: float
    resolution: str  # "HxW"
    model: str  # the most accurate model of the cell
    accuracy: float
    latency_ms: float
    on_front: bool  # a model of this cell is on the sweep's front
    models: int


def width_resolution_grid(run: Path, pts: Sequence[Point], front: Sequence[str], kinds: dict[str, str],
                          specs: dict[str, dict] | None = None) -> tuple[str, list[GridCell]]:
    """The block kind with the most (alpha, resolution) cells, and one cell per pair: its most accurate model, and
    whether any of its models reaches the sweep's front. ("", []) when no kind has 2 widths and 2 resolutions."""
    specs = _specs(run, [p.name for p in pts]) if specs is None else specs
    try:
        shape = json.loads((run / "run.json").read_text()).get("input_shape", [])
    except (OSError, ValueError):
        shape = []
    default_res = f"{shape[0]}x{shape[1]}" if len(shape) >= 2 else "run"
    cells: dict[str, dict[tuple[float, str], list[Point]]] = {}
    for p in pts:
        spec = specs.get(p.name)
        if spec is None or spec.get("kind") == "ensemble":
            continue
        res = spec.get("resolution") or []
        key = (float(spec.get("alpha", 1.0)), f"{res[0]}x{res[1]}" if len(res) == 2 else default_res)
        cells.setdefault(kinds.get(p.name, "conv"), {}).setdefault(key, []).append(p)

    def axes(kind: str) -> tuple[int, int]:
        keys = cells[kind]
        return len({a for a, _ in keys}), len({r for _, r in keys})

    ranked = sorted((k for k in cells if min(axes(k)) >= 2), key=lambda k: (-len(cells[k]), k))
    if not ranked:
        return "", []
    kind, on = ranked[0], set(front)
    out = []
    for (alpha, res), members in sorted(cells[kind].items()):
        best = max(members, key=lambda p: (p.accuracy, -p.latency_ms))
        out.append(GridCell(alpha, res, best.name, best.accuracy, best.latency_ms,
                            any(p.name in on for p in members), len(members)))
    return kind, out


def pruned_children(run: Path, names: Sequence[str]) -> dict[str, tuple[str, float, str]]:
    """child model id -> (its parent's id, the pruned fraction, the method), from each child's train.json; a ViP
    child of a pruned member is (the pruned member, 0, "ViP after pruning")."""
    out = {}
    for name in names:
        try:
            rec = json.loads((run / "models" / name / "train.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("pruned_from"):
            out[name] = (str(rec["pruned_from"]), float(rec.get("prune", 0.0)), str(rec.get("prune_method", "l1")))
        elif isinstance(rec, dict) and rec.get("vip_from"):  # a ViP child of a pruned member
            out[name] = (str(rec["vip_from"]), 0.0, "ViP after pruning")
    return out


def _plain_key(spec: dict) -> str:
    """A spec without its ViP and pruning: what a ViP or pruned model is compared to."""
    return json.dumps({k: v for k, v in spec.items() if k not in ("model_id", "vip", "prune", "prune_method")},
                      sort_keys=True)


def pruning_rows(pts: Sequence[Point], children: dict[str, tuple[str, float, str]], vip: dict[str, bool],
                 specs: dict[str, dict] | None = None) -> list[dict]:
    """One row per pruned child whose parent was measured: both latencies, the speed-up and the accuracy change;
    with ``specs``, also against the plain member (the same spec without ViP or pruning) when it was measured."""
    by = {p.name: p for p in pts}
    specs = specs or {}
    plain = {_plain_key(sp): n for n, sp in specs.items()
             if n in by and not any(sp.get("vip") or []) and not sp.get("prune") and sp.get("kind") != "ensemble"}
    rows = []
    for child, (parent, ratio, method) in sorted(children.items()):
        if child not in by or parent not in by:
            continue
        c, p = by[child], by[parent]
        rows.append({"child": child, "parent": parent, "prune": ratio, "method": method, "vip": vip.get(child, False),
                     "parent_ms": p.latency_ms, "child_ms": c.latency_ms, "speedup": p.latency_ms / c.latency_ms,
                     "parent_accuracy": p.accuracy, "child_accuracy": c.accuracy,
                     "accuracy_change_points": 100 * (c.accuracy - p.accuracy)})
        base = plain.get(_plain_key(specs[child])) if child in specs else None
        if base is not None and base != parent:
            rows[-1].update(plain=base, speedup_vs_plain=by[base].latency_ms / c.latency_ms,
                            accuracy_change_vs_plain_points=100 * (c.accuracy - by[base].accuracy))
    return rows


def plot_pruning(pts: Sequence[Point], children: dict[str, tuple[str, float, str]], vip: dict[str, bool],
                 path: Path) -> None:
    """Each pruned child joined to its parent in the accuracy-latency plane; ViP models drawn as squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {p.name: p for p in pts}
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    family = {n for n in by if n in children or n in {v[0] for v in children.values()}}
    for n in family:
        p = by[n]
        ax.scatter([p.latency_ms], [p.accuracy * 100], marker="s" if vip.get(n) else "o",
                   c="tab:red" if n in children else "tab:blue", s=30, zorder=3)
    for child, (parent, ratio, method) in children.items():
        if child in by and parent in by:
            c, p = by[child], by[parent]
            ax.annotate("", (c.latency_ms, c.accuracy * 100), (p.latency_ms, p.accuracy * 100),
                        arrowprops=dict(arrowstyle="->", color="gray"))
            label = method if not ratio else f"{ratio:.0%} {method}" + (" +ViP" if vip.get(child) else "")
            ax.text(c.latency_ms, c.accuracy * 100, " " + label, fontsize=7, va="bottom")
    _accuracy_axes(ax, f"{QUANTILE} latency (ms)", "pruned children (red) from their parents (blue); squares: ViP")
    _save(fig, path)


def plot_grid(kind: str, cells: Sequence[GridCell], path: Path) -> None:
    """A width x resolution grid for one block kind: accuracy and p95 per cell, the front's cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def side(r: str) -> int:
        return int(r.split("x")[0]) if r.split("x")[0].isdigit() else 0

    alphas = sorted({c.alpha for c in cells})
    ress = sorted({c.resolution for c in cells}, key=side)
    acc = np.full((len(alphas), len(ress)), np.nan)
    for c in cells:
        acc[alphas.index(c.alpha), ress.index(c.resolution)] = c.accuracy * 100
    fig, ax = plt.subplots(figsize=(1.9 * len(ress) + 2.4, 1.2 * len(alphas) + 1.6), dpi=110)
    im = ax.imshow(acc, cmap="viridis", aspect="auto", origin="lower")
    for c in cells:
        i, j = alphas.index(c.alpha), ress.index(c.resolution)
        ax.text(j, i, f"{c.accuracy:.1%}\n{c.latency_ms:.4f} ms" + ("\n★ front" if c.on_front else ""),
                ha="center", va="center", fontsize=8, color="white")
        if c.on_front:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2.5))
    ax.set_xticks(range(len(ress)), ress)
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("input resolution")
    ax.set_ylabel("width multiplier (alpha)")
    ax.set_title(f"{kind}: accuracy and {QUANTILE} latency per width x resolution; red: on the front", fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 accuracy (%)")
    _save(fig, path)


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
    _accuracy_axes(ax, f"{QUANTILE} latency (ms)", title)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def _accuracy_axes(ax, xlabel: str, title: str) -> None:
    """The accuracy plane every plot here draws on: a log x axis, accuracy in % up, a grid."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


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
    _accuracy_axes(ax, "multiply-accumulates per image" if x == "macs" else f"{QUANTILE} latency (ms)", title)
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
        specs = _specs(run, [p.name for p in per_model])  # read once for the block kinds, pruning and the grid
        kinds = block_kinds(run, [p.name for p in per_model], specs)
        summary["blocks"] = block_stats(per_model, m.front, kinds)
        plot_blocks(per_model, m.front, kinds, out / "accuracy_vs_p95_by_block.png",
                    f"{m.count} models ({reference}) by block kind: accuracy vs {QUANTILE} latency")
        children = pruned_children(run, [p.name for p in per_model])
        if children:
            vip = {n: any(sp.get("vip") or []) for n, sp in specs.items()}
            summary["pruning"] = pruning_rows(per_model, children, vip, specs)
            plot_pruning(per_model, children, vip, out / "pruning.png")
        grid_kind, cells = width_resolution_grid(run, per_model, m.front, kinds, specs)
        if cells:
            summary["grid"] = {"block": grid_kind, "cells": [asdict(c) for c in cells]}
            plot_grid(grid_kind, cells, out / "width_resolution_grid.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "report.md", format_summary(summary))
    return summary


def _how(row: dict) -> str:
    """How a child was made: "50% l1", or "ViP after pruning"."""
    return f"{row['prune']:.0%} {row['method']}" if row["prune"] else row["method"]


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
    grid = s.get("grid")
    if grid:
        on = [f"alpha {c['alpha']:g} at {c['resolution']}" for c in grid["cells"] if c["on_front"]]
        lines += ["", f"Width x resolution ({grid['block']}): {len(on)} of {len(grid['cells'])} cells reach the front "
                  f"({', '.join(on) or 'none'})."]
    lines += ["", "![accuracy vs p95](accuracy_vs_p95.png)", "", "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    if s.get("blocks"):
        lines += ["![accuracy vs p95 by block kind](accuracy_vs_p95_by_block.png)", ""]
    if grid:
        lines += ["![width x resolution](width_resolution_grid.png)", ""]
    if s.get("pruning"):
        lines += ["| pruned child | from | method | ViP | parent ms | child ms | speed-up | accuracy change (points) |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {r['child']} | {r['parent']} | {_how(r)} | {'yes' if r['vip'] else 'no'} | "
                  f"{r['parent_ms']:.4f} | {r['child_ms']:.4f} | {r['speedup']:.2f}x | "
                  f"{r['accuracy_change_points']:+.2f} |" for r in s["pruning"]]
        lines += [f"- {r['child']} against the plain {r['plain']}: {r['speedup_vs_plain']:.2f}x faster, "
                  f"{r['accuracy_change_vs_plain_points']:+.2f} points" for r in s["pruning"] if "plain" in r]
        lines += ["", "![pruning](pruning.png)", ""]
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
