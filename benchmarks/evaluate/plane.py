"""The accuracy-miss plane of a policy comparison: each policy's miss rate against the accuracy of its answers.

x is the miss rate on the daemon's clock (the primary one; end to end where the daemon said nothing), y the
share of the answers that were correct (a rejected request has no answer). On it:

- every selected variant served alone, as a point: measured where the comparison served it by the daemon
  (``static:<variant>``, ``best-static``, ``fastest``, ``most-accurate``; ``--statics all`` serves each),
  else predicted from the oracle pass (each variant's measured times on every request, the serving floor
  added: ``benchmarks.evaluate.oracle.static_miss_rates``; its answers are the pass's);
- adaptive as a curve traced by its own knob, the latency quantile it predicts with (one daemon run per
  quantile: ``adaptive`` at the daemon's default, ``adaptive@p50`` ... with ``--plane``);
- mean-table, quantile-table and the oracle as points.

``plane_data`` reads an ``Evaluation``; the plot is ``benchmarks.evaluate.report.plot_plane``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from edge.tables.table import QUANTILES

# Adaptive's curve with --plane. "max" (the slowest of the table's timed runs) is the knob's most cautious end,
# the one that reaches toward the fastest variant's miss rate (added in stop 44: at p99 adaptive's curve stopped
# short of V0's and V1's misses in process).
PLANE_QUANTILES = ("p50", "p90", "p95", "p99", "max")
POINT_POLICIES = ("mean-table", "quantile-table", "oracle")
# Daemon policies that serve one fixed variant: (served_as or its prefix) -> which row.
FIXED = {"fastest": 0, "most-accurate": -1}


@dataclass(frozen=True)
class PlanePoint:
    """One point of the plane (rates in [0, 1]); ``source`` says where it comes from."""

    name: str  # static: the variant's label (V0...); adaptive: the quantile; else the policy
    miss_rate: float
    accuracy: float
    source: str  # the policy that was measured, or "oracle pass" for a predicted static point

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "miss_rate": self.miss_rate, "accuracy": self.accuracy, "source": self.source}


@dataclass(frozen=True)
class Plane:
    """The plane's data: the statics in latency order, adaptive's curve in quantile order, the other points."""

    statics: tuple[PlanePoint, ...]
    adaptive: tuple[PlanePoint, ...]
    points: tuple[PlanePoint, ...]

    def to_json(self) -> dict[str, Any]:
        return {"x": "miss rate (daemon clock)", "y": "accuracy of the answers",
                "statics": [p.to_json() for p in self.statics], "adaptive": [p.to_json() for p in self.adaptive],
                "points": [p.to_json() for p in self.points]}


def adaptive_name(quantile: str) -> str:
    """The policy name of adaptive run at ``quantile`` for the plane's curve."""
    return f"adaptive@{quantile}"


def _xy(summary: Mapping[str, Any]) -> tuple[float, float] | None:
    miss = summary.get("server_miss_rate")
    if miss is None:
        miss = summary.get("miss_rate")
    acc = summary.get("answer_accuracy")
    if miss is None or acc is None:
        return None
    return float(miss), float(acc)


def _static_row(served_as: str, variants: list[str]) -> int | None:
    if served_as.startswith("static:"):
        v = served_as[len("static:"):]
        return variants.index(v) if v in variants else None
    if served_as in FIXED and variants:
        return FIXED[served_as] % len(variants)
    return None


def plane_data(ev: Any) -> Plane:
    """The plane of ``ev`` (a ``benchmarks.evaluate.results.Evaluation``) from the policies it ran."""
    variants = [r.variant for r in ev.rows]
    labels = ev.labels
    measured: dict[int, PlanePoint] = {}
    adaptive: list[tuple[int, PlanePoint]] = []
    points: list[PlanePoint] = []
    default_q = ev.selection.get("quantile")
    for name, pol in ev.policies.items():
        xy = _xy(pol.summary)
        if xy is None:
            continue
        served = pol.daemon.served_as if pol.daemon is not None else name
        j = _static_row(served, variants)
        if j is not None:
            measured.setdefault(j, PlanePoint(labels[variants[j]], *xy, source=name))
        elif served == "adaptive":
            q = (pol.daemon.quantile if pol.daemon is not None else None) or default_q or "p95"
            rank = QUANTILES.index(q) if q in QUANTILES else len(QUANTILES)
            adaptive.append((rank, PlanePoint(q, *xy, source=name)))
        elif name in POINT_POLICIES or served in POINT_POLICIES:
            points.append(PlanePoint(name, *xy, source=name))
    statics = []
    predicted = ev.best_static.predicted_miss_rates if ev.best_static is not None else {}
    acc_pass = ev.oracle.variant_accuracy_on_workload if ev.oracle is not None else {}
    for j, v in enumerate(variants):
        if j in measured:
            statics.append(measured[j])
        elif labels[v] in predicted and v in acc_pass:
            statics.append(PlanePoint(labels[v], float(predicted[labels[v]]), float(acc_pass[v]), "oracle pass"))
    adaptive.sort(key=lambda rp: rp[0])
    return Plane(tuple(statics), tuple(p for _, p in adaptive), tuple(points))


def accuracy_at(curve: tuple[PlanePoint, ...] | list[PlanePoint], miss_rate: float) -> float | None:
    """Adaptive's accuracy at ``miss_rate`` on its curve, by linear interpolation between its points ordered by
    miss rate; None outside the curve's range (one point: only at its own miss rate)."""
    pts = sorted((p.miss_rate, p.accuracy) for p in curve)
    if not pts or not pts[0][0] <= miss_rate <= pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= miss_rate <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (miss_rate - x0) / (x1 - x0)
    return pts[0][1]
