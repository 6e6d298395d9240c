"""Offline selection (`edgekit select`): the monotonic (Pareto) subset of a device's latency table, within limits.

The paper (Chai and Kang, 2021) keeps, out of hundreds of CNNs, the subset whose
inference time and accuracy both strictly increase, so that at run time "the most
accurate variant that fits the time left" is a single search in a sorted array.
This module builds that subset from a measured latency table, in four steps:

1. **Pareto front.**  Rows are sorted by latency at the chosen quantile (``p95`` by
   default: the daemon predicts tail latency, so the subset is chosen on it too).
   A row is kept only if it is strictly more accurate than every faster row; of rows
   with equal latency only the most accurate survives.  Latency and accuracy therefore
   both strictly increase along the front.  A row's key is its ``variant``
   (``<artifact_id>@<setting>``), so one artifact run with two runtime settings is two
   independent candidates.

2. **Epsilon.**  Walking the front from the fastest, a variant is kept only if it adds
   at least ``epsilon`` accuracy over the last kept one (an epsilon-Pareto front: a
   variant that is slower but barely more accurate wastes a slot and memory).

2b. **Resolvable steps.**  Accuracy measured on a few thousand images resolves about a
   point, while neighbours on a front often differ by a fraction of one (the same net
   at dynamic range and at int8).  Each kept step must therefore pass a one-sided paired
   test (McNemar) against the last kept variant on the images both were measured on
   (the benchmark records which images each variant got right): with b images only the
   new one gets right and c only the old one, the step stays when
   (b - c) / sqrt(b + c) >= z at ``significance`` (0.05: z = 1.645; ``edge.tables.significance``).
   A variant whose gain the selection images cannot resolve is dropped.  The benchmark
   measures on one half of the bundle's evaluation images and a policy comparison serves
   the other half, so the accuracy served is not measured on the images that chose the front.

3. **Per-variant memory.**  A variant costs ``peak_rss_mb + size_bytes`` (the resident
   memory its loaded interpreter added while benchmarked, plus the file the daemon
   keeps mapped).  Variants that alone exceed the memory budget are dropped.

4. **Limits.**  When the front still has more than ``max_models`` variants, or their
   total memory exceeds ``memory_budget_mb``, we choose the subset that loses the least
   *expected accuracy over a deadline range*.  Deadlines D are taken uniform over
   ``[lo, hi]`` (``--deadline-range LO:HI`` describes the real workload; the default is
   from the fastest front variant's quantile latency to 1.5 x the slowest's: ending at
   the slowest would give the most accurate variant no deadline at all to win).  For a subset
   S = s_1 < ... < s_m (sorted by latency l, accuracies a), the daemon answers a
   deadline d with the most accurate member that fits, so

       E[acc](S) = 1/(hi - lo) * sum_j a_j * |[l_j, l_{j+1}) ∩ [lo, hi]|      (l_{m+1} = +inf)

   and a deadline shorter than l_1 scores 0 (a miss).  Each term depends only on a
   member and its successor, so the best subset is a longest-path dynamic program
   over the sorted front.  A state is (j, k): subsets whose most accurate member is j
   and that have k members; it keeps the Pareto set of (memory used, partial integral)
   pairs of such subsets (less memory and a larger integral dominate), each with a
   pointer to its predecessor state.  Transitions come from every faster member i.
   Memory sums are exact, so the chosen subset never exceeds the budget; when a state
   would keep more than ``MEMORY_STEPS`` (= M) pairs they are thinned to the best one
   per memory bucket of budget/M, which can cost optimality but never the budget.
   With N front variants and K = max models this is O(N^2 * K * M); the memory
   dimension collapses to one pair per state when the budget does not bind, and K to
   N when the count does not.  The fastest variant is not forced in, but it almost
   always wins because deadlines below it score zero.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from operator import attrgetter, methodcaller
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from edge.core.errors import UsageError
from edge.core.textable import format_table
from edge.tables.significance import significance_filter
from edge.tables.table import QUANTILES, LatencyRow, LatencyTable, SelectedTable, SelectionParams

T = TypeVar("T")

MEMORY_STEPS = 1000  # most (memory, value) pairs a DP state keeps before thinning by memory bucket
FEW_VARIANTS = 3  # a selected table with fewer leaves the run-time selector little or nothing to choose between
DEFAULT_RANGE_STRETCH = 1.5  # default deadline range ends at this x the slowest variant's latency


def row_memory_mb(row: LatencyRow) -> float:
    """What a loaded variant costs the board: its measured RSS growth plus its file."""
    return float(row.peak_rss_mb) + float(row.size_bytes) / (1024.0 * 1024.0)


# ----------------------------------------------------------------------------- selection


def pareto_front(
    items: Iterable[T],
    latency: str | Callable[[T], float] = "p95",
    accuracy: Callable[[T], float] | None = None,
) -> list[T]:
    """The items whose latency and accuracy both strictly increase, fastest first.

    An item is kept only when it is more accurate than every faster one; of items with equal
    latency only the most accurate can be (on a full tie the first: table rows by variant name).
    ``latency`` is a quantile of table rows (``"p95"``) or a function of an item; ``accuracy``
    defaults to the item's ``accuracy``. Items whose latency is not a positive number or whose
    accuracy is not finite are left out.
    """
    lat: Callable[[T], float]
    if isinstance(latency, str):
        items = sorted(items, key=attrgetter("variant"))
        lat = methodcaller("latency", latency)
    else:
        lat = latency
    acc: Callable[[T], float] = accuracy or attrgetter("accuracy")
    usable = [(float(lat(it)), float(acc(it)), it) for it in items]
    usable = [u for u in usable if math.isfinite(u[0]) and u[0] > 0 and math.isfinite(u[1])]
    usable.sort(key=lambda u: (u[0], -u[1]))  # stable: a full tie keeps the order above
    front: list[T] = []
    best = -math.inf
    for _, a, it in usable:
        if a > best:
            front.append(it)
            best = a
    return front


def epsilon_filter(front: Sequence[LatencyRow], epsilon: float) -> list[LatencyRow]:
    """Keep the fastest, then each variant adding at least ``epsilon`` accuracy over the last kept."""
    if epsilon <= 0 or not front:
        return list(front)
    kept = [front[0]]
    for r in front[1:]:
        if r.accuracy - kept[-1].accuracy >= epsilon - 1e-12:
            kept.append(r)
    return kept


def expected_accuracy(
    rows: Sequence[LatencyRow], quantile: str, deadline_range: tuple[float, float]
) -> float:
    """Mean accuracy over deadlines uniform in ``deadline_range`` when each deadline is answered by the
    most accurate member of ``rows`` whose quantile latency fits (0 when none fits)."""
    lo, hi = _norm_range(deadline_range)
    lat = [r.latency(quantile) for r in rows]
    order = np.argsort(lat, kind="stable")
    lat = [lat[i] for i in order]
    acc = [rows[i].accuracy for i in order]
    return sum(acc[j] * _seg(lat[j], lat[j + 1] if j + 1 < len(lat) else math.inf, lo, hi) for j in range(len(lat))) / (
        hi - lo
    )


def default_deadline_range(rows: Sequence[LatencyRow], quantile: str = "p95") -> tuple[float, float]:
    """From the fastest variant's latency to 1.5 x the slowest's."""
    lat = [r.latency(quantile) for r in rows]
    return (min(lat), DEFAULT_RANGE_STRETCH * max(lat))


def _norm_range(r: tuple[float, float]) -> tuple[float, float]:
    lo, hi = float(r[0]), float(r[1])
    if hi - lo < 1e-9:  # a single deadline: score the accuracy at that point
        hi = lo + 1e-9
    return lo, hi


def _seg(a: float, b: float, lo: float, hi: float) -> float:
    """Length of [a, b) ∩ [lo, hi]."""
    return max(0.0, min(b, hi) - max(a, lo))


def _prune(pairs: list[tuple[float, float, int, int]], unit: float) -> list[tuple[float, float, int, int]]:
    """Keep the (memory, value, ...) pairs no other pair beats on both; thin to one per memory bucket if many."""
    pairs.sort(key=lambda p: (p[0], -p[1]))
    out: list[tuple[float, float, int, int]] = []
    best = -math.inf
    for p in pairs:
        if p[1] > best + 1e-15:
            out.append(p)
            best = p[1]
    if len(out) > MEMORY_STEPS and unit > 0:
        # Within a bucket the last pair has the largest value (values rise with memory here).
        thinned: dict[int, tuple[float, float, int, int]] = {}
        for p in out:
            thinned[int(p[0] / unit)] = p
        out = [thinned[b] for b in sorted(thinned)]
    return out


def _dp_subset(
    front: Sequence[LatencyRow],
    quantile: str,
    max_models: int | None,
    memory_budget_mb: float | None,
    deadline_range: tuple[float, float],
) -> list[int]:
    """Indices of the subset of ``front`` (sorted) maximising expected accuracy within the limits."""
    n = len(front)
    lo, hi = _norm_range(deadline_range)
    lat = [r.latency(quantile) for r in front]
    acc = [r.accuracy for r in front]
    k_max = n if max_models is None else max(1, min(int(max_models), n))
    limit = math.inf if memory_budget_mb is None else float(memory_budget_mb)
    binds = sum(row_memory_mb(r) for r in front) > limit
    budget = limit * (1 + 1e-9) if binds else math.inf  # 1e-9: float sums like 0.1 + 0.2
    unit = limit / MEMORY_STEPS if binds else 0.0
    mem = [row_memory_mb(r) if binds else 0.0 for r in front]
    # states[j][k]: pairs (memory, partial integral, predecessor j, index of the pair in states[pj][k-1])
    states: list[list[list[tuple[float, float, int, int]]]] = [[[] for _ in range(k_max)] for _ in range(n)]
    for j in range(n):
        if mem[j] > budget:
            continue
        states[j][0] = [(mem[j], 0.0, -1, -1)]
        for k in range(1, k_max):
            cand: list[tuple[float, float, int, int]] = []
            for i in range(j):
                prev = states[i][k - 1]
                if not prev:
                    continue
                gain = acc[i] * _seg(lat[i], lat[j], lo, hi)
                for t, (m, v, _, _) in enumerate(prev):
                    mm = m + mem[j]
                    if mm <= budget:
                        cand.append((mm, v + gain, i, t))
            states[j][k] = _prune(cand, unit) if cand else []
    best_v, best_at = -math.inf, None
    for j in range(n):
        tail = acc[j] * _seg(lat[j], math.inf, lo, hi)
        for k in range(k_max):
            for t, (m, v, _, _) in enumerate(states[j][k]):
                # Ties (rare with measured floats) go to the first found: for one last member, fewer members.
                if v + tail > best_v + 1e-12:
                    best_v, best_at = v + tail, (j, k, t)
    if best_at is None:
        return []
    chosen = []
    j, k, t = best_at
    while j >= 0:
        chosen.append(j)
        _, _, pj, pt = states[j][k][t]
        j, k, t = pj, k - 1, pt
    return sorted(chosen)


def select_subset(
    table: LatencyTable,
    quantile: str = "p95",
    epsilon: float = 0.0,
    max_models: int | None = None,
    memory_budget_mb: float | None = None,
    deadline_range: tuple[float, float] | None = None,
    source_table: str = "",
    significance: float = 0.05,
    models: Sequence[str] = (),
) -> SelectedTable:
    """The monotonic subset of ``table`` (see the module docstring for the method).

    ``models``: shell-style patterns of model ids (``mobilenet*``); when given, only their rows are candidates.
    """
    if quantile not in QUANTILES:
        raise UsageError(f"unknown latency quantile '{quantile}'; available: {list(QUANTILES)}")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise UsageError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if max_models is not None and max_models < 1:
        raise UsageError(f"max models must be at least 1, got {max_models}")
    if memory_budget_mb is not None and not (memory_budget_mb > 0 and math.isfinite(memory_budget_mb)):
        raise UsageError(f"memory budget must be a positive number of MB, got {memory_budget_mb}")
    if deadline_range is not None:
        lo, hi = float(deadline_range[0]), float(deadline_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise UsageError(f"deadline range must be LO:HI with 0 <= LO <= HI (ms), got {deadline_range}")
        deadline_range = (lo, hi)
    if not table.rows:
        raise UsageError("the latency table has no rows; benchmark the bundle first with 'edgekit bench'")

    dropped: dict[str, str] = {}
    rows: Sequence[LatencyRow] = table.rows
    if models:
        rows = [r for r in table.rows if any(fnmatch.fnmatchcase(r.model_id, m) for m in models)]
        if not rows:
            raise UsageError(f"--models {' '.join(models)} matches no model of the table; its models: "
                             f"{sorted({r.model_id for r in table.rows})}")
        chosen = {r.variant for r in rows}
        for r in table.rows:
            if r.variant not in chosen:
                dropped[r.variant] = "not among --models"
    front = pareto_front(rows, quantile)
    on_front = {r.variant for r in front}
    for r in rows:
        if r.variant not in on_front:
            dropped[r.variant] = "dominated (a faster variant is at least as accurate)"
    if not front:
        raise UsageError(f"no row of the table has a positive finite {quantile} latency and a finite accuracy")
    method = "pareto"
    eps_front = epsilon_filter(front, epsilon)
    if len(eps_front) < len(front):
        method = "epsilon-pareto"
        kept = {r.variant for r in eps_front}
        for r in front:
            if r.variant not in kept:
                dropped[r.variant] = f"adds less than epsilon={epsilon} accuracy"
    if not 0 <= significance < 0.5:
        raise UsageError(f"significance must be in [0, 0.5), got {significance}")
    sig_front, why = significance_filter(eps_front, significance)
    if len(sig_front) < len(eps_front):
        method = "paired-pareto" if method == "pareto" else method + "+paired"
        dropped.update(why)
        eps_front = sig_front
    front_size = len(eps_front)
    cands = eps_front
    if memory_budget_mb is not None:
        fits = [r for r in cands if row_memory_mb(r) <= memory_budget_mb]
        for r in cands:
            if row_memory_mb(r) > memory_budget_mb:
                dropped[r.variant] = f"needs {row_memory_mb(r):.1f} MB alone, over the {memory_budget_mb:g} MB budget"
        cands = fits
        if not cands:
            raise UsageError(
                f"no variant fits the {memory_budget_mb:g} MB memory budget alone; raise --memory-budget-mb "
                "or bundle smaller models"
            )
    drange = deadline_range or default_deadline_range(cands, quantile)
    too_many = max_models is not None and len(cands) > max_models
    too_big = memory_budget_mb is not None and sum(row_memory_mb(r) for r in cands) > memory_budget_mb
    if too_many or too_big:
        method = "expected-accuracy-dp"
        idx = _dp_subset(cands, quantile, max_models, memory_budget_mb, drange)
        keep = [cands[i] for i in idx]
        kept = {r.variant for r in keep}
        limits = []
        if too_many:
            limits.append(f"max {max_models} models")
        if too_big:
            limits.append(f"{memory_budget_mb:g} MB budget")
        for r in cands:
            if r.variant not in kept:
                dropped[r.variant] = "left out to meet the " + " and ".join(limits) + " (least expected-accuracy loss)"
        cands = keep
    params = SelectionParams(
        quantile=quantile,
        epsilon=float(epsilon),
        significance=float(significance),
        max_models=max_models,
        memory_budget_mb=None if memory_budget_mb is None else float(memory_budget_mb),
        source_table=source_table,
        method=method,
        deadline_range_ms=(float(drange[0]), float(drange[1])),
        expected_accuracy=round(expected_accuracy(cands, quantile, drange), 6) if cands else None,
        front_size=front_size,
        candidates=len(table.rows),
        dropped=dropped,
    )
    return SelectedTable(header=table.header, rows=tuple(cands), params=params, version=table.version)


# ----------------------------------------------------------------------------- CLI


def _parse_range(s: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in s.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI in milliseconds (e.g. 2:40), got {s!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise argparse.ArgumentTypeError(f"deadline range needs 0 <= LO <= HI, got {s!r}")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", metavar="TABLE", help="latency table written by 'edgekit bench'")
    p.add_argument("--quantile", default="p95", choices=QUANTILES, help="latency the subset is chosen on (default p95)")
    p.add_argument("--epsilon", type=float, default=0.0, help="drop variants adding less than this accuracy (0..1)")
    p.add_argument("--significance", type=float, default=0.05,
                   help="keep a step only if its accuracy gain passes a one-sided paired test at this level on the "
                        "benchmark's images (default 0.05; 0 keeps every Pareto step)")
    p.add_argument("--max-models", type=int, default=None, metavar="K", help="keep at most K variants")
    p.add_argument("--models", nargs="+", default=(), metavar="PATTERN",
                   help="choose among these models only: model ids or shell patterns ('mobilenet*'); default all")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--memory-budget-mb", type=float, default=None, metavar="M",
                   help="total memory of the kept variants")
    g.add_argument("--profile", default=None, metavar="P",
                   help="device profile: use its memory budget and check the table was measured with it")
    p.add_argument("--deadline-range", type=_parse_range, default=None, metavar="LO:HI",
                   help="deadlines (ms) the limits optimise for (default: fastest variant to 1.5 x the slowest)")
    p.add_argument("--out", required=True, metavar="SELECTED.json", help="where to write the selected table")


def _pct_or_dash(x) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}%"


def _range_ms(r) -> str:
    if not r:
        return "-"
    lo, hi = (float(v) for v in r)
    return f"{lo:.4g}-{hi:.4g} ms"


def format_summary(sel: SelectedTable) -> str:
    q = sel.params.quantile
    lines = [format_table(["variant", q + "_ms", "accuracy", "mem_mb"],
                          [[r.variant, f"{r.latency(q):.3f}", f"{r.accuracy:.4f}", f"{row_memory_mb(r):.1f}"]
                           for r in sel.rows], align="lrrr", sep=" ")]
    p = sel.params
    lines.append(
        f"kept {len(sel.rows)} of {p.candidates} rows (front {p.front_size}, method {p.method}); "
        f"expected accuracy {_pct_or_dash(p.expected_accuracy)} over deadlines uniform in "
        f"{_range_ms(p.deadline_range_ms)}"
    )
    return "\n".join(lines)


def few_variants_warning(sel: SelectedTable) -> str:
    """Why the selected table has fewer than FEW_VARIANTS variants and what to try; "" when it has enough."""
    n, p = len(sel.rows), sel.params
    if n >= FEW_VARIANTS:
        return ""
    reasons = list(p.dropped.values())
    dominated = sum(1 for w in reasons if w.startswith("dominated"))
    unresolved = sum(1 for w in reasons if w.startswith("its accuracy gain"))
    eps = sum(1 for w in reasons if w.startswith("adds less than epsilon"))
    limits = sum(1 for w in reasons if w.startswith(("left out", "needs ")))
    why = []
    if dominated:
        why.append(f"{dominated} of {p.candidates} rows are dominated (a faster variant is at least as accurate)")
    if unresolved:
        images = sel.rows[0].eval_count if sel.rows else 0
        why.append(f"{unresolved} more {'were' if unresolved != 1 else 'was'} dropped because the paired test at "
                   f"--significance {p.significance:g} cannot tell their accuracy gain from noise on {images:,} images")
    if eps:
        why.append(f"{eps} add{'s' if eps == 1 else ''} less than --epsilon {p.epsilon:g}")
    if limits:
        why.append(f"{limits} left out by --max-models or the memory budget")
    what = "the runtime serves that variant to every request: there is nothing to adapt between" if n == 1 else \
        "the runtime can only choose between these two"
    tries = ["more variants: a larger --sample at 'edgekit train' (or the demo family: --family demo)"]
    if unresolved:
        tries.append(f"a less strict paired test: --significance {max(0.2, 2 * p.significance):g} here "
                     "(0 turns it off and keeps every Pareto step)")
    elif p.significance > 0:
        why.append(f"the paired test (--significance {p.significance:g}) dropped none, so loosening it "
                   "would not help")
    if not why:
        why.append(f"the table has only {p.candidates} row{'s' if p.candidates != 1 else ''}")
    if limits:
        tries.append("a larger --max-models or --memory-budget-mb")
    return (f"warning: only {n} variant{'s' if n != 1 else ''} kept, so {what}. Why: " + "; ".join(why)
            + ". Try " + "; or ".join(tries) + ".")


def run(args: argparse.Namespace) -> int:
    budget = args.memory_budget_mb
    profile_name = None
    if args.profile:
        from device_profiles import load_profile

        prof = load_profile(args.profile)
        budget = prof.memory_budget_mb
        profile_name = prof.name
    table = LatencyTable.load(args.table, profile=profile_name)
    sel = select_subset(
        table,
        quantile=args.quantile,
        epsilon=args.epsilon,
        max_models=args.max_models,
        memory_budget_mb=budget,
        deadline_range=args.deadline_range,
        source_table=str(args.table),
        significance=args.significance,
        models=tuple(args.models),
    )
    sel.save(args.out)
    print(format_summary(sel))
    warning = few_variants_warning(sel)
    if warning:
        sys.stdout.flush()
        print(warning, file=sys.stderr, flush=True)
    print(f"wrote {args.out}")
    bundle = sel.header.bundle or "BUNDLE"
    name = profile_name or sel.header.profile
    print(f"next: edgekit serve {bundle} --table {args.out}{f' --profile {name}' if name else ''}  (or embed it: "
          "edge.runtime.classifier.AdaptiveClassifier.open)")
    sys.stdout.flush()
    return 0
