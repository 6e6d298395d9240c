"""Per-device latency tables (JSON + CSV): a device header and one measured row per artifact x runtime setting."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from edge.core.atomic import atomic_write_json, atomic_write_text, read_json
from edge.core.errors import EdgekitError, UsageError
from edge.tables.json_fields import SAFE_NAME, assert_checkable, checked_fields, json_type, refuse_unknown

TABLE_VERSION = 1
QUANTILES = ("mean", "p50", "p90", "p95", "p99", "max")
KINDS = ("latency", "selected")
MAX_TABLE_BYTES = 16 << 20  # a table of thousands of variants is a few MB
REST_GAP_MS = 10.0  # idle time before each run at rest (edgekit bench) and from which serving counts a request at rest
GAP_MS = 0.5  # idle time before each run at a request's cadence (edgekit bench: gap_p50_ms), a client's round trip
IDLE_FROM_MS = 0.1  # from this idle time (to REST_GAP_MS) serving predicts a run at the cadence (gap_p50_ms)
MAX_TABLE_ITEMS = 500_000  # JSON values (commas + brackets) a table may hold (~17k rows): bounds its parsed memory
REGENERATE = {
    "latency": "re-run 'edgekit bench' to regenerate it",
    "selected": "re-run 'edgekit select' to regenerate it",
}
PASS_INSTEAD = {
    "latency": "pass the latency table JSON file written by 'edgekit bench'",
    "selected": "pass the selected table JSON file written by 'edgekit select'",
}


class TableError(EdgekitError, ValueError):
    """A latency or selected table is missing, truncated, malformed or for another device."""


@dataclass(frozen=True)
class DeviceHeader:
    profile: str
    cpu_model: str = ""
    cores: int = 0
    governor: str = ""
    os: str = ""
    machine: str = ""
    python: str = ""
    runtime_versions: dict[str, str] = field(default_factory=dict)
    date: str = ""  # ISO 8601, UTC
    bundle: str = ""  # bundle folder or archive it measured
    bundle_sha256: str = ""  # sha256 of the bundle's manifest.json
    settings: dict[str, Any] = field(default_factory=dict)  # min runs, min seconds, warm-up...
    # How the measuring host is not what the profile describes (device_profiles.host_mismatch, joined
    # by "; "): the rows are then that host's times with the profile's settings. "" when it fits.
    host_mismatch: str = ""


@dataclass(frozen=True)
class LatencyTimes:
    """Summary of a variant's timed runs, in milliseconds (a table row's timing fields, a benchmark's statistics)."""

    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def latency(self, quantile: str) -> float:
        if quantile not in QUANTILES:
            raise UsageError(f"unknown latency quantile '{quantile}'; available: {list(QUANTILES)}")
        return float(getattr(self, f"{quantile}_ms"))

    def timings(self) -> dict[str, float]:
        """The timing fields by name, as LatencyRow names them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LatencyTimes)}


@dataclass(frozen=True)
class _RowHead:
    """LatencyRow's leading fields. A base class only so that a row's fields keep their order
    (these, LatencyTimes's, then the rest): it is the key order of the JSON and the CSV columns."""

    variant: str  # "<artifact_id>@<setting>", the key used by selection and serving
    artifact_id: str
    model_id: str
    format: str
    precision: str
    setting: str
    backend: str
    provider: str  # what actually ran it
    threads: int
    accuracy: float  # top-1 on the bundle's evaluation set, measured here
    eval_count: int
    samples: int


@dataclass(frozen=True)
class LatencyRow(LatencyTimes, _RowHead):
    """One artifact measured with one runtime setting on this device. Times in milliseconds."""

    load_ms: float
    first_inference_ms: float
    preprocess_ms: float
    peak_rss_mb: float  # resident memory the loaded artifact added
    size_bytes: int
    params: int = 0
    macs: int = 0
    # Median invoke time at rest: single runs, each after REST_GAP_MS idle, as a request that finds the
    # runtime idle pays (cold caches, runtime threads asleep); 0 when not measured (older tables).
    rest_p50_ms: float = 0.0
    # Which of the eval_count images it got right: base64 of numpy.packbits (for the paired test
    # that decides whether a more accurate variant is really more accurate); "" when not recorded.
    correct: str = ""
    # A variant at another input size than the bundle's images: the mean time resizing one image takes
    # (edge.artifacts.images.resize_pixels). Its times above already include it, the input preparation and
    # setting the input, as serving pays them; 0 for a variant that takes the images as they are.
    resize_ms: float = 0.0
    # Median invoke time at a request's cadence: single runs, each after GAP_MS idle, as a daemon's requests find
    # the runtime between two round trips of their client (caches partly cold); 0 when not measured (older tables).
    gap_p50_ms: float = 0.0


_ROW_FIELDS = [f.name for f in dataclasses.fields(LatencyRow)]
_CSV_FIELDS = [f for f in _ROW_FIELDS if f != "correct"]  # a bitmask is no spreadsheet column


def encode_correct(correct: np.ndarray) -> str:
    """Per-image correctness (bool array) as base64 of its packed bits."""
    import base64

    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def decode_correct(text: str, n: int) -> np.ndarray | None:
    """The bool array ``encode_correct`` wrote (``n`` images), or None when absent or malformed."""
    import base64
    import binascii

    if not text or n <= 0:
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != (n + 7) // 8:
        return None
    return np.unpackbits(np.frombuffer(raw, np.uint8))[:n].astype(bool)


@dataclass(frozen=True)
class Table:
    """What a latency table and a selected table share: a device header, rows, and their JSON and CSV files."""

    header: DeviceHeader
    rows: tuple[LatencyRow, ...]
    version: int = TABLE_VERSION
    kind: str = "latency"

    # How load() words a table measured with another profile: "{path} <measured> with profile ...<again>".
    _measured = "was measured"
    _again = ""

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(r.variant for r in self.rows)

    def row(self, variant: str) -> LatencyRow:
        for r in self.rows:
            if r.variant == variant:
                return r
        raise TableError(f"unknown variant '{variant}'; available: {list(self.variants)}")

    def _extra_json(self) -> dict[str, Any]:
        """Top-level keys a kind of table adds between its header and its rows."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "header": dataclasses.asdict(self.header),
            **self._extra_json(),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow(dataclasses.asdict(r))
        return buf.getvalue()

    def save(self, path: str | Path, csv_too: bool = True) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        if csv_too:
            atomic_write_text(path.with_suffix(".csv"), self.to_csv())
        return path

    @classmethod
    def from_dict(cls, d: Any, src: str = "<table>") -> Self:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str | Path, profile: str | None = None) -> Self:
        """Load a table (a regular file of at most MAX_TABLE_BYTES); any problem is a TableError.

        With ``profile`` given, refuse a table measured for another profile."""
        t = cls.from_dict(read_table_json(path, cls.kind), src=str(path))
        if profile is not None and t.header.profile != profile:
            raise TableError(
                f"{path} {cls._measured} with profile '{t.header.profile}', not '{profile}'; "
                f"benchmark this device with 'edgekit bench BUNDLE --profile {profile}'{cls._again}"
            )
        return t


@dataclass(frozen=True)
class LatencyTable(Table):
    def with_row(self, row: LatencyRow) -> LatencyTable:
        rest = tuple(r for r in self.rows if r.variant != row.variant)
        return dataclasses.replace(self, rows=rest + (row,))

    @classmethod
    def from_dict(cls, d: Any, src: str = "<table>", kind: str = "latency", allow_nan: bool = True) -> LatencyTable:
        """Check every key and type of the JSON ``d``; any problem is a TableError naming the key, never its value.

        Unknown keys are refused. ``allow_nan``: NaN marks a number 'edgekit bench' could not measure
        (e.g. accuracy without an evaluation set); infinity is always refused. A selected table's
        'selection' key is left to its reader (``SelectedTable``).
        """
        if not isinstance(d, dict):
            raise TableError(f"{src} is not a {kind} table (expected a JSON object); {PASS_INSTEAD.get(kind, '')}")
        _check_kind_version(d, src, kind)
        hint = REGENERATE.get(kind, REGENERATE["latency"])
        known = {"kind", "version", "header", "rows"} | ({"selection"} if kind == "selected" else set())
        refuse_unknown(d, known, f"{src} is malformed: the top level", hint, error=TableError)
        for key in ("header", "rows"):
            if key not in d:
                raise TableError(f"{src} is malformed: the top level lacks the required key '{key}'; {hint}")
        where = f"{src} is malformed: 'header'"
        header = DeviceHeader(**checked_fields(DeviceHeader, d["header"], where, hint, allow_nan, error=TableError))
        rows = tuple(_row(r, i, src, hint, allow_nan) for i, r in enumerate(_rows_list(d["rows"], src, hint)))
        return cls(header=header, rows=rows, version=TABLE_VERSION, kind=kind)


@dataclass(frozen=True)
class SelectionParams:
    """How a selected table was chosen (stored under "selection" in its JSON)."""

    quantile: str = "p95"
    epsilon: float = 0.0
    max_models: int | None = None
    memory_budget_mb: float | None = None
    source_table: str = ""
    method: str = "pareto"
    deadline_range_ms: tuple[float, float] | None = None
    expected_accuracy: float | None = None  # over deadline_range_ms, of the rows kept
    significance: float = 0.05  # one-sided level of the paired test each step must pass (0: no test)
    front_size: int = 0  # variants on the (epsilon-)Pareto front before the limits
    candidates: int = 0  # rows in the source table
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # variant -> why

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["deadline_range_ms"] = list(self.deadline_range_ms) if self.deadline_range_ms else None
        return d

    @classmethod
    def from_dict(cls, d: Any, src: str = "<table>") -> SelectionParams:
        """Every key checked against its field type (unknown keys refused, missing ones take defaults)."""
        where, hint = f"{src} is malformed: 'selection'", REGENERATE["selected"]
        kw = checked_fields(cls, d, where, hint, error=TableError)
        if kw.get("quantile", "p95") not in QUANTILES:
            raise TableError(f"{where}: key 'quantile' must be one of {list(QUANTILES)}; {hint}")
        return cls(**kw)


@dataclass(frozen=True)
class SelectedTable(Table):
    """A latency table's monotonic subset (``edge.tables.selection.select_subset``): rows sorted by latency
    (and accuracy) ascending, with the parameters that chose them."""

    params: SelectionParams = dataclasses.field(default_factory=SelectionParams)
    kind: str = "selected"

    _measured = "was selected from a table measured"
    _again = " and select again"

    def _extra_json(self) -> dict[str, Any]:
        return {"selection": self.params.to_dict()}

    def as_latency_table(self) -> LatencyTable:
        return LatencyTable(header=self.header, rows=self.rows, version=self.version, kind="selected")

    @classmethod
    def from_dict(cls, d: Any, src: str = "<selected table>") -> SelectedTable:
        if isinstance(d, dict) and d.get("kind") == "latency":
            raise TableError(
                f"{src} is a latency table, not a selected one; run 'edgekit select {src} --out SELECTED.json' first"
            )
        base = LatencyTable.from_dict(d, src=src, kind="selected", allow_nan=False)
        params = SelectionParams.from_dict(d.get("selection", {}), src=src)
        rows = base.rows
        if not rows:
            raise TableError(f"{src} has no rows; re-run 'edgekit select' with looser limits")
        q = params.quantile
        seen: set[str] = set()
        for i, (prev, cur) in enumerate(zip(rows, rows[1:])):
            if not (cur.latency(q) > prev.latency(q) and cur.accuracy > prev.accuracy):
                raise TableError(
                    f"{src} is not monotonic at {row_label(i + 1, cur.variant)}: its {q} latency and accuracy must "
                    f"both exceed those of {row_label(i, prev.variant)}; re-run 'edgekit select'"
                )
        for i, r in enumerate(rows):
            if r.variant in seen:
                raise TableError(f"{src} lists the variant of {row_label(i, r.variant)} twice; re-run 'edgekit select'")
            seen.add(r.variant)
            lat = r.latency(q)
            if not (math.isfinite(lat) and lat > 0 and math.isfinite(r.accuracy)):
                raise TableError(
                    f"{src}: {row_label(i, r.variant)} has a non-positive or non-finite {q} latency or accuracy; "
                    "re-run 'edgekit select'"
                )
        return cls(header=base.header, rows=rows, params=params, version=base.version)


# ----------------------------------------------------------------------------- reading and checking


def read_table_json(path: str | Path, kind: str = "latency") -> Any:
    """The JSON of the table file ``path``: a regular file of at most MAX_TABLE_BYTES (else TableError)."""
    return read_json(path, f"{kind} table", TableError, max_bytes=MAX_TABLE_BYTES, max_items=MAX_TABLE_ITEMS,
                     hint=PASS_INSTEAD.get(kind, ""))


def _check_kind_version(d: dict, src: str, kind: str) -> None:
    got = d.get("kind")
    if got != kind:
        what = f"a '{got}' table" if got in KINDS else "not an edgekit table (its 'kind' is missing or unknown)"
        raise TableError(f"{src} is {what}, expected a '{kind}' table; {PASS_INSTEAD.get(kind, '')}")
    v = d.get("version")
    if type(v) is not int or v != TABLE_VERSION:
        shown = f"table version {v}" if type(v) is int else "no valid table version"
        raise TableError(f"{src} has {shown}; this edgekit reads {TABLE_VERSION}: {REGENERATE.get(kind, '')}")


def _rows_list(rows: Any, src: str, hint: str) -> list:
    if not isinstance(rows, list):
        raise TableError(f"{src} is malformed: key 'rows' must be an array of objects (got {json_type(rows)}); {hint}")
    return rows


def row_label(i: int, variant: Any) -> str:
    """"row I ('VARIANT')" for messages; the variant only when it looks like one (never a long or odd string)."""
    if isinstance(variant, str) and SAFE_NAME.fullmatch(variant):
        return f"row {i} ('{variant}')"
    return f"row {i}"


def _row(r: Any, i: int, src: str, hint: str, allow_nan: bool) -> LatencyRow:
    where = f"{src} is malformed: {row_label(i, r.get('variant') if isinstance(r, dict) else None)}"
    return LatencyRow(**checked_fields(LatencyRow, r, where, hint, allow_nan, error=TableError))


assert_checkable(DeviceHeader, LatencyRow, SelectionParams)
