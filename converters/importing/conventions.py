"""Input conventions of imported models (0..255, 0..1, -1..1, ImageNet, mean/std): the flag, the sidecar TOML.

A convention is kept in raw-pixel units, x' = (x - mean) / std with x in 0..255, the units of
``edge.artifacts.manifest.TensorSpec.mean``/``std``. Users write mean/std in torchvision's 0..1 units
(``transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])``), converted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from edge.artifacts.manifest import TensorSpec
from edge.core.errors import UsageError

RAW = "0..255"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, in 0..1 units
IMAGENET_STD = (0.229, 0.224, 0.225)
# name -> (mean, std) in 0..1 units, one value for every channel unless three are given.
NAMED: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    RAW: ((0.0,), (1 / 255,)),
    "0..1": ((0.0,), (1.0,)),
    "-1..1": ((0.5,), (0.5,)),  # keras.applications.mobilenet_v2.preprocess_input: x / 127.5 - 1
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}
# keras.applications' preprocess_input modes that are one of these ("caffe" is BGR, which edgekit does not feed).
ALIASES = {"tf": "-1..1", "torch": "imagenet", "raw": RAW, "-1,1": "-1..1", "0,1": "0..1", "0,255": RAW}
SIDECAR_NAME = "edgekit.toml"
FLAG_HELP = (f"{', '.join(NAMED)} (tf = -1..1 and torch = imagenet, as keras.applications name them), or "
             "'mean=R,G,B std=R,G,B' in 0..1 units as torchvision writes them (x' = (x/255 - mean) / std); "
             f"default {RAW} (raw pixels)")


@dataclass(frozen=True)
class InputConvention:
    """What an imported model takes: x' = (x - mean) / std per channel, x the raw pixels 0..255."""

    name: str  # a NAMED key, or "mean/std"
    mean: tuple[float, ...]  # raw-pixel units
    std: tuple[float, ...]
    origin: str = "default"  # "default", "--input-range", or the sidecar file it was read from

    @property
    def raw(self) -> bool:
        """The model takes raw pixels 0..255: nothing to fold in or record."""
        return all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std)

    def describe(self) -> str:
        if self.name != "mean/std":
            return self.name
        return (f"mean={','.join(f'{m / 255:.4g}' for m in self.mean)} "
                f"std={','.join(f'{s / 255:.4g}' for s in self.std)}")

    def for_channels(self, channels: int, model: Path | str = "the model") -> InputConvention:
        """The convention with one value per channel; three values for a one-channel model is an error."""
        n = len(self.mean)
        if n == channels:
            return self
        if n == 1:
            return InputConvention(self.name, self.mean * channels, self.std * channels, self.origin)
        raise UsageError(f"the input convention {self.describe()} ({self.origin}) has {n} channel values but "
                         f"{model} takes {channels} channel(s); give one value, or {channels}")

    def tensor_spec(self, spec: TensorSpec) -> TensorSpec:
        """``spec`` recording this convention (an ONNX or TFLite input); a raw-pixel one records none."""
        if self.raw:
            return spec.with_convention(TensorSpec(spec.name, spec.shape, spec.dtype))
        return spec.with_convention(TensorSpec(spec.name, spec.shape, spec.dtype, mean=self.mean, std=self.std))

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 (or float) pixels -> float32 model input, as edge.artifacts.tensors.prepare_input computes it."""
        from edge.artifacts.tensors import pixel_values

        if self.raw:
            return np.asarray(images).astype(np.float32)
        x = np.asarray(images)
        return pixel_values(x, TensorSpec("x", (-1, *x.shape[1:]), "float32", mean=self.mean, std=self.std))

    def to_dict(self) -> dict[str, Any]:
        return {"range": self.name, "mean": list(self.mean), "std": list(self.std), "units": "pixels 0..255",
                "from": self.origin}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputConvention:
        return cls(name=str(d["range"]), mean=tuple(float(v) for v in d["mean"]),
                   std=tuple(float(v) for v in d["std"]), origin=str(d.get("from", "default")))


DEFAULT = InputConvention(RAW, (0.0,), (1.0,))


def _pixels(mean: tuple[float, ...], std: tuple[float, ...], name: str, origin: str) -> InputConvention:
    return InputConvention(name, tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std), origin)


def _values(text: str, key: str, origin: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{origin}: {key}={text!r} is not a comma-separated list of numbers") from None
    if len(vals) not in (1, 3):
        raise UsageError(f"{origin}: {key} needs one value or three (R,G,B), got {len(vals)}")
    return vals


def mean_std(mean: tuple[float, ...], std: tuple[float, ...], origin: str) -> InputConvention:
    """A convention from torchvision-style mean/std (0..1 units)."""
    if len(mean) != len(std):
        raise UsageError(f"{origin}: mean has {len(mean)} values and std {len(std)}; give as many of each")
    hint = ("mean and std are in 0..1 units, as torchvision writes them (ImageNet: mean=0.485,0.456,0.406 "
            "std=0.229,0.224,0.225); divide 0..255 pixel values by 255")
    if not all(math.isfinite(m) and 0.0 <= m <= 1.0 for m in mean):
        raise UsageError(f"{origin}: mean={','.join(map(str, mean))} is outside 0..1: {hint}")
    if not all(math.isfinite(s) and 0.0 < s <= 1.0 for s in std):
        raise UsageError(f"{origin}: std={','.join(map(str, std))} must be in (0, 1]: {hint}")
    return _pixels(mean, std, "mean/std", origin)


def parse_input_range(text: str, origin: str = "--input-range") -> InputConvention:
    """``0..255``, ``0..1``, ``-1..1``, ``imagenet`` or ``mean=R,G,B std=R,G,B`` (0..1 units)."""
    t = " ".join(str(text).strip().lower().split())
    t = ALIASES.get(t, t)
    if t in NAMED:
        if t == RAW:
            return InputConvention(RAW, (0.0,), (1.0,), origin)
        mean, std = NAMED[t]
        return _pixels(mean, std, t, origin)
    parts = dict(p.split("=", 1) for p in t.replace(";", " ").split() if "=" in p)
    if set(parts) == {"mean", "std"} and t.count("=") == 2:
        return mean_std(_values(parts["mean"], "mean", origin), _values(parts["std"], "std", origin), origin)
    raise UsageError(f"{origin}: unknown input range {text!r}; use {FLAG_HELP}")


def sidecar_paths(model: Path) -> tuple[Path, Path]:
    """Where a model's sidecar may be: ``<model file>.toml``, then ``edgekit.toml`` in its folder."""
    return model.with_name(model.name + ".toml"), model.parent / SIDECAR_NAME


def read_sidecar(path: Path) -> InputConvention:
    """``input_range = "-1..1"`` or ``[input]`` with ``mean = [..]`` and ``std = [..]`` (0..1 units)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the input convention in {path}: {exc}; fix the file or pass "
                         "--input-range (which wins over it)") from None
    origin = str(path)
    known = {"input_range", "input"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {unknown}; a sidecar holds input_range = \"-1..1\" or an [input] "
                         "table with mean = [...] and std = [...]")
    if ("input_range" in data) == ("input" in data):
        raise UsageError(f"{path}: give either input_range = \"...\" or an [input] table with mean and std, "
                         "exactly one of them")
    if "input_range" in data:
        if not isinstance(data["input_range"], str):
            raise UsageError(f"{path}: input_range must be a string such as \"-1..1\"")
        return parse_input_range(data["input_range"], origin)
    table = data["input"]
    if not isinstance(table, dict) or set(table) != {"mean", "std"}:
        raise UsageError(f"{path}: the [input] table needs exactly mean = [...] and std = [...] (0..1 units)")
    vals = []
    for key in ("mean", "std"):
        v = table[key]
        v = [v] if isinstance(v, (int, float)) else v
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) for x in v) or len(v) not in (1, 3):
            raise UsageError(f"{path}: [input] {key} must be a number or a list of 1 or 3 numbers, got {v!r}")
        vals.append(tuple(float(x) for x in v))
    return mean_std(vals[0], vals[1], origin)


def resolve(flag: str | None, model: Path) -> InputConvention:
    """The flag wins over a sidecar, a sidecar over the default (raw pixels 0..255)."""
    if flag is not None:
        return parse_input_range(flag)
    for p in sidecar_paths(model):
        if p.is_file():
            return read_sidecar(p)
    return DEFAULT
