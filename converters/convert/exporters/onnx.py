"""ONNX export: fp32 from Keras (its own model.export) or given; fp16 (float I/O kept) and int8 static QDQ from it."""

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
    with_convention,
)
from edge.artifacts.manifest import TensorSpec
from edge.core.errors import StepFailed

INPUT_NAME = "input"  # stable across every artifact, whatever the Keras Input layer is called
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


def _inference_model(model):
    """``model`` called with ``training=False`` inside a functional wrapper.

    Keras' ONNX export traces the model without a training flag, and a batch-norm layer next to a
    ``Resizing`` layer (ViP) came out with its batch statistics: a ViP net with batch norm was 1.2
    logits off its Keras source, where TFLite was 1e-6 off.
    """
    import keras

    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype="float32", name=INPUT_NAME)
    return keras.Model(inp, model(inp, training=False), name=model.name)


def _export_fp32(model, path: Path, opset: int | None) -> None:
    tf = require("tensorflow", "tensorflow", "ONNX export")
    require("tf2onnx", "tf2onnx", "ONNX export")
    h, w, c = model_input_shape(model)
    # An explicit signature fixes the input name and keeps the batch dimension None (dynamic).
    sig = [tf.TensorSpec((None, h, w, c), tf.float32, name=INPUT_NAME)]
    cap = None
    try:
        with quiet() as cap:
            _inference_model(model).export(str(path), format="onnx", verbose=False, input_signature=sig,
                                           opset_version=opset)
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


def _calibration(calib_images, proto, convention: TensorSpec | None, calib_batch: int) -> list[np.ndarray]:
    """The model's float32 inputs for the calibration images: raw pixels, or as the input convention says.

    prepare_input is the one input preparation (an imported model's mean/std applied there too); a graph
    with a fixed batch is calibrated at that batch.
    """
    from edge.artifacts.tensors import prepare_input

    raw = calibration_batches(calib_images, "int8", calib_batch)  # checks uint8 pixels; float32 0..255
    if convention is None or not convention.normalized:
        batches = raw
    else:
        x = np.concatenate(raw) if raw else np.zeros((0,), np.float32)
        spec = TensorSpec("x", (-1, *x.shape[1:]), "float32", mean=convention.mean, std=convention.std)
        full = prepare_input(x, spec)
        batches = [full[i : i + calib_batch] for i in range(0, len(full), calib_batch)]
    fixed = _fixed_batch(proto)
    if fixed is not None:
        x = np.concatenate(batches)
        batches = [x[i : i + fixed] for i in range(0, len(x) - fixed + 1, fixed)]
    return batches


def _fixed_batch(proto) -> int | None:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _quantize_int8(fp32_path: Path, work: Path, batches: list[np.ndarray], input_name: str) -> bytes:
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

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {input_name: b}

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
    output 'logits' (N, classes), N dynamic; fp16 and int8 are made from it by :func:`from_fp32`.
    """
    check_target("onnx", precision)
    onnx = require("onnx", "onnx", "ONNX export")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
        raw = Path(tmp) / "keras.onnx"
        _export_fp32(model, raw, opset)
        fp32 = _tidy(onnx.load(str(raw))).SerializeToString()
    return from_fp32(fp32, filepath, precision, calib_images, calib_batch=calib_batch, tidy=True, t0=t0)


def from_fp32(
    fp32: bytes,
    filepath: str | Path,
    precision: str = "fp32",
    calib_images: np.ndarray | None = None,
    *,
    convention: TensorSpec | None = None,
    calib_batch: int = 32,
    tidy: bool = False,
    t0: float | None = None,
) -> ExportResult:
    """An ONNX fp32 model, whoever made it (Keras' export, a user's file, tf2onnx from a TFLite file), to
    ``filepath`` in ``precision``, written atomically.

    fp32: the model as given. fp16: weights and compute in float16, float32 input/output kept. int8:
    static QDQ, per-channel weights, calibrated on ``calib_images`` (uint8 NHWC) prepared as the model
    takes them (raw pixels as float32 0..255, or ``convention``'s mean/std); input and output stay float32.
    ``convention`` (an imported model's mean/std) is recorded in the result's input spec. ``tidy``: the
    output is called 'logits' and the batch 'batch' (Keras exports; a user's names are kept).
    """
    check_target("onnx", precision)
    precision = Precision.from_string(precision).value
    onnx = require("onnx", "onnx", "ONNX export")
    t0 = time.perf_counter() if t0 is None else t0
    proto = onnx.load_from_string(fp32)
    if precision == "fp32":
        data = fp32
    elif precision == "fp16":
        require("onnxconverter_common", "onnxconverter-common", "ONNX fp16 conversion")
        from onnxconverter_common import float16

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values truncated to fp16" for tiny weights
            half = float16.convert_float_to_float16(proto, keep_io_types=True)
        data = (_tidy(half) if tidy else half).SerializeToString()
    else:  # int8
        batches = _calibration(calib_images, proto, convention, calib_batch)
        with tempfile.TemporaryDirectory(prefix="edgekit-onnx-") as tmp:
            work = Path(tmp)
            onnx.save(proto, str(work / "fp32.onnx"))
            q = onnx.load_from_string(_quantize_int8(work / "fp32.onnx", work, batches, proto.graph.input[0].name))
        data = (_tidy(q) if tidy else q).SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:
        raise StepFailed(f"ONNX {precision} artifact fails onnx.checker: {exc}") from None
    return with_convention(finish(filepath, data, "onnx", precision, t0), convention)


def from_tflite(tflite_path: str | Path, opset: int | None = None) -> bytes:
    """A float TFLite model as ONNX fp32 (tf2onnx's TFLite frontend): what ONNX artifacts of a TFLite import
    are made from. Ops tf2onnx cannot map fail here, by name."""
    require("tf2onnx", "tf2onnx", "ONNX from TFLite")
    import tf2onnx

    cap = None
    try:
        with quiet() as cap:
            proto, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=opset)
    except Exception as exc:
        raise converter_error("ONNX from TFLite (tf2onnx)", exc, cap) from None
    return proto.SerializeToString()
