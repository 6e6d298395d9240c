"""ONNX export (Keras' own model.export): fp32, fp16 (float I/O kept), int8 static QDQ per-channel."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from converters.convert.exporters.base import (
    ExportResult,
    Precision,
    calibration_batches,
    check_target,
    converter_error,
    finish,
    model_input_shape,
    quiet,
    require,
)
from edge.core.errors import StepFailed

INPUT_NAME = "input"  # stable across every artifact, whatever the Keras Input layer is called
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def _export_fp32(model, path: Path, opset: int | None) -> None:
    tf = require("tensorflow", "tensorflow", "ONNX export")
    require("tf2onnx", "tf2onnx", "ONNX export")
    h, w, c = model_input_shape(model)
    # An explicit signature fixes the input name and keeps the batch dimension None (dynamic).
    sig = [tf.TensorSpec((None, h, w, c), tf.float32, name=INPUT_NAME)]
    cap = None
    try:
        with quiet() as cap:
            model.export(str(path), format="onnx", verbose=False, input_signature=sig, opset_version=opset)
    except Exception as exc:
        raise converter_error("ONNX export (Keras model.export)", exc, cap) from None


def _tidy(model_proto):
    """Name the output 'logits' and the batch dimension 'batch' (tf2onnx leaves 'Identity:0', 'unk__N')."""
    graph = model_proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise StepFailed(f"expected one input and one output, got {len(graph.input)} and {len(graph.output)}")
    old = graph.output[0].name
    if old != OUTPUT_NAME:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
            node.input[:] = [OUTPUT_NAME if i == old else i for i in node.input]
        graph.output[0].name = OUTPUT_NAME
    for vi in (graph.input[0], graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            raise StepFailed(f"ONNX tensor '{vi.name}' has no shape")
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            raise StepFailed(
                f"ONNX tensor '{vi.name}' has a fixed batch dimension {dims[0].dim_value}; "
                "export with a None batch in the input signature"
            )
        dims[0].dim_param = BATCH_DIM
    return model_proto


def _quantize_int8(fp32_path: Path, work: Path, calib_images, calib_batch: int) -> bytes:
    require("onnxruntime", "onnxruntime", "ONNX int8 quantization")
    require("sympy", "sympy", "ONNX int8 quantization (symbolic shape inference)")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = calibration_batches(calib_images, "int8", calib_batch)

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {INPUT_NAME: b}

        def rewind(self):
            self._it = iter(batches)

    pre = work / "pre.onnx"
    out = work / "int8.onnx"
    cap = None
    try:
        with quiet() as cap:
            # Shape inference + graph fusion first: quantizing the optimised graph gives better QDQ placement.
            # auto_merge: where two branches whose batch dims read differently meet in one op (an ensemble of
            # a ViP member, whose Resize gives floor(1.0*batch), and a plain one, batch), merge the symbols
            # instead of failing ("Incomplete symbolic shape inference", which also drops a
            # sym_shape_infer_temp.onnx in the cwd). Graphs without such a conflict come out byte-identical.
            quant_pre_process(str(fp32_path), str(pre), auto_merge=True)
            quantize_static(
                str(pre),
                str(out),
                _Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    except Exception as exc:
        raise converter_error("ONNX int8 quantization", exc, cap) from None
    return out.read_bytes()


def export_onnx(
    model,
    filepath: str | Path,
    precision: str = "fp32",
    calib_images: np.ndarray | None = None,
    *,
    opset: int | None = None,
    calib_batch: int = 32,
) -> ExportResult:
    """Export a Keras model to ``filepath`` (.onnx), written atomically.

    fp32: Keras' ONNX export (tf2onnx underneath) with input 'input' (N, H, W, C) and
    output 'logits' (N, classes), N dynamic. fp16: weights and compute in float16, float32
    input/output kept. int8: static QDQ, per-channel weights, calibrated on ``calib_images``
    (uint8 NHWC fed as float32 0..255); input and output stay float32.
    """
    check_target("onnx", precision)
    precision = Precision.from_string(precision).value
    onnx = require("onnx", "onnx", "ONNX export")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
        work = Path(tmp)
        raw = work / "keras.onnx"
        _export_fp32(model, raw, opset)
        proto = _tidy(onnx.load(str(raw)))
        if precision == "fp32":
            data = proto.SerializeToString()
        elif precision == "fp16":
            require("onnxconverter_common", "onnxconverter-common", "ONNX fp16 conversion")
            from onnxconverter_common import float16

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "values truncated to fp16" for tiny weights
                half = float16.convert_float_to_float16(proto, keep_io_types=True)
            data = _tidy(half).SerializeToString()
        else:  # int8
            fp32 = work / "fp32.onnx"
            onnx.save(proto, str(fp32))
            q = onnx.load_from_string(_quantize_int8(fp32, work, calib_images, calib_batch))
            data = _tidy(q).SerializeToString()
        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except Exception as exc:
            raise StepFailed(f"ONNX {precision} artifact fails onnx.checker: {exc}") from None
    return finish(filepath, data, "onnx", precision, t0)
