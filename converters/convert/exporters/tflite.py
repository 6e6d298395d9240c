"""TFLite export (tf.lite.TFLiteConverter): fp32, fp16 weights, dynamic-range, full-integer int8; a .tflite as given."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from converters.convert.exporters.base import (
    ExportResult,
    Precision,
    calibration_batches,
    check_target,
    converter_error,
    finish,
    quiet,
    require,
    with_convention,
)
from edge.artifacts.manifest import TensorSpec
from edge.core.errors import StepFailed


def _converter(model, precision: str, calib_images: np.ndarray | None):
    tf = require("tensorflow", "tensorflow", "TFLite export")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    p = Precision.from_string(precision)
    if p is Precision.FP16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif p is Precision.DYNAMIC:
        # Optimize.DEFAULT with no representative dataset = dynamic-range quantization.
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif p is Precision.INT8:
        # Calibrate on single images: the converter's calibrator runs the float model at batch 1.
        samples = [b for batch in calibration_batches(calib_images, precision, 1) for b in batch[None]]

        def representative():
            for s in samples:
                yield [s]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv


def _batch_signature(data: bytes) -> tuple[int, int]:
    """First dimension of the input and output shape signatures (-1 when dynamic)."""
    from edge.backends.base import BackendUnavailable
    from edge.backends.litert import new_interpreter

    try:
        interp = new_interpreter(model_content=data)
    except BackendUnavailable:  # pragma: no cover - tensorflow's own interpreter reads the same file
        import tensorflow as tf

        interp = tf.lite.Interpreter(model_content=data)
    i = interp.get_input_details()[0]
    o = interp.get_output_details()[0]
    return int(i["shape_signature"][0]), int(o["shape_signature"][0])


def export_tflite(
    model,
    filepath: str | Path,
    precision: str = "fp32",
    calib_images: np.ndarray | None = None,
) -> ExportResult:
    """Convert a Keras model to ``filepath`` (.tflite), written atomically.

    fp32: plain conversion. fp16: float16 weights, float32 input/output. dynamic: int8
    weights, float activations (no calibration). int8: full-integer kernels with int8
    input and output, calibrated on ``calib_images`` (uint8 NHWC, fed as float32 0..255);
    the input/output scale and zero point are read back into the returned TensorSpecs.
    """
    check_target("tflite", precision)
    precision = Precision.from_string(precision).value
    t0 = time.perf_counter()
    conv = _converter(model, precision, calib_images)
    cap = None
    try:
        with quiet() as cap:
            data = conv.convert()
    except Exception as exc:  # the converter raises ConverterError and friends
        raise converter_error(f"TFLite {precision} conversion", exc, cap) from None
    batch_in, batch_out = _batch_signature(data)
    if batch_in != -1 or batch_out != -1:
        raise StepFailed(
            f"TFLite {precision} artifact has a fixed batch dimension (input {batch_in}, output {batch_out}); "
            "build the Keras model with keras.Input(shape=(H, W, C)) so the batch stays None"
        )
    return finish(filepath, data, "tflite", precision, t0)


def from_file(data: bytes, filepath: str | Path, precision: str, convention: TensorSpec | None = None) -> ExportResult:
    """A TFLite model as given (an imported .tflite) to ``filepath``, under the precision read from it.

    TFLiteConverter takes Keras models, SavedModels and concrete functions, never a .tflite file, so
    the file is served as it is; ``convention`` (its input mean/std) is recorded in the input spec.
    """
    check_target("tflite", precision)
    t0 = time.perf_counter()
    return with_convention(finish(filepath, data, "tflite", Precision.from_string(precision).value, t0), convention)
