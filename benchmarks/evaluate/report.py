"""The policy-comparison report: the headline (on-time accuracy), text and Markdown tables, PNG plots (the
accuracy-miss plane, accuracy/miss per policy, request timelines)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.evaluate.plane import Plane, plane_data
from benchmarks.evaluate.results import Evaluation, clock_short
from edge.core.atomic import atomic_write_bytes, atomic_write_text
from edge.core.textable import format_table

POLICY_COLORS = {
    "adaptive": "#1f77b4",
    "mean-table": "#ff7f0e",
    "quantile-table": "#8c564b",
    "best-static": "#e377c2",
    "most-accurate": "#d62728",
    "fastest": "#7f7f7f",
    "oracle": "#2ca02c",
}


# ----------------------------------------------------------------------------- tables


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def policy_name(name: str, labels: dict[str, str]) -> str:
    """A policy as tables and plots show it: ``static:<variant>`` by the variant's short label."""
    if name.startswith("static:") and name[len("static:"):] in labels:
        return "static:" + labels[name[len("static:"):]]
    return name


def rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def headline_line(ev: Evaluation) -> str:
    """The first line of every summary: each policy's on-time accuracy (and goodput/s, open loop)."""
    labels = ev.labels
    parts = []
    for name, h in ev.headline().items():
        gp = f" ({rate(h['goodput_rps'])}/s)" if "goodput_rps" in h else ""
        parts.append(f"{policy_name(name, labels)} {pct(h['on_time_accuracy'])}{gp}")
    what = "on-time accuracy (correct and on time, of all requests" + ("; goodput/s)" if ev.open_loop else ")")
    return f"{what}: " + (", ".join(parts) or "-")


def table_markup(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(out)
    return format_table(head, body, align="l" + "r" * (len(head) - 2) + "l", rule=True)


def comparison_head(open_loop: bool, transport: str = "daemon") -> list[str]:
    """The columns: on-time accuracy first (goodput/s beside it with open-loop arrivals), then what it is made of."""
    return ["policy", "on-time acc", *(["goodput/s"] if open_loop else []), "accuracy",
            f"miss ({clock_short(transport)} clock)",
            "miss (end to end)", "p50 ms", "p99 ms", "req/s", "variants used"]


def comparison_table(ev: Evaluation, markdown: bool = False) -> str:
    labels = ev.labels
    body = []
    for name, pol in ev.policies.items():
        s = pol.summary
        used = " ".join(f"{labels.get(v, v)}:{c}"
                        for v, c in sorted(s["variants"].items(), key=lambda kv: labels.get(kv[0], kv[0])))
        body.append([
            policy_name(name, labels), pct(s.get("on_time_accuracy")),
            *([rate(s.get("goodput_rps"))] if ev.open_loop else []),
            pct(s["accuracy"]), pct(s["server_miss_rate"]), pct(s["miss_rate"]),
            _ms(s["p50_ms"]), _ms(s["p99_ms"]), rate(s["throughput_rps"]), used or "-",
        ])
    return table_markup(comparison_head(ev.open_loop, ev.transport), body, markdown)


def variant_legend(ev: Evaluation, markdown: bool = False) -> str:
    labels = ev.labels
    if markdown:
        out = ["| label | variant | table accuracy | p50 ms | p95 ms |", "|---|---|---|---|---|"]
        out += [f"| {labels[r.variant]} | `{r.variant}` | {r.accuracy * 100:.2f}% | {r.p50_ms:.3f} "
                f"| {r.p95_ms:.3f} |" for r in ev.rows]
        return "\n".join(out)
    return "\n".join(
        f"  {labels[r.variant]:>3}  acc {r.accuracy * 100:6.2f}%  p95 {r.p95_ms:8.3f} ms  {r.variant}" for r in ev.rows
    )


def context_lines(ev: Evaluation) -> str:
    """What the table was measured under: placement, floor, deadlines, contention and its effect."""
    lines = []
    if ev.transport == "inproc":
        lines.append("transport: in process (AdaptiveClassifier.classify, as an application calls it)")
    if ev.options.get("spin_us"):
        lines.append(f"busy polling: each daemon polled {ev.options['spin_us']} us after every answer (--spin-us)")
    if ev.placement.server is not None:
        lines.append(f"placement: {ev.placement.describe()}")
    if ev.probes is not None:
        pr = ev.probes.fastest
        lines.append(f"serving floor (fastest variant, {clock_short(ev.transport)} clock, p50): {pr.floor_ms:.3f} ms; "
                     f"end to end {pr.e2e_overhead_ms:.3f} ms")
    lines.append(f"deadlines: {ev.workload.deadline} ms; arrivals: {ev.workload.arrival}")
    ov = ev.overload
    if ov is not None:
        lines.append(f"overload: {ov.factor:g}x the most accurate variant's capacity ({ov.capacity_rps:.0f}/s) "
                     f"= {ov.rate_rps:.0f} requests/s")
    c = ev.contention
    if c.active:
        sd = ev.achieved_slowdown
        lines.append(f"contention: {c.describe()}: {c.what()}; achieved slowdown of served inferences "
                     f"(median observed/table inside vs outside the window): "
                     f"{'-' if sd is None else f'{sd:.2f}x'}")
    ho = ev.held_out
    if ho is not None:
        gaps = [v.gap for v in ho.variants.values()]
        lines.append("served minus table accuracy per variant (held-out images): "
                     + ", ".join(f"{k} {v.gap * 100:+.2f}" for k, v in ho.variants.items())
                     + f" points (mean {np.mean(gaps) * 100:+.2f})")
    bs = ev.best_static
    if bs is not None:
        lines.append(f"best static CNN: {bs.label} ({bs.variant})")
    if ev.oracle is not None and ev.oracle.choice:
        lines.append(f"oracle: {oracle_choice(ev.oracle)}")
    if ev.oracle is not None and ev.oracle.by_floors:
        lines.append(f"oracle's floors: {floors_line(ev.oracle, ev.workload.closed)}")
    if ev.oracle is not None and ev.oracle.server_check is not None:
        lines.append(f"oracle's server: {server_check_line(ev.oracle.server_check, ev.clock)}")
    return ("\n" + "\n".join(lines) + "\n") if lines else ""


def oracle_choice(o) -> str:
    """How the oracle chose, and (open loop) what choosing request by request reads on the same times."""
    busy = "" if o.busy_ms is None else (f"; each request holds its server {o.busy_ms:.3f} ms or its floor, the "
                                         "longer, besides its inference (the daemon's measured work per request)")
    if not o.greedy:
        return o.choice + busy
    return (f"{o.choice}{busy}; request by request it would read {pct(o.greedy.get('on_time_accuracy'))} on time, "
            f"{rate(o.greedy.get('goodput_rps'))}/s")


def floors_line(o, closed: bool) -> str:
    """Whose run's floors the oracle was charged, and what each charge read (it keeps the better)."""
    def figure(v: Mapping[str, Any]) -> str:
        return pct(v.get("on_time_accuracy")) + ("" if closed else f", {rate(v.get('goodput_rps'))}/s")
    return (f"{o.floors_from or 'probe'}'s run (the better of: "
            + "; ".join(f"{k}'s {figure(v)}" for k, v in o.by_floors.items()) + ")")


def server_check_line(c, clock: str) -> str:
    """The best static CNN on the oracle's server model beside its real run."""
    return (f"{c.label} served alone by it misses {pct(c.simulated_miss)} on the {clock} clock; "
            f"{c.label}'s own run missed {pct(c.measured_miss)}")


def render_text(ev: Evaluation) -> str:
    """``table.txt``: the headline, the comparison table, the variant legend and what it was measured under."""
    return (headline_line(ev) + "\n\n" + comparison_table(ev) + "\n\nvariants (by table latency):\n"
            + variant_legend(ev) + "\n" + context_lines(ev))


# ----------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # boards and CI have no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _color(name: str, k: int) -> str:
    return POLICY_COLORS.get(name, f"C{(k + 4) % 10}")


def plot_policies(ev: Evaluation, path: Path) -> Path:
    """Two bar charts side by side: accuracy and deadline-miss rate per policy."""
    plt = _plt()
    names = list(ev.policies)
    acc = [100 * (ev.policies[n].summary["accuracy"] or 0.0) for n in names]
    miss = [100 * (ev.policies[n].summary["server_miss_rate"] or 0.0) for n in names]
    colors = [_color(n, k) for k, n in enumerate(names)]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) * 2), 4.2))
    x = np.arange(len(names))
    a1.bar(x, acc, color=colors)
    a1.set_title("accuracy on the eval labels")
    a1.set_ylabel("%")
    lo = max(0.0, min(acc) - 10) if acc else 0.0
    a1.set_ylim(lo, min(100.0, max(acc) + 3) if acc else 100.0)
    a2.bar(x, miss, color=colors)
    a2.set_title(f"deadline-miss rate ({clock_short(ev.transport)} clock)")
    a2.set_ylim(0, max(1.0, max(miss) * 1.15) if miss else 1.0)
    a2.set_ylabel("%")
    for ax, vals in ((a1, acc), (a2, miss)):
        ax.set_xticks(x, names, rotation=20, ha="right")
        for xi, v in zip(x, vals):
            ax.annotate(f"{v:.1f}", (xi, v), ha="center", va="bottom", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    w = ev.workload
    fig.suptitle(f"{w.count} requests, deadlines {w.deadline} ms, arrivals {w.arrival}, "
                 f"contention {ev.contention.describe()}", fontsize=10)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)
    return path


Span = tuple[float, float, float, float]  # min and max of the miss rate, then of the accuracy (repeats)


def plane_key(group: str, name: str) -> str:
    """A point's key across repeats: its group (statics, adaptive, points) and its name."""
    return f"{group}:{name}"


def plot_plane(plane: Plane, path: Path, title: str, spans: dict[str, Span] | None = None,
               transport: str = "daemon") -> Path:
    """The accuracy-miss plane: x the miss rate, y the accuracy of the answers, in %. Every variant served alone
    (filled: measured by the daemon; hollow: predicted by the oracle pass), adaptive's curve by its quantile,
    mean-table, quantile-table and the oracle as points; with ``spans`` (repeats) each point's min-max range."""
    plt = _plt()
    spans = spans or {}
    fig, ax = plt.subplots(figsize=(7.5, 5.2))

    def bars(group: str, p, color: str) -> None:
        sp = spans.get(plane_key(group, p.name))
        if sp is None:
            return
        x, y = 100 * p.miss_rate, 100 * p.accuracy
        ax.errorbar([x], [y], xerr=[[x - 100 * sp[0]], [100 * sp[1] - x]], yerr=[[y - 100 * sp[2]], [100 * sp[3] - y]],
                    fmt="none", ecolor=color, alpha=0.5, lw=0.9, capsize=2)

    legend_seen: set[str] = set()
    for p in plane.statics:
        measured = p.source != "oracle pass"
        label = "variant served alone" if measured else "variant alone (predicted by the oracle pass)"
        ax.scatter([100 * p.miss_rate], [100 * p.accuracy], s=42, marker="s", color="0.3" if measured else "none",
                   edgecolors="0.3", zorder=3, label=None if label in legend_seen else label)
        legend_seen.add(label)
        ax.annotate(p.name, (100 * p.miss_rate, 100 * p.accuracy), textcoords="offset points", xytext=(5, -10),
                    fontsize=8, color="0.3")
        bars("statics", p, "0.3")
    if plane.adaptive:
        c = POLICY_COLORS["adaptive"]
        ax.plot([100 * p.miss_rate for p in plane.adaptive], [100 * p.accuracy for p in plane.adaptive], "-o",
                color=c, ms=5, zorder=4, label="adaptive (by latency quantile)")
        for p in plane.adaptive:
            ax.annotate(p.name, (100 * p.miss_rate, 100 * p.accuracy), textcoords="offset points", xytext=(5, 4),
                        fontsize=8, color=c)
            bars("adaptive", p, c)
    for k, p in enumerate(plane.points):
        c = _color(p.name, k)
        ax.scatter([100 * p.miss_rate], [100 * p.accuracy], s=60, marker="*" if p.name == "oracle" else "D",
                   color=c, zorder=5, label=p.name)
        bars("points", p, c)
    ax.set_xlabel(f"deadline-miss rate, {clock_short(transport)} clock (%)")
    ax.set_ylabel("accuracy of the answers (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)
    return path


def plane_title(ev: Evaluation) -> str:
    w = ev.workload
    return (f"accuracy-miss plane: {w.count} requests, deadlines {w.deadline} ms, arrivals {w.arrival}, "
            f"contention {ev.contention.describe()}")


def plot_timeline(ev: Evaluation, path: Path) -> Path:
    """Per policy: deadline and end-to-end latency per request (misses in red), and the chosen
    variant with the daemon's slowdown factor; the contention window is shaded."""
    plt = _plt()
    names = list(ev.policies)
    labels = ev.labels
    rank = {v: int(lbl[1:]) for v, lbl in labels.items() if lbl[1:].isdigit()}
    nv = max(len(rank), 1)
    window = ev.window
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 2.4 * len(names) + 0.6), squeeze=False, sharex=True)
    for k, name in enumerate(names):
        # The values as results.json holds them (rounded), so a plot drawn again from the file is the same.
        recs = [r.to_dict() for r in ev.policies[name].records]
        idx = np.asarray([r["index"] for r in recs])
        dl = np.asarray([r["deadline_ms"] for r in recs], dtype=float)
        e2e = np.asarray([r["e2e_ms"] if r["status"] == 200 else np.nan for r in recs], dtype=float)
        met = np.asarray([bool(r["deadline_met"]) for r in recs])
        var = np.asarray([rank.get(r["variant"], -1) if r["variant"] else -1 for r in recs], dtype=float)
        var[var < 0] = np.nan
        slow = np.asarray([np.nan if r["slowdown"] is None else r["slowdown"] for r in recs], dtype=float)
        a, b = axes[k]
        for ax in (a, b):
            if window[1] > window[0]:
                ax.axvspan(window[0], window[1] - 1, color="#f4c7c3", alpha=0.45, lw=0,
                           label="contention" if ax is a and k == 0 else None)
        if idx.size:
            # Keep the deadlines readable: latencies far above them are drawn as ^ on the top edge.
            finite = e2e[np.isfinite(e2e)]
            top = max(1.6 * float(np.max(dl)), float(np.percentile(finite, 97)) * 1.05 if finite.size else 0.0)
            clipped = np.isfinite(e2e) & (e2e > top)
            shown = np.where(clipped, np.nan, e2e)
            a.scatter(idx, dl, s=14, color="0.35", marker="_", lw=1.0, label="deadline")
            a.scatter(idx[met], shown[met], s=6, color="#2ca02c", label="latency (met)")
            a.scatter(idx[~met], shown[~met], s=9, color="#d62728", marker="x", label="latency (missed)")
            if clipped.any():
                a.scatter(idx[clipped], np.full(int(clipped.sum()), top * 0.985), s=12, color="#d62728", marker="^",
                          label=f"> {top:.3g} ms")
            a.set_ylim(0, top)
            b.scatter(idx, var, s=7, color=_color(name, k), label="variant")
        a.set_ylabel(f"{name}\nms")
        b.set_ylabel("variant (V#)")
        b.set_ylim(-0.5, nv - 0.5)
        b.set_yticks(range(nv))
        if np.isfinite(slow).any():
            tb = b.twinx()
            tb.plot(idx, slow, color="#9467bd", lw=0.9, label="slowdown")
            tb.set_ylabel("slowdown", color="#9467bd")
            tb.tick_params(axis="y", colors="#9467bd")
            if k == 0:
                tb.legend(loc="upper right", fontsize=7)
        if k == 0:
            a.legend(loc="upper right", fontsize=7, ncol=2)
            b.legend(loc="upper left", fontsize=7)
            a.set_title("deadline and end-to-end latency per request")
            b.set_title("chosen variant (by table latency) and the daemon's slowdown factor")
    for ax in axes[-1]:
        ax.set_xlabel("request")
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)
    return path


def render_markdown(ev: Evaluation, images: dict[str, str]) -> str:
    beside = " (goodput beside it: the same answers per second)" if ev.open_loop else ""
    w = ev.workload
    c = ev.contention
    a, z = ev.window
    h = ev.host
    lines = [
        "# edgekit policy comparison" + (" (in process)" if ev.transport == "inproc" else ""),
        "",
        f"- date: {ev.created}",
        f"- host: {h.cpu_model} ({h.cores} cores, {h.machine}, {h.os})",
        f"- bundle: `{ev.bundle}`, selected table: `{ev.table}`, profile: {ev.profile}",
        f"- workload: {w.count} requests per policy, deadlines `{w.deadline}` ms"
        + (" (auto: from floor + the fastest p95 to floor + 1.1 x the slowest p95)"
           if ev.deadline_spec == "auto" else "")
        + f", arrivals `{w.arrival}`, seed {w.seed}, {ev.warmup} unmeasured warm-up requests",
        f"- contention: {c.describe()}"
        + (f" ({c.what()} while requests {a}..{z - 1} were issued; achieved "
           f"slowdown {'-' if ev.achieved_slowdown is None else f'{ev.achieved_slowdown}x'})"
           if z > a else ""),
        "",
        "## Results",
        "",
        f"**{headline_line(ev)}**",
        "",
        comparison_table(ev, markdown=True),
        "",
        "On-time accuracy, the headline figure, is the share of all requests answered correctly and within "
        f"their deadline on the {ev.clock} clock{beside}. Accuracy is top-1 on the bundle's serving images over "
        "all requests (an unanswered or rejected request counts as wrong). A miss is a request not answered "
        + ("within its deadline on the daemon's clock (from when its first bytes reached the daemon's socket to "
           "the answer written), which is what deadline_ms means; end to end (as the load generator measured it "
           "over HTTP) is beside it." if ev.transport != "inproc" else
           "within its deadline on the application's clock (from the request's scheduled arrival to classify's "
           "return), which is what deadline_ms means in process; end to end is the same span seen by the caller.")
        + " Goodput is the answers that were correct and on time per second; in closed "
        "loop it is throughput, which favours the fastest model, so the table shows it for open-loop arrivals"
        " only.",
        "",
        "```",
        context_lines(ev).strip(),
        "```",
        "",
    ]
    for key, title in (("plane", "Accuracy-miss plane"), ("policies", "Accuracy and miss rate per policy"),
                       ("timeline", "Timeline")):
        if key in images:
            lines += [f"## {title}", "", f"![{title}]({images[key]})", ""]
    lines += ["## Variants", "", variant_legend(ev, markdown=True), ""]
    if ev.oracle is not None:
        o = ev.oracle
        lines += ["## Oracle", "", o.method, "",
                  f"Serving overhead added: {o.overhead_ms:.3f} ms end to end, "
                  f"{o.daemon_overhead_ms:.3f} ms on the {ev.clock} clock "
                  f"(medians; from the {o.overhead_source or 'no run'}).", ""]
        if o.choice:
            lines += [f"Choice: {oracle_choice(o)}.", ""]
        if o.by_floors:
            lines += [f"Charged the floors of {floors_line(o, ev.workload.closed)}.", ""]
        if o.server_check is not None:
            lines += [f"Its server model checked: {server_check_line(o.server_check, ev.clock)}.", ""]
    if ev.truncated:
        lines += [f"Stopped early by the duration limit: {', '.join(ev.truncated)}.", ""]
    return "\n".join(lines)


def write_report(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write policies.png, timeline.png and report.md into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if ev.policies:
        paths["plane"] = plot_plane(plane_data(ev), out / "plane.png", plane_title(ev), transport=ev.transport)
        paths["policies"] = plot_policies(ev, out / "policies.png")
        paths["timeline"] = plot_timeline(ev, out / "timeline.png")
    md = render_markdown(ev, {k: p.name for k, p in paths.items()})
    paths["report"] = atomic_write_text(out / "report.md", md)
    return paths
