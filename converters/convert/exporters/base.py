"""The export registry and what the format modules share: precisions, the result, quiet conversion, the load check."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import io
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device_profiles import RuntimeSetting
from edge.artifacts.formats import backend_for, get_format
from edge.artifacts.manifest import TensorSpec
from edge.core.atomic import atomic_write_bytes, sha256_bytes
from edge.core.errors import StepFailed, UsageError

# format -> "module:function"; imported on first use so a missing optional dependency
# (onnx, onnxruntime, onnxconverter-common) breaks only its own format.
_REGISTRY: dict[str, str] = {
    "tflite": "converters.convert.exporters.tflite:export_tflite",
    "onnx": "converters.convert.exporters.onnx:export_onnx",
}


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"  # TFLite dynamic-range: int8 weights, float activations
    INT8 = "int8"  # full-integer / static QDQ, calibrated

    @classmethod
    def from_string(cls, s: str) -> "Precision":
        try:
            return cls(str(s).lower())
        except ValueError:
            raise UsageError(f"unknown precision '{s}'; available: {[p.value for p in cls]}") from None


@dataclass(frozen=True)
class ExportResult:
    """One written artifact and its input/output as read back from the file by its runtime."""

    path: Path
    format: str
    precision: str
    input: TensorSpec
    output: TensorSpec
    sha256: str
    size_bytes: int
    seconds: float  # conversion wall time, writing included


def available_formats() -> list[str]:
    return sorted(_REGISTRY)


def precisions_for(fmt: str) -> tuple[str, ...]:
    check_format(fmt)
    return get_format(fmt).precisions


def extension(fmt: str) -> str:
    check_format(fmt)
    return get_format(fmt).extension


def check_format(fmt: str) -> None:
    if fmt not in _REGISTRY:
        raise UsageError(f"unknown format '{fmt}'; available: {available_formats()}")


def check_target(fmt: str, precision: str) -> None:
    """Raise ValueError naming what exists when ``fmt``/``precision`` is not buildable."""
    check_format(fmt)
    p = Precision.from_string(precision).value
    if p not in get_format(fmt).precisions:
        raise UsageError(f"unknown precision '{precision}' for format '{fmt}'; available: "
                         f"{list(get_format(fmt).precisions)}")


def register_format(fmt: str, target: str | Callable[..., ExportResult]) -> None:
    """Register an exporter (``"module:function"`` or a callable) under ``fmt``."""
    _REGISTRY[fmt] = target  # type: ignore[assignment]


def get_exporter(fmt: str) -> Callable[..., ExportResult]:
    """The ``export_<format>(model, filepath, precision, calib_images, ...)`` function for ``fmt``."""
    check_format(fmt)
    target: Any = _REGISTRY[fmt]
    if callable(target):
        return target
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


def export_model(
    model,
    filepath: str | Path,
    fmt: str,
    precision: str = "fp32",
    calib_images: np.ndarray | None = None,
    **kwargs,
) -> ExportResult:
    """Export ``model`` to ``filepath`` in ``fmt``/``precision``; see the format modules."""
    check_target(fmt, precision)
    return get_exporter(fmt)(model, filepath, precision=precision, calib_images=calib_images, **kwargs)


# --- helpers shared by the format modules -------------------------------------------------


def require(module: str, pip_name: str, what: str):
    """Import an optional dependency, or raise RuntimeError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise StepFailed(
            f"{what} needs the '{module}' package ({exc}); install it with: pip install {pip_name} "
            "(or the workstation extra: pip install -e '.[train]')"
        ) from None


class _Captured:
    text: str = ""


@contextlib.contextmanager
def quiet():
    """Capture converter chatter on stdout/stderr (Python and native) and silence Python warnings.

    The TFLite converter prints "Saved artifact at ..." and "fully_quantize: ..." for every
    model, which would break up the progress bar and the results table. The captured text
    is kept (``.text``) so a failure can still show what the converter said.
    """
    cap = _Captured()
    saved: dict[int, int] = {}
    sink = tempfile.TemporaryFile(mode="w+b")
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        try:
            stream.flush()
            saved[fd] = os.dup(fd)
            os.dup2(sink.fileno(), fd)
        except (OSError, ValueError, AttributeError):  # no real fd (embedded interpreters, odd runners)
            pass
    try:
        with contextlib.redirect_stdout(io.StringIO()) as pyout, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                yield cap
            finally:
                cap.text = pyout.getvalue()
    finally:
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            if fd in saved:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved[fd], fd)
                os.close(saved[fd])
        sink.seek(0)
        cap.text = sink.read().decode("utf-8", "replace") + cap.text
        sink.close()


def converter_error(what: str, exc: BaseException, cap: _Captured | None = None) -> RuntimeError:
    """A RuntimeError with the converter's message and the last lines it logged."""
    msg = str(exc).strip() or type(exc).__name__
    if cap is not None and cap.text.strip():
        tail = [ln for ln in cap.text.strip().splitlines() if ln.strip()][-5:]
        msg += " | converter log: " + " / ".join(tail)
    return RuntimeError(f"{what} failed: {msg[:3000]}")


def calibration_batches(calib_images: np.ndarray | None, precision: str, batch_size: int) -> list[np.ndarray]:
    """uint8 calibration images -> float32 batches of raw pixel values 0..255 (the model input)."""
    if calib_images is None or len(calib_images) == 0:
        raise UsageError(
            f"precision '{precision}' needs calibration images (the run's calibration split); none were given"
        )
    x = np.asarray(calib_images)
    if x.dtype != np.uint8:
        # Models take raw pixels 0..255; float images scaled to 0..1 would calibrate a useless range.
        raise UsageError(f"calibration images must be uint8 pixels (N, H, W, C), got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    x = x.astype(np.float32)
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def model_input_shape(model) -> tuple[int, ...]:
    """(H, W, C) of a single-input NHWC Keras model."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise UsageError("only single-input Keras models can be exported (NHWC images)")
    shape = tuple(inputs[0].shape)[1:]
    if any(s is None for s in shape):
        raise UsageError(f"the model input must have a fixed H, W, C; got {tuple(inputs[0].shape)}")
    return tuple(int(s) for s in shape)


def read_specs(fmt: str, data: bytes) -> tuple[TensorSpec, TensorSpec]:
    """Load ``data`` with the edge runtime for ``fmt`` and return its input/output specs."""
    from edge.backends import get_backend

    backend = get_backend(backend_for(fmt))
    with backend.load(data, RuntimeSetting(name="export-check", backend=backend_for(fmt), threads=1)) as lm:
        return lm.input_spec, lm.output_spec


def with_convention(res: ExportResult, convention: TensorSpec | None) -> ExportResult:
    """``res`` with an imported model's input convention (mean/std) recorded in its input spec."""
    if convention is None or not convention.normalized:
        return res
    return dataclasses.replace(res, input=res.input.with_convention(convention))


def finish(filepath: str | Path, data: bytes, fmt: str, precision: str, t0: float) -> ExportResult:
    """Check ``data`` loads in its runtime, write it atomically, and describe it."""
    inp, out = read_specs(fmt, data)  # before writing: never leave an unloadable artifact behind
    path = atomic_write_bytes(filepath, data)
    return ExportResult(
        path=Path(path),
        format=fmt,
        precision=precision,
        input=inp,
        output=out,
        sha256=sha256_bytes(data),
        size_bytes=len(data),
        seconds=time.perf_counter() - t0,
    )


__all__ = [
    "ExportResult",
    "Precision",
    "available_formats",
    "check_format",
    "check_target",
    "export_model",
    "extension",
    "get_exporter",
    "precisions_for",
    "register_format",
]
