"""`edgekit evaluate --repeat N`: the median and the range (min-max) of every figure over N runs of one comparison.

Each run is a whole comparison with its own workload seed (seed, seed+1, ...: other images, deadlines and
arrivals from the same distributions) in ``OUT/seed-<seed>/``, with its own results.json and report. This
module reads those results (as ``results.json`` holds them) and aggregates them: per policy every number of
its summary, the achieved slowdown, the best static CNN each run picked, and every point of the
accuracy-miss plane; ``OUT/results.json`` (kind ``policy-comparison-repeats``), ``OUT/table.txt`` and, with
plots, ``OUT/plane.png`` and ``OUT/report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmarks.evaluate.plane import Plane, PlanePoint
from benchmarks.evaluate.report import (
    Span,
    comparison_head,
    pct,
    plane_key,
    plot_plane,
    policy_name,
    rate,
    table_markup,
)
from benchmarks.evaluate.results import HEADLINE, HEADLINE_NOTE
from edge.core.atomic import atomic_write_json, atomic_write_text

KIND = "policy-comparison-repeats"
VERSION = 1
PLANE_GROUPS = ("statics", "adaptive", "points")


@dataclass(frozen=True)
class Spread:
    """One figure over the runs that have it: the median, the range, and each run's value (None: not measured)."""

    median: float
    min: float
    max: float
    values: tuple[float | None, ...]

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        got = [float(v) for v in values if v is not None]
        if not got:
            return None
        return cls(round(float(np.median(got)), 6), min(got), max(got), tuple(values))

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "values": list(self.values)}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def policy_figures(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """Every figure of one policy's summary: its numbers (the headline first), and the achieved slowdown."""
    out: dict[str, float | None] = {HEADLINE: summary.get(HEADLINE)}
    for k, v in summary.items():
        if k != HEADLINE and (v is None or _number(v)):
            out[k] = v
    sd = summary.get("slowdown")
    if isinstance(sd, Mapping):
        out["slowdown"] = sd.get("slowdown")
    return out


@dataclass(frozen=True)
class Repeats:
    """N runs of one comparison and the spread of every figure over them."""

    seeds: tuple[int, ...]
    runs: tuple[str, ...]  # each run's results.json, relative to the folder of the aggregate
    variant_labels: Mapping[str, str]
    open_loop: bool
    context: Mapping[str, Any]  # what the first run was measured under (bundle, table, workload, contention)
    policies: Mapping[str, Mapping[str, Spread | None]]  # policy -> figure -> spread, in the first run's order
    achieved_slowdown: Spread | None
    best_static: tuple[str | None, ...]  # the label each run picked
    oracle_floors: tuple[str | None, ...]  # whose run's floors each run's oracle was charged (results' floors_from)
    plane: Mapping[str, Mapping[str, Any]]  # plane_key -> {name, group, source, miss_rate: Spread, accuracy: Spread}
    truncated: Mapping[str, list[str]]  # run -> the policies --duration stopped early

    @property
    def transport(self) -> str:
        return str(self.context.get("transport") or "daemon")

    def median_plane(self) -> tuple[Plane, dict[str, Span]]:
        """The plane of the medians, and each point's range."""
        groups: dict[str, list[PlanePoint]] = {g: [] for g in PLANE_GROUPS}
        spans: dict[str, Span] = {}
        for key, p in self.plane.items():
            m, a = p["miss_rate"], p["accuracy"]
            groups[p["group"]].append(PlanePoint(p["name"], m.median, a.median, p["source"]))
            spans[key] = (m.min, m.max, a.min, a.max)
        return Plane(tuple(groups["statics"]), tuple(groups["adaptive"]), tuple(groups["points"])), spans

    def to_json(self) -> dict[str, Any]:
        def spreads(figs: Mapping[str, Spread | None]) -> dict[str, Any]:
            return {k: None if s is None else s.to_json() for k, s in figs.items()}

        headline = {}
        for name, figs in self.policies.items():
            h = {HEADLINE: figs.get(HEADLINE)}
            if self.open_loop:
                h["goodput_rps"] = figs.get("goodput_rps")
            headline[name] = spreads(h)
        return {
            "kind": KIND,
            "version": VERSION,
            "repeat": len(self.runs),
            "seeds": list(self.seeds),
            "runs": list(self.runs),
            "note": "median and range (min, max) over the runs; each run a whole comparison with its own workload "
                    "seed",
            **dict(self.context),
            "variant_labels": dict(self.variant_labels),
            "complete": True,
            "headline": {"figure": HEADLINE, "note": HEADLINE_NOTE, "open_loop": self.open_loop,
                         "policies": headline},
            "policies": {name: spreads(figs) for name, figs in self.policies.items()},
            "achieved_slowdown": None if self.achieved_slowdown is None else self.achieved_slowdown.to_json(),
            "best_static": list(self.best_static),
            "oracle_floors_from": list(self.oracle_floors),
            "plane": {key: {"group": p["group"], "name": p["name"], "source": p["source"],
                            "miss_rate": p["miss_rate"].to_json(), "accuracy": p["accuracy"].to_json()}
                      for key, p in self.plane.items()},
            "truncated": {k: v for k, v in self.truncated.items() if v},
        }


def aggregate(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Repeats:
    """The spread of every figure over ``runs`` (results.json dicts of the same comparison, other seeds)."""
    if not runs:
        raise ValueError("no runs to aggregate")
    first = runs[0]
    order: list[str] = []
    for d in runs:
        order += [p for p in d["policies"] if p not in order]
    policies: dict[str, dict[str, Spread | None]] = {}
    for name in order:
        per_run = [policy_figures(d["policies"][name]["summary"]) if name in d["policies"] else {} for d in runs]
        keys: list[str] = []
        for f in per_run:
            keys += [k for k in f if k not in keys]
        policies[name] = {k: Spread.of([f.get(k) for f in per_run]) for k in keys}
    plane: dict[str, dict[str, Any]] = {}
    for d in runs:
        for group in PLANE_GROUPS:
            for p in (d.get("plane") or {}).get(group, []):
                plane.setdefault(plane_key(group, p["name"]), {"group": group, "name": p["name"],
                                                               "source": p["source"], "xs": [], "ys": []})
    for d in runs:
        got = {plane_key(g, p["name"]): p for g in PLANE_GROUPS for p in (d.get("plane") or {}).get(g, [])}
        for key, acc in plane.items():
            p = got.get(key)
            acc["xs"].append(None if p is None else p["miss_rate"])
            acc["ys"].append(None if p is None else p["accuracy"])
    plane_out = {k: {"group": v["group"], "name": v["name"], "source": v["source"],
                     "miss_rate": Spread.of(v["xs"]), "accuracy": Spread.of(v["ys"])} for k, v in plane.items()}
    slow = Spread.of([(d.get("contention") or {}).get("achieved_slowdown") for d in runs])
    c = first.get("contention") or {}
    w = first.get("workload") or {}
    context = {"bundle": first.get("bundle"), "table": first.get("table"), "profile": first.get("profile"),
               "deadline_spec": first.get("deadline_spec"),
               "workload": {"count": w.get("count"), "deadline": [(d.get("workload") or {}).get("deadline")
                                                                  for d in runs],
                            "arrival": [(d.get("workload") or {}).get("arrival") for d in runs]},
               "contention": {"spec": c.get("spec"), "what": c.get("what"), "window": c.get("window")},
               "host": first.get("host"), "placement": first.get("placement"),
               "transport": first.get("transport", "daemon")}
    return Repeats(
        seeds=tuple(int((d.get("workload") or {}).get("seed", 0)) for d in runs),
        runs=tuple(names),
        variant_labels=dict(first.get("variant_labels") or {}),
        open_loop=bool((first.get("headline") or {}).get("open_loop")),
        context=context,
        policies=policies,
        achieved_slowdown=slow,
        best_static=tuple((d.get("best_static") or {}).get("label") for d in runs),
        oracle_floors=tuple((d.get("oracle") or {}).get("floors_from") or None for d in runs),
        plane={k: v for k, v in plane_out.items() if v["miss_rate"] is not None and v["accuracy"] is not None},
        truncated={n: [p for p, r in d["policies"].items() if r.get("truncated")] for n, d in zip(names, runs)},
    )


# ----------------------------------------------------------------------------- text, report


def _cell(s: Spread | None, kind: str) -> str:
    if s is None:
        return "-"
    if kind == "pct":
        return f"{pct(s.median)} [{s.min * 100:.2f}-{s.max * 100:.2f}]"
    if kind == "ms":
        return f"{s.median:.2f} [{s.min:.2f}-{s.max:.2f}]"
    return f"{rate(s.median)} [{rate(s.min)}-{rate(s.max)}]"


COLUMNS = {"on-time acc": (HEADLINE, "pct"), "goodput/s": ("goodput_rps", "rate"), "accuracy": ("accuracy", "pct"),
           "miss (daemon clock)": ("server_miss_rate", "pct"), "miss (app clock)": ("server_miss_rate", "pct"),
           "miss (end to end)": ("miss_rate", "pct"),
           "p50 ms": ("p50_ms", "ms"), "p99 ms": ("p99_ms", "ms"), "req/s": ("throughput_rps", "rate")}


def _seeds(rep: Repeats) -> str:
    s = rep.seeds
    return f"seeds {s[0]}-{s[-1]}" if list(s) == list(range(s[0], s[0] + len(s))) else "seeds " + ", ".join(map(str, s))


def headline_line(rep: Repeats) -> str:
    """The first line: each policy's median on-time accuracy and its range (goodput/s too, open loop)."""
    parts = []
    for name, figs in rep.policies.items():
        gp = f" ({_cell(figs.get('goodput_rps'), 'rate')}/s)" if rep.open_loop else ""
        parts.append(f"{policy_name(name, dict(rep.variant_labels))} {_cell(figs.get(HEADLINE), 'pct')}{gp}")
    what = "on-time accuracy" + ("; goodput/s" if rep.open_loop else "")
    return (f"{what}, median [min-max] of {len(rep.runs)} runs ({_seeds(rep)}): " + (", ".join(parts) or "-"))


def repeats_table(rep: Repeats, markdown: bool = False) -> str:
    head = [h for h in comparison_head(rep.open_loop, rep.transport) if h != "variants used"]
    labels = dict(rep.variant_labels)
    body = [[policy_name(name, labels), *(_cell(figs.get(COLUMNS[h][0]), COLUMNS[h][1]) for h in head[1:])]
            for name, figs in rep.policies.items()]
    return table_markup(head, body, markdown)


def context_text(rep: Repeats) -> str:
    c = rep.context
    lines = [f"runs: {', '.join(rep.runs)}"]
    if rep.transport == "inproc":
        lines.insert(0, "transport: in process (AdaptiveClassifier.classify, as an application calls it)")
    w = c.get("workload") or {}
    lines.append(f"deadlines per run: {', '.join(str(x) for x in w.get('deadline') or [])} ms; arrivals per run: "
                 f"{', '.join(str(x) for x in w.get('arrival') or [])}")
    con = c.get("contention") or {}
    if con.get("spec") and con.get("spec") != "none":
        sd = rep.achieved_slowdown
        lines.append(f"contention: {con.get('spec')}: {con.get('what')}; achieved slowdown "
                     + ("-" if sd is None else f"{sd.median:.2f}x [{sd.min:.2f}-{sd.max:.2f}]"))
    if any(b is not None for b in rep.best_static):
        lines.append("best static CNN per run: " + ", ".join(b or "-" for b in rep.best_static))
    if any(f is not None for f in rep.oracle_floors):
        lines.append("oracle charged the floors of, per run: " + ", ".join(f or "-" for f in rep.oracle_floors))
    return "\n".join(lines)


def render_text(rep: Repeats) -> str:
    return headline_line(rep) + "\n\n" + repeats_table(rep) + "\n\n" + context_text(rep) + "\n"


def render_markdown(rep: Repeats, plane_png: str | None) -> str:
    lines = ["# edgekit policy comparison: repeats" + (" (in process)" if rep.transport == "inproc" else ""), "",
             f"{len(rep.runs)} runs of the same comparison, each with its own workload seed ({_seeds(rep)}); every "
             "figure is the median over the runs and [the range, min-max]. Each run's own report is in its "
             "folder.", "", f"**{headline_line(rep)}**", "", repeats_table(rep, markdown=True), "",
             "```", context_text(rep), "```", ""]
    if plane_png:
        lines += ["## Accuracy-miss plane (medians, bars: the range)", "", f"![Accuracy-miss plane]({plane_png})", ""]
    lines += ["## Runs", ""] + [f"- [{r}]({r.rsplit('/', 1)[0]}/report.md)" for r in rep.runs] + [""]
    return "\n".join(lines)


def write_repeats(rep: Repeats, out: Path, plots: bool) -> None:
    """``OUT/plane.png`` and ``OUT/report.md`` (with plots), ``OUT/table.txt``, then ``OUT/results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        plane, spans = rep.median_plane()
        png = None
        if plane.statics or plane.adaptive or plane.points:
            png = plot_plane(plane, out / "plane.png", f"accuracy-miss plane: medians of {len(rep.runs)} runs "
                             f"({_seeds(rep)}), contention {(rep.context.get('contention') or {}).get('spec')}",
                             spans, transport=rep.transport).name
        atomic_write_text(out / "report.md", render_markdown(rep, png))
    atomic_write_text(out / "table.txt", render_text(rep))
    atomic_write_json(out / "results.json", rep.to_json())
