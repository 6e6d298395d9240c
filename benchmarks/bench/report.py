"""`edgekit report`: latency tables -> a Markdown and HTML report with accuracy/latency and CDF plots (matplotlib).

A table measured on a host that its profile does not describe (the header's ``host_mismatch``, or for
an older table the header's architecture and cores against the profile) is said so in the title, the
text and the Devices table: "measured on HOST with the settings of PROFILE", never "on the device".
"""

from __future__ import annotations

import argparse
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks.bench.samples import load_samples
from benchmarks.bench.stats import cdf_from_percentiles, empirical_cdf
from device_profiles.host import mismatch_label
from edge.core.atomic import atomic_write_bytes, atomic_write_text, read_json
from edge.core.errors import UsageError
from edge.core.units import kb
from edge.tables.selection import pareto_front
from edge.tables.table import QUANTILES, LatencyRow, LatencyTable, TableError

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PARETO_PNG = "accuracy_vs_latency.png"
CDF_PNG = "latency_cdf.png"
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
MARKERS = {"tflite": "o", "onnx": "s"}


@dataclass
class Device:
    """One latency table in the report."""

    label: str
    path: Path
    table: LatencyTable
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    front: list[LatencyRow] = field(default_factory=list)

    @property
    def host(self) -> str:
        """The machine that measured it, as the header names it: 'AMD EPYC (x86_64, 2 cores)'."""
        h = self.table.header
        return f"{h.cpu_model or 'an unnamed CPU'} ({h.machine or '?'}, {h.cores} cores)"

    @property
    def mismatch(self) -> str:
        """How the measuring host is not what the profile describes; '' when it is (or when it cannot be told)."""
        return host_mismatch_of(self.table.header)

    @property
    def measured_on(self) -> str:
        """'on the rpi4 itself (HOST)' or 'on HOST with the settings of rpi4 (not a rpi4: why)'."""
        p = self.table.header.profile or "its profile"
        if self.mismatch:
            return f"on {self.host} with the settings of {p} (not a {p}: {self.mismatch})"
        return f"on the {p} itself ({self.host})"


# --------------------------------------------------------------------------- loading


def host_mismatch_of(header) -> str:
    """The header's ``host_mismatch``; for a table written before it was recorded, what the header's
    architecture and cores tell against a built-in or loadable profile (the accelerator cannot be told)."""
    if header.host_mismatch:
        return str(header.host_mismatch)
    if not header.machine:
        return ""
    try:
        from device_profiles import Host, host_mismatch, load_profile

        prof = load_profile(header.profile)
    except Exception:  # a profile this machine does not have: nothing to compare with
        return ""
    dev = (header.settings or {}).get("device") or {}
    cores = dev.get("usable_cores") if isinstance(dev, dict) else None
    emu = dev.get("emulation", "") if isinstance(dev, dict) else ""
    host = Host(str(header.machine), int(cores) if isinstance(cores, int) else int(header.cores or 0), None,
                str(emu or ""))
    return "; ".join(host_mismatch(prof, host))


def load_table(path: str | Path) -> LatencyTable:
    """A latency table, or a selected table (same shape) from 'edgekit select'."""
    try:
        d = read_json(path, what="latency table")
    except (FileNotFoundError, ValueError) as exc:
        raise TableError(str(exc)) from None
    kind = d.get("kind") if isinstance(d, dict) else None
    return LatencyTable.from_dict(d, src=str(path), kind="selected" if kind == "selected" else "latency")


def load_devices(paths: Sequence[str | Path], quantile: str = "p95") -> list[Device]:
    if not paths:
        raise UsageError("give at least one latency table (from 'edgekit bench')")
    if quantile not in QUANTILES:
        raise UsageError(f"unknown latency quantile '{quantile}'; available: {list(QUANTILES)}")
    devices = []
    for p in paths:
        t = load_table(p)
        if not t.rows:
            raise TableError(f"{p} has no rows; benchmark the bundle first (edgekit bench ... --resume to finish it)")
        devices.append(Device(label=t.header.profile or Path(p).stem, path=Path(p), table=t, samples=load_samples(p)))
    # Two tables of the same profile (two boards, or two runs) need telling apart.
    labels = [d.label for d in devices]
    for d in devices:
        if labels.count(d.label) > 1:
            d.label = f"{d.label} ({d.path.stem})"
    labels = [d.label for d in devices]
    for k, d in enumerate(devices, 1):
        if labels.count(d.label) > 1:
            d.label = f"{d.label} #{k}"
    for d in devices:
        d.front = pareto_front(d.table.rows, lambda r: r.latency(quantile), lambda r: r.accuracy)
    return devices


# --------------------------------------------------------------------------- plots


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a board or in CI
    import matplotlib.pyplot as plt

    return plt


def _log_x(values: Sequence[float]) -> bool:
    v = [x for x in values if x > 0]
    return bool(v) and max(v) / min(v) > 20


def plot_accuracy_latency(devices: Sequence[Device], quantile: str, path: Path) -> Path:
    """Every variant as a point, each device's Pareto front as a step line; fronts of all devices overlaid."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    allx = []
    for i, d in enumerate(devices):
        c = COLORS[i % len(COLORS)]
        for fmt in sorted({r.format for r in d.table.rows}):
            rows = [r for r in d.table.rows if r.format == fmt]
            xs = [r.latency(quantile) for r in rows]
            allx += xs
            ax.scatter(xs, [r.accuracy for r in rows], s=18, alpha=0.35, color=c, marker=MARKERS.get(fmt, "^"),
                       label=f"{d.label}: {fmt}")
        fx = [r.latency(quantile) for r in d.front]
        fy = [r.accuracy for r in d.front]
        ax.step(fx, fy, where="post", color=c, lw=1.6, label=f"{d.label}: Pareto front ({len(d.front)})")
        ax.scatter(fx, fy, s=55, facecolor="none", edgecolor=c, linewidth=1.6, zorder=3)
        for k, r in enumerate(d.front, 1):
            ax.annotate(str(k), (r.latency(quantile), r.accuracy), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color=c)
    if _log_x(allx):
        ax.set_xscale("log")
    ax.set_xlabel(f"{quantile} latency per image (ms)")
    ax.set_ylabel("top-1 accuracy on the device")
    ax.set_title(f"Accuracy vs {quantile} latency"
                 + (" — " + " vs ".join(d.label for d in devices) if len(devices) > 1 else f" — {devices[0].label}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)
    return path


def plot_cdfs(devices: Sequence[Device], path: Path, max_lines: int = 12) -> Path:
    """Latency CDFs of each device's front variants, one panel per device side by side."""
    plt = _pyplot()
    n = len(devices)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.8), squeeze=False)
    for ax, d in zip(axes[0], devices):
        front = d.front
        if len(front) > max_lines:  # keep the ends and spread the rest so the legend stays readable
            idx = np.linspace(0, len(front) - 1, max_lines).round().astype(int)
            front = [front[i] for i in sorted(set(idx))]
        cmap = plt.get_cmap("viridis")
        allx = []
        right = []  # where each curve's 99.9th percentile lies: the far tail would squash the plot
        approx = False
        for k, r in enumerate(front):
            color = cmap(k / max(1, len(front) - 1))
            s = d.samples.get(r.variant)
            if s is not None and len(s):
                x, y = empirical_cdf(s)
                ax.plot(x, y, color=color, lw=1.3, label=r.variant)
                right.append(float(np.percentile(s, 99.9)))
            else:
                approx = True
                x, y = cdf_from_percentiles({q: getattr(r, f"{q}_ms")
                                             for q in ("min", "p50", "p90", "p95", "p99", "max")})
                ax.plot(x, y, color=color, lw=1.3, ls="--", marker=".", label=r.variant + " (from percentiles)")
                right.append(float(r.p99_ms))
            allx += list(x)
        cut = ""
        if allx:
            lo, hi = min(allx), max(right) * 1.15
            if hi < max(allx):
                cut = ", x cut at the 99.9th pct"
            if lo > 0 and hi / lo > 20:
                ax.set_xscale("log")
                ax.set_xlim(lo * 0.9, hi)
            else:
                ax.set_xlim(max(0.0, lo - 0.05 * (hi - lo)), hi)
        ax.set_xlabel("latency per image (ms)")
        ax.set_ylabel("fraction of runs")
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{d.label}: front variants" + (" (dashed: from percentiles)" if approx else "") + cut,
                     fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- document model


@dataclass
class Doc:
    """Blocks rendered both to Markdown and to HTML, so the two never disagree."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, head: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(head), [list(map(str, r)) for r in rows])))

    def img(self, src: str, alt: str) -> None:
        self.blocks.append(("img", (src, alt)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "img":
                out.append(f"![{v[1]}]({v[0]})")
            elif kind == "table":
                head, rows = v
                esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
                lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
                out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{e(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{e(v)}</p>")
            elif kind == "img":
                body.append(f'<p><img src="{e(v[0])}" alt="{e(v[1])}"></p>')
            elif kind == "table":
                head, rows = v
                th = "".join(f"<th>{e(c)}</th>" for c in head)
                trs = "\n".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{trs}\n</tbody>\n</table>")
        style = (
            "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
            "tr:nth-child(even){background:#fafafa}img{max-width:100%}"
        )
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


# --------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x < 1:
        return f"{x:.4f}"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _acc(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _header_rows(devices: Sequence[Device]) -> list[list[str]]:
    def col(d: Device, key: str) -> str:
        h = d.table.header
        s = h.settings or {}
        if key == "runtimes":
            return ", ".join(f"{k} {v}" for k, v in sorted(h.runtime_versions.items()))
        if key == "runs":
            return (f">= {s.get('min_runs', '?')} runs and >= {s.get('min_seconds', '?')} s, "
                    f"warm-up {s.get('warmup', '?')}")
        if key == "settings":
            rts = s.get("runtimes", {})
            return "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in cfg.items())}" for n, cfg in rts.items()) or "-"
        if key == "rows":
            skipped = s.get("skipped") or {}
            return f"{len(d.table.rows)}" + (f" ({len(skipped)} skipped)" if skipped else "")
        if key == "table":
            return str(d.path)
        if key == "rss_method":
            return str(s.get("rss_method", "-"))
        if key == "host":
            return f"no: {d.mismatch}" if d.mismatch else "yes"
        return str(getattr(h, key, "")) or "-"

    fields = [
        ("profile", "profile"), ("host", "host is the profile's device"), ("cpu_model", "CPU"), ("cores", "cores"),
        ("governor", "governor"), ("os", "OS"),
        ("machine", "arch"), ("runtimes", "runtimes"), ("settings", "runtime settings"), ("runs", "timing"),
        ("rss_method", "memory method"), ("date", "date (UTC)"), ("bundle", "bundle"), ("rows", "rows"),
        ("table", "table"),
    ]
    return [[name] + [col(d, key) for d in devices] for key, name in fields]


def _row_cells(r: LatencyRow, quantile: str) -> list[str]:
    return [
        r.variant, r.format, r.precision, r.provider, _ms(r.p50_ms), _ms(r.latency(quantile)), _ms(r.p99_ms),
        _acc(r.accuracy),
    ]


def build_report(devices: Sequence[Device], out: Path, quantile: str = "p95",
                 title: str | None = None) -> dict[str, Path]:
    """Write the plots, report.md and report.html into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    title = title or ("edgekit latency report — " + " vs ".join(
        f"{d.label} settings on {d.table.header.cpu_model or 'another host'}, not a {d.label}" if d.mismatch
        else d.label for d in devices))
    pareto_png = plot_accuracy_latency(devices, quantile, out / PARETO_PNG)
    cdf_png = plot_cdfs(devices, out / CDF_PNG)

    doc = Doc()
    doc.h(1, title)
    where = "; ".join(f"{d.label}: measured {d.measured_on}" for d in devices)
    doc.p(
        f"Latency is per image (batch 1), timed with perf_counter_ns around the runtime's invoke only, back to back; "
        f"'at rest' is the median of single runs each after 10 ms idle, what a request that finds the runtime idle "
        f"pays. Accuracy is top-1 on the selection half of the bundle's evaluation set (the serve half stays "
        f"unseen), measured with the same runtime on the same machine, so it differs a little from what "
        f"'edgekit convert' measured on the whole test set. Where: {where}. "
        f"The Pareto front keeps a variant only when it is more accurate than every variant with a lower {quantile}; "
        f"★ marks the variants on it."
    )

    doc.h(2, "Devices")
    doc.table(["", *[d.label for d in devices]], _header_rows(devices))

    doc.h(2, f"Accuracy vs {quantile} latency")
    doc.img(pareto_png.name, f"accuracy vs {quantile} latency")
    for d in devices:
        doc.h(3, f"Pareto front — {d.label} ({len(d.front)} of {len(d.table.rows)} variants)")
        doc.table(
            ["#", "variant", "format", "precision", "provider", "p50 ms", f"{quantile} ms", "p99 ms", "accuracy",
             "peak RSS MB", "size (KB)"],
            [[k, *_row_cells(r, quantile), f"{r.peak_rss_mb:.1f}", kb(r.size_bytes)]
             for k, r in enumerate(d.front, 1)],
        )

    if len(devices) > 1:
        doc.h(2, "Side by side")
        doc.p(f"Every variant measured on any device; ★ marks a device's Pareto front. "
              f"Columns: p50 / {quantile} ms, accuracy.")
        order: list[str] = []
        for d in devices:
            for r in sorted(d.table.rows, key=lambda r: r.latency(quantile)):
                if r.variant not in order:
                    order.append(r.variant)
        cells = []
        for v in order:
            line = [v]
            for d in devices:
                try:
                    r = d.table.row(v)
                except TableError:
                    line.append("-")
                    continue
                star = " ★" if r in d.front else ""
                line.append(f"{_ms(r.p50_ms)} / {_ms(r.latency(quantile))} ms, {_acc(r.accuracy)}{star}")
            cells.append(line)
        doc.table(["variant", *[d.label for d in devices]], cells)

    doc.h(2, "Latency distributions of the front")
    doc.p("Empirical CDF of the raw per-run times from the benchmark's samples file; a dashed line means the samples "
          "file was missing and the curve is drawn through the table's min/p50/p90/p95/p99/max.")
    doc.img(cdf_png.name, "latency CDF of the Pareto front")

    doc.h(2, "All variants")
    doc.p("Times in ms; 'at 0.5 ms gaps' (a daemon's request cadence) and 'at rest' (after 10 ms idle) are '-' for a "
          "table benchmarked without them (--rest-runs); ★: on the Pareto front.")
    for d in devices:
        doc.h(3, d.label)
        rows = sorted(d.table.rows, key=lambda r: (r.latency(quantile), -r.accuracy))
        doc.table(
            ["variant", "provider", "threads", "n", "mean", "std", "p50", "p90", "p95", "p99", "max", "at 0.5 ms gaps",
             "at rest", "load ms", "first ms", "prep ms", "resize ms", "RSS MB", "accuracy", "params", "MACs", "front"],
            [
                [r.variant, r.provider, r.threads, r.samples, _ms(r.mean_ms), _ms(r.std_ms), _ms(r.p50_ms),
                 _ms(r.p90_ms), _ms(r.p95_ms), _ms(r.p99_ms), _ms(r.max_ms), _ms(r.gap_p50_ms or math.nan),
                 _ms(r.rest_p50_ms or math.nan), _ms(r.load_ms), _ms(r.first_inference_ms),
                 f"{r.preprocess_ms:.4f}", f"{r.resize_ms:.4f}" if r.resize_ms else "-", f"{r.peak_rss_mb:.1f}",
                 _acc(r.accuracy), r.params, r.macs,
                 "★" if r in d.front else ""]
                for r in rows
            ],
        )
        skipped = (d.table.header.settings or {}).get("skipped") or {}
        if skipped:
            doc.p("Skipped: " + "; ".join(f"{v}: {why}" for v, why in skipped.items()))

    md = atomic_write_text(out / REPORT_MD, doc.markdown())
    ht = atomic_write_text(out / REPORT_HTML, doc.html(title))
    return {"markdown": md, "html": ht, "pareto_png": pareto_png, "cdf_png": cdf_png}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tables", nargs="+", metavar="TABLE",
                   help="latency tables (from 'edgekit bench'); two or more are compared side by side")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.html and the PNG plots")
    p.add_argument("--quantile", default="p95", choices=list(QUANTILES),
                   help="latency used for the front (default %(default)s)")
    p.add_argument("--title", default=None)


def run(args: argparse.Namespace) -> int:
    devices = load_devices(args.tables, args.quantile)
    for d in devices:
        if d.mismatch:
            print(f"note: {d.path}: {mismatch_label(d.label, d.mismatch)}")
    paths = build_report(devices, Path(args.out), args.quantile, args.title)
    for d in devices:
        print(f"{d.label}: {len(d.table.rows)} variants, front of {len(d.front)}")
        for r in d.front:
            print(f"  {r.variant:<60} {r.format:<6} p50 {_ms(r.p50_ms):>8} ms  p99 {_ms(r.p99_ms):>8} ms  "
                  f"acc {_acc(r.accuracy)}")
    print(f"wrote {paths['markdown']}, {paths['html']}, {paths['pareto_png'].name}, {paths['cdf_png'].name}")
    print(f"next: open {paths['html']} in a browser (★ marks the Pareto front, the variants 'edgekit select' "
          "starts from)")
    return 0
