"""The weights of an artifact file as arrays, and the file rebuilt with changed ones: a registry by format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edge.core.errors import UsageError


@dataclass(frozen=True)
class WeightTensor:
    """One constant weight tensor of an artifact (a conv or dense kernel: two or more dimensions).

    ``scale`` is the quantization scale (per tensor or per channel) of an integer tensor, None for a float one.
    """

    name: str
    values: np.ndarray  # float32, float16, int8 or uint8, in the file's own encoding
    scale: np.ndarray | None = None

    @property
    def integer(self) -> bool:
        return self.values.dtype.kind in "iu"


class WeightFile(Protocol):
    """An artifact's weights, readable and replaceable without touching anything else in the file."""

    def tensors(self) -> tuple[WeightTensor, ...]: ...

    def with_changes(self, values: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> bytes:
        """The file's bytes with these tensors' values and these integer tensors' scales replaced."""
        ...


def _tflite(data: bytes) -> WeightFile:
    from converters.pack.degrade.tflite import TFLiteWeights

    return TFLiteWeights(data)


def _onnx(data: bytes) -> WeightFile:
    from converters.pack.degrade.onnx import ONNXWeights

    return ONNXWeights(data)


_READERS: dict[str, Callable[[bytes], WeightFile]] = {"tflite": _tflite, "onnx": _onnx}


def weights_of(fmt: str, data: bytes, what: str = "artifact") -> WeightFile:
    """The weights of ``data``, an artifact of format ``fmt``; UsageError naming ``what`` if it has none."""
    try:
        reader = _READERS[fmt]
    except KeyError:
        raise UsageError(f"{what}: no weight reader for format '{fmt}' (have {sorted(_READERS)})") from None
    wf = reader(data)
    if not wf.tensors():
        raise UsageError(f"{what}: no constant weight tensor of two or more dimensions found; "
                         "it cannot be degraded for the predictive test")
    return wf
