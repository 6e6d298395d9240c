"""The one vocabulary of artifact formats: name, file extension, the backend that runs it, its precisions.

Adding a format means one entry here, one converter module (``converters/convert/exporters/``, registered
there by name) and one backend module (``edge/backends/``, registered by its backend name).
Everything else (profiles, conversion, bundles, validation) reads this table. Stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.core.errors import UsageError

# Every precision edgekit builds, in the order tables list them.
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


@dataclass(frozen=True)
class Format:
    name: str
    extension: str  # file suffix, without the dot
    backend: str  # the edge.backends name that loads it
    precisions: tuple[str, ...]  # what it can be built in


_FORMATS = (
    Format("tflite", "tflite", "litert", ("fp32", "fp16", "dynamic", "int8")),
    Format("onnx", "onnx", "onnxruntime", ("fp32", "fp16", "int8")),
)
FORMATS: dict[str, Format] = {f.name: f for f in _FORMATS}
BACKENDS: tuple[str, ...] = tuple(f.backend for f in _FORMATS)


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown format '{name}'; available: {sorted(FORMATS)}") from None


def backend_for(fmt: str) -> str:
    """The backend that runs ``fmt``."""
    return get_format(fmt).backend


def format_for_backend(backend: str) -> str:
    for f in _FORMATS:
        if f.backend == backend:
            return f.name
    raise UsageError(f"unknown backend '{backend}'; available: {list(BACKENDS)}")
