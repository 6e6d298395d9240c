"""The artifact manifest (manifest.json): what each converted model is and how to feed it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.atomic import atomic_write_json, read_json
from edge.core.errors import EdgekitError

MANIFEST_VERSION = 1


class ManifestError(EdgekitError, ValueError):
    """A manifest is missing, malformed, or disagrees with the files beside it."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Shapes carry the batch dimension as -1.

    ``mean``/``std`` (an input only, one value per channel, in raw-pixel units 0..255) are the input
    convention of an imported ONNX or TFLite model: it takes x' = (x - mean) / std, applied before any
    quantization. Absent, the model takes raw pixels, as every model edgekit trains (and every Keras
    import, whose convention is folded into its graph) does.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: float32, float16, int8, uint8
    scale: float | None = None  # real = scale * (q - zero_point), for quantized tensors
    zero_point: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ManifestError(f"tensor '{self.name}': mean and std go together (got mean={self.mean}, "
                                f"std={self.std})")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or not self.mean:
                raise ManifestError(f"tensor '{self.name}': mean {self.mean} and std {self.std} need one value "
                                    "per channel each")
            if not all(np.isfinite(v) for v in self.mean) or not all(np.isfinite(s) and s > 0 for s in self.std):
                raise ManifestError(f"tensor '{self.name}': mean must be finite and std > 0, got mean={self.mean}, "
                                    f"std={self.std}")

    @property
    def quantized(self) -> bool:
        return self.scale is not None and np.dtype(self.dtype).kind in "iu"

    @property
    def normalized(self) -> bool:
        """Whether the model takes (x - mean) / std rather than raw pixels."""
        return self.mean is not None

    def with_convention(self, other: "TensorSpec") -> "TensorSpec":
        """This spec (read from the file by its runtime) with ``other``'s input convention (from the manifest)."""
        return dataclasses.replace(self, mean=other.mean, std=other.std)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        for k in ("mean", "std"):  # absent rather than null: manifests of raw-pixel models stay as they were
            if d[k] is None:
                del d[k]
            else:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=str(d["dtype"]),
            scale=None if d.get("scale") is None else float(d["scale"]),
            zero_point=None if d.get("zero_point") is None else int(d["zero_point"]),
            mean=None if d.get("mean") is None else tuple(float(v) for v in d["mean"]),
            std=None if d.get("std") is None else tuple(float(v) for v in d["std"]),
        )


@dataclass(frozen=True)
class ArtifactRecord:
    """One converted model file and what validation measured for it on the host."""

    artifact_id: str  # "<model_id>.<format>-<precision>", stable and unique
    model_id: str
    format: str
    precision: str
    path: str  # relative to the folder holding manifest.json
    sha256: str
    size_bytes: int
    input: TensorSpec
    output: TensorSpec
    source_sha256: str = ""  # sha256 of the model.keras it was built from
    params: int = 0
    macs: int = 0
    keras_accuracy: float | None = None
    host_accuracy: float | None = None
    agreement: float | None = None  # top-1 agreement with the Keras model
    max_abs_diff: float | None = None  # max |artifact - keras| over dequantized outputs
    eval_count: int = 0
    status: str = "unvalidated"  # ok | rejected | unvalidated
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input"] = self.input.to_dict()
        d["output"] = self.output.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArtifactRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ManifestError(f"artifact record has unknown keys {sorted(unknown)}")
        kw = dict(d)
        kw["input"] = TensorSpec.from_dict(d["input"])
        kw["output"] = TensorSpec.from_dict(d["output"])
        return cls(**kw)


def artifact_id(model_id: str, fmt: str, precision: str) -> str:
    return f"{model_id}.{fmt}-{precision}"


def variant_id(artifact_id: str, setting: str) -> str:
    """A latency table row's key: one artifact run with one runtime setting of the device profile."""
    return f"{artifact_id}@{setting}"


@dataclass(frozen=True)
class Manifest:
    """manifest.json: dataset, labels and every artifact of a run or bundle."""

    dataset: str
    labels: tuple[str, ...]
    artifacts: tuple[ArtifactRecord, ...] = ()
    version: int = MANIFEST_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. bundle profile, eval set info

    def by_id(self) -> dict[str, ArtifactRecord]:
        return {a.artifact_id: a for a in self.artifacts}

    def get(self, artifact_id: str) -> ArtifactRecord:
        try:
            return self.by_id()[artifact_id]
        except KeyError:
            raise ManifestError(
                f"unknown artifact '{artifact_id}'; available: {sorted(self.by_id())}"
            ) from None

    def with_artifact(self, rec: ArtifactRecord) -> "Manifest":
        """A copy with ``rec`` added or replacing the record with the same id."""
        rest = tuple(a for a in self.artifacts if a.artifact_id != rec.artifact_id)
        arts = tuple(sorted(rest + (rec,), key=lambda a: a.artifact_id))
        return dataclasses.replace(self, artifacts=arts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "dataset": self.dataset,
            "labels": list(self.labels),
            "extra": self.extra,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        try:
            if int(d.get("version", 0)) != MANIFEST_VERSION:
                raise ManifestError(
                    f"manifest version {d.get('version')!r} is not supported (expected {MANIFEST_VERSION}); "
                    "rebuild it with this edgekit"
                )
            return cls(
                dataset=str(d["dataset"]),
                labels=tuple(str(x) for x in d["labels"]),
                artifacts=tuple(ArtifactRecord.from_dict(a) for a in d.get("artifacts", [])),
                version=int(d["version"]),
                extra=dict(d.get("extra", {})),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is malformed: {exc!r}; rebuild it with 'edgekit convert'") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        d = read_json(path, "manifest", ManifestError)
        if not isinstance(d, dict):
            raise ManifestError(f"manifest {path} is not a JSON object")
        return cls.from_dict(d)
