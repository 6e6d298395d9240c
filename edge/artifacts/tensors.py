"""Tensor conversions around a model: uint8 images in, as the artifact's input spec says; float32 scores out."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from edge.artifacts.images import resize_pixels
from edge.artifacts.manifest import TensorSpec
from edge.core.errors import UsageError


def prepare_input(images: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """uint8 NHWC images (pixel values 0..255) -> the tensor this artifact takes.

    Every model in a family takes raw pixel values as float and normalises inside the
    graph, so a float input is just a cast and an int8/uint8 input is quantized with
    the artifact's recorded scale and zero point. An imported ONNX or TFLite model whose
    spec records an input convention (``mean``/``std``) gets (x - mean) / std first.

    Images of another height and width but the same channels are first resized to the artifact's
    by ``fit_size`` (a variant trained at another resolution than its bundle's images).
    """
    x = fit_size(np.asarray(images), spec)
    want = tuple(s for s in spec.shape[1:])
    if tuple(x.shape[1:]) != want:
        raise UsageError(f"input shape {tuple(x.shape[1:])} does not match the model's {want} (NHWC, no batch)")
    return pixel_values(x, spec)


def fit_size(images: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """uint8 NHWC images (or one HWC image, given a batch axis) at the artifact's input height and width: resized
    by ``edge.artifacts.images.resize_pixels`` when only those differ, else as they are."""
    x = images
    if x.ndim == len(spec.shape) - 1:
        x = x[None, ...]
    want = tuple(int(s) for s in spec.shape[1:])
    if (x.ndim == 4 and len(want) == 3 and x.dtype == np.uint8 and x.shape[1:3] != want[:2] and x.shape[3] == want[2]
            and min(want[:2]) > 0):
        x = resize_pixels(x, want[:2])
    return x


def pixel_values(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Pixel values (any shape whose last axis is the channels) -> input values as ``spec`` says.

    The arithmetic of :func:`prepare_input` without its shape check, so that a lookup table of the
    256 pixel values (the daemon's) computes exactly what it does.
    """
    dt = np.dtype(spec.dtype)
    if spec.normalized:
        mean = np.asarray(spec.mean, np.float32)
        std = np.asarray(spec.std, np.float32)
        if x.shape[-1:] != mean.shape and mean.shape != (1,):
            raise UsageError(f"the input convention has {len(mean)} channel values but the images have "
                             f"{x.shape[-1]} channels")
        x = (x.astype(np.float32) - mean) / std
    if spec.quantized:  # so scale and zero point are recorded
        info = np.iinfo(dt)
        q = np.round(x.astype(np.float32) / cast(float, spec.scale) + cast(int, spec.zero_point))
        return np.clip(q, info.min, info.max).astype(dt)
    return x.astype(dt)


def with_recorded_input(model: Any, recorded: TensorSpec) -> Any:
    """Give a loaded model the input convention its manifest record declares; returns the model.

    A runtime reads shape, dtype and quantization from the file, but an imported model's
    convention (mean/std) is only in the manifest: whoever loads an artifact by its record
    calls this so that everything feeding ``model.input_spec`` to :func:`prepare_input` (canary,
    benchmark, daemon) normalizes as the workstation did.
    """
    if recorded.normalized or getattr(model.input_spec, "normalized", False):
        model.input_spec = model.input_spec.with_convention(recorded)
    return model


def dequantize_output(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Model output -> float32 scores, undoing output quantization."""
    if spec.quantized:
        return (y.astype(np.float32) - cast(int, spec.zero_point)) * cast(float, spec.scale)
    return y.astype(np.float32)


def scores(model: Any, images: np.ndarray, batch_size: int = 1, prepared: bool = False) -> np.ndarray:
    """Dequantized float32 scores (N, classes) of a loaded model for uint8 NHWC images.

    ``batch_size`` images per call (1 by default: some artifacts have a fixed batch of 1, and the
    canary must run exactly what the device runs). ``prepared``: the images already went through
    :func:`prepare_input` (the benchmark prepares them once, outside its timed loop). The daemon's
    and the oracle's timed paths do not use this: they time the runtime call alone.
    """
    x = np.asarray(images)
    outs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        raw = model.predict(chunk if prepared else prepare_input(chunk, model.input_spec))
        y = dequantize_output(np.asarray(raw), model.output_spec)
        outs.append(y.reshape(1, -1) if len(chunk) == 1 else y)  # a batch-1 model may drop the batch axis
    return np.concatenate(outs, axis=0) if outs else np.zeros((0, 0), np.float32)
