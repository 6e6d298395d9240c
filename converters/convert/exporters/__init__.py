"""Export formats (TFLite, ONNX) behind a small registry: one module per format, one function shape."""

from converters.convert.exporters.base import (
    ExportResult,
    Precision,
    available_formats,
    check_format,
    check_target,
    export_model,
    extension,
    get_exporter,
    precisions_for,
    register_format,
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
