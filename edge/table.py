"""Per-device latency tables (JSON + CSV): a device header and one measured row per artifact x runtime setting."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.atomic import atomic_write_json, atomic_write_text, read_json

TABLE_VERSION = 1
QUANTILES = ("mean", "p50", "p90", "p95", "p99", "max")


class TableError(ValueError):
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


@dataclass(frozen=True)
class LatencyRow:
    """One artifact measured with one runtime setting on this device. Times in milliseconds."""

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
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    load_ms: float
    first_inference_ms: float
    preprocess_ms: float
    peak_rss_mb: float  # resident memory the loaded artifact added
    size_bytes: int
    params: int = 0
    macs: int = 0

    def latency(self, quantile: str) -> float:
        if quantile not in QUANTILES:
            raise ValueError(f"unknown latency quantile '{quantile}'; available: {list(QUANTILES)}")
        return float(getattr(self, f"{quantile}_ms"))


_ROW_FIELDS = [f.name for f in dataclasses.fields(LatencyRow)]


@dataclass(frozen=True)
class LatencyTable:
    header: DeviceHeader
    rows: tuple[LatencyRow, ...]
    version: int = TABLE_VERSION
    kind: str = "latency"

    def row(self, variant: str) -> LatencyRow:
        for r in self.rows:
            if r.variant == variant:
                return r
        raise TableError(f"unknown variant '{variant}'; available: {[r.variant for r in self.rows]}")

    def with_row(self, row: LatencyRow) -> "LatencyTable":
        rest = tuple(r for r in self.rows if r.variant != row.variant)
        return dataclasses.replace(self, rows=rest + (row,))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "header": dataclasses.asdict(self.header),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }

    def save(self, path: str | Path, csv_too: bool = True) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        if csv_too:
            atomic_write_text(path.with_suffix(".csv"), self.to_csv())
        return path

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_ROW_FIELDS)
        w.writeheader()
        for r in self.rows:
            w.writerow(dataclasses.asdict(r))
        return buf.getvalue()

    @classmethod
    def from_dict(cls, d: Any, src: str = "<table>", kind: str = "latency") -> "LatencyTable":
        if not isinstance(d, dict):
            raise TableError(f"{src} is not a latency table (expected a JSON object)")
        if d.get("kind") != kind:
            raise TableError(f"{src} is a '{d.get('kind')}' table, expected a '{kind}' table")
        if d.get("version") != TABLE_VERSION:
            raise TableError(f"{src} has table version {d.get('version')!r}; this edgekit reads {TABLE_VERSION}")
        try:
            header = DeviceHeader(**d["header"])
            rows = tuple(LatencyRow(**r) for r in d["rows"])
        except (KeyError, TypeError) as exc:
            raise TableError(f"{src} is malformed ({exc}); re-run 'edgekit bench' to regenerate it") from None
        return cls(header=header, rows=rows, version=TABLE_VERSION, kind=kind)

    @classmethod
    def load(cls, path: str | Path, profile: str | None = None) -> "LatencyTable":
        """Load a table; with ``profile`` given, refuse a table measured for another profile."""
        try:
            d = read_json(path, what="latency table")
        except (FileNotFoundError, ValueError) as exc:
            raise TableError(str(exc)) from None
        t = cls.from_dict(d, src=str(path))
        if profile is not None and t.header.profile != profile:
            raise TableError(
                f"{path} was measured with profile '{t.header.profile}', not '{profile}'; "
                f"benchmark this device with 'edgekit bench BUNDLE --profile {profile}'"
            )
        return t
