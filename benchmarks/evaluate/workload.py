"""Seeded, reproducible deadline workloads: which images, with which deadlines, arriving when."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.atomic import atomic_write_json, read_json
from edge.core.errors import EdgekitError

# Hard bounds so a typo cannot start an hour-long run or allocate a huge schedule.
MAX_COUNT = 100_000
MAX_DEADLINE_MS = 600_000.0
# In process a microsecond front serves over 10,000 requests/s: the mobile family's most accurate variant
# served 11,474/s closed loop, so its 1.2x overload asked for 13,768/s.
MAX_RATE = 100_000.0


class WorkloadError(EdgekitError, ValueError):
    """A deadline or arrival spec (or a trace file) is malformed."""


def _number(text: str, what: str, spec: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise WorkloadError(f"{what} in '{spec}' is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise WorkloadError(f"{what} in '{spec}' must be finite, got {text!r}")
    return v


@dataclass(frozen=True)
class DeadlineSpec:
    """Relative deadlines in milliseconds: ``fixed:MS``, ``uniform:LO:HI`` or ``trace:FILE``."""

    kind: str  # fixed | uniform | trace
    lo: float = 0.0
    hi: float = 0.0
    trace: tuple[float, ...] = ()
    source: str = ""  # the trace file, for the record

    @classmethod
    def parse(cls, spec: str) -> "DeadlineSpec":
        s = str(spec).strip()
        kind, _, rest = s.partition(":")
        if kind == "fixed":
            v = _number(rest, "deadline", s)
            _check_deadline(v, s)
            return cls("fixed", v, v)
        if kind == "uniform":
            parts = rest.split(":")
            if len(parts) != 2:
                raise WorkloadError(f"bad deadline spec '{s}': expected uniform:LO:HI in ms, e.g. uniform:2:20")
            lo, hi = (_number(p, "bound", s) for p in parts)
            _check_deadline(lo, s)
            _check_deadline(hi, s)
            if lo > hi:
                raise WorkloadError(f"bad deadline spec '{s}': LO ({lo:g}) is above HI ({hi:g}); "
                                    f"write uniform:{hi:g}:{lo:g}")
            return cls("uniform", lo, hi)
        if kind == "trace":
            if not rest:
                raise WorkloadError(f"bad deadline spec '{s}': expected trace:FILE")
            values = load_trace(rest)
            return cls("trace", min(values), max(values), tuple(values), source=str(rest))
        raise WorkloadError(
            f"unknown deadline spec '{s}'; use fixed:MS, uniform:LO:HI or trace:FILE (deadlines in ms, relative)"
        )

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.lo:g}"
        if self.kind == "uniform":
            return f"uniform:{self.lo:g}:{self.hi:g}"
        return f"trace:{self.source}"

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, self.lo, dtype=np.float64)
        if self.kind == "uniform":
            return rng.uniform(self.lo, self.hi, size=n).astype(np.float64)
        # A trace is replayed in order and repeated when the workload is longer than it.
        t = np.asarray(self.trace, dtype=np.float64)
        return np.resize(t, n)


def _check_deadline(v: float, spec: str) -> None:
    if v <= 0:
        raise WorkloadError(f"bad deadline spec '{spec}': deadlines must be > 0 ms, got {v:g}")
    if v > MAX_DEADLINE_MS:
        raise WorkloadError(f"bad deadline spec '{spec}': {v:g} ms is over the {MAX_DEADLINE_MS:g} ms limit")


def load_trace(path: str | Path) -> list[float]:
    """A deadline trace: one deadline in ms per line ('#' comments and blank lines ignored),
    or the first column of a CSV line, or a JSON list of numbers."""
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(f"deadline trace file not found: {p} (one deadline in ms per line)")
    text = p.read_text(encoding="utf-8", errors="replace")
    values: list[float] = []
    if text.lstrip().startswith("["):
        try:
            data = read_json(p, what="deadline trace")
        except (ValueError, FileNotFoundError) as exc:
            raise WorkloadError(str(exc)) from None
        if not isinstance(data, list):
            raise WorkloadError(f"deadline trace {p} must be a JSON list of numbers")
        for i, v in enumerate(data):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise WorkloadError(f"deadline trace {p}: item {i} is not a number: {v!r}")
            values.append(float(v))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            first = line.split(",")[0].strip()
            try:
                values.append(float(first))
            except ValueError:
                raise WorkloadError(f"deadline trace {p}: line {lineno} is not a number: {first!r}") from None
    if not values:
        raise WorkloadError(f"deadline trace {p} has no deadlines (one deadline in ms per line)")
    for i, v in enumerate(values):
        if not math.isfinite(v) or v <= 0:
            raise WorkloadError(f"deadline trace {p}: deadline #{i + 1} must be a finite number > 0 ms, got {v!r}")
        if v > MAX_DEADLINE_MS:
            raise WorkloadError(f"deadline trace {p}: deadline #{i + 1} ({v:g} ms) is over the "
                                f"{MAX_DEADLINE_MS:g} ms limit")
    return values


@dataclass(frozen=True)
class ArrivalSpec:
    """``closed`` (next request when the last one is answered, like LoadGen's SingleStream)
    or ``poisson:RATE`` (requests per second, independent of answers, like LoadGen's Server)."""

    kind: str  # closed | poisson
    rate: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "ArrivalSpec":
        s = str(spec).strip()
        if s == "closed":
            return cls("closed")
        kind, _, rest = s.partition(":")
        if kind == "poisson":
            if not rest:
                raise WorkloadError(f"bad arrival spec '{s}': expected poisson:RATE (requests per second)")
            rate = _number(rest, "rate", s)
            if rate <= 0:
                raise WorkloadError(f"bad arrival spec '{s}': the rate must be > 0 requests per second")
            if rate > MAX_RATE:
                raise WorkloadError(f"bad arrival spec '{s}': {rate:g}/s is over the {MAX_RATE:g}/s limit")
            return cls("poisson", rate)
        raise WorkloadError(f"unknown arrival spec '{s}'; use closed or poisson:RATE (requests per second)")

    def describe(self) -> str:
        return "closed" if self.kind == "closed" else f"poisson:{self.rate:g}"


@dataclass(frozen=True)
class Workload:
    """The same requests for every policy: image index, deadline and (Poisson) arrival time each.

    Images, deadlines and arrivals come from three independent streams of one seed, so
    changing the arrival process does not change which images or deadlines are drawn.
    """

    seed: int
    deadline: str
    arrival: str
    image_indices: np.ndarray  # int64 (count,), indices into the bundle's eval set
    deadlines_ms: np.ndarray  # float64 (count,)
    arrivals_s: np.ndarray | None  # float64 (count,), offsets from the start; None in closed loop
    n_images: int  # size of the eval set the indices point into

    @property
    def count(self) -> int:
        return int(self.image_indices.shape[0])

    @property
    def closed(self) -> bool:
        return self.arrivals_s is None

    def head(self, n: int) -> "Workload":
        """The first ``n`` requests (a duration bound cuts a run short this way)."""
        return Workload(
            self.seed,
            self.deadline,
            self.arrival,
            self.image_indices[:n],
            self.deadlines_ms[:n],
            None if self.arrivals_s is None else self.arrivals_s[:n],
            self.n_images,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "deadline": self.deadline,
            "arrival": self.arrival,
            "count": self.count,
            "n_images": self.n_images,
            "image_indices": [int(i) for i in self.image_indices],
            "deadlines_ms": [round(float(d), 4) for d in self.deadlines_ms],
            "arrivals_s": None if self.arrivals_s is None else [round(float(a), 6) for a in self.arrivals_s],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Workload":
        try:
            arr = d.get("arrivals_s")
            return cls(
                seed=int(d["seed"]),
                deadline=str(d["deadline"]),
                arrival=str(d["arrival"]),
                image_indices=np.asarray(d["image_indices"], dtype=np.int64),
                deadlines_ms=np.asarray(d["deadlines_ms"], dtype=np.float64),
                arrivals_s=None if arr is None else np.asarray(arr, dtype=np.float64),
                n_images=int(d["n_images"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(f"workload record is malformed ({exc!r})") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def draw_images(n_images: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices in a random order without repeats until every image has been used once."""
    out = []
    left = count
    while left > 0:
        perm = rng.permutation(n_images)
        out.append(perm[:left])
        left -= perm.shape[0]
    return np.concatenate(out).astype(np.int64)


def poisson_arrivals(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival offsets in seconds of a Poisson process at ``rate`` per second (first at 0)."""
    gaps = rng.exponential(1.0 / rate, size=count)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def make_workload(
    n_images: int,
    count: int,
    deadline: str | DeadlineSpec,
    arrival: str | ArrivalSpec = "closed",
    seed: int = 0,
) -> Workload:
    """Draw ``count`` requests over an eval set of ``n_images`` images; same seed, same workload."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise WorkloadError(f"the request count must be a positive integer, got {count!r}")
    if count > MAX_COUNT:
        raise WorkloadError(f"the request count {count} is over the {MAX_COUNT} limit")
    if n_images < 1:
        raise WorkloadError("the evaluation set is empty: rebuild the bundle with an eval set")
    dspec = deadline if isinstance(deadline, DeadlineSpec) else DeadlineSpec.parse(deadline)
    aspec = arrival if isinstance(arrival, ArrivalSpec) else ArrivalSpec.parse(arrival)
    s_img, s_dl, s_arr = np.random.SeedSequence(int(seed)).spawn(3)
    images = draw_images(n_images, int(count), np.random.default_rng(s_img))
    deadlines = dspec.draw(int(count), np.random.default_rng(s_dl))
    arrivals = None
    if aspec.kind == "poisson":
        arrivals = poisson_arrivals(int(count), aspec.rate, np.random.default_rng(s_arr))
    return Workload(int(seed), dspec.describe(), aspec.describe(), images, deadlines, arrivals, int(n_images))
