"""ONNX Runtime backend: execution providers tried in the profile's order, the one used recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from device_profiles import RuntimeSetting
from edge.artifacts.manifest import TensorSpec
from edge.backends.base import Backend, BackendUnavailable, LoadedModel
from edge.core.errors import StepFailed, UsageError

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _spec(arg) -> TensorSpec:
    shape = tuple(int(s) if isinstance(s, int) else -1 for s in arg.shape)
    return TensorSpec(name=arg.name, shape=(-1,) + shape[1:], dtype=_ORT_TYPES.get(arg.type, arg.type))


class OrtModel(LoadedModel):
    def __init__(self, sess, provider: str):
        self._sess = sess
        self._in = sess.get_inputs()[0]
        self._out = sess.get_outputs()[0]
        self.input_spec = _spec(self._in)
        self.output_spec = _spec(self._out)
        self.provider = provider
        self._feed: dict | None = None
        self._last: np.ndarray | None = None
        self._names = [self._out.name]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.dtype(self.input_spec.dtype):
            raise UsageError(f"input dtype {batch.dtype} does not match the model's {self.input_spec.dtype}")
        return self._sess.run(self._names, {self._in.name: batch})[0]

    def set_input(self, batch: np.ndarray) -> None:
        self._feed = {self._in.name: np.ascontiguousarray(batch)}

    def invoke_prepared(self) -> None:
        self._last = self._sess.run(self._names, self._feed)[0]

    def output(self) -> np.ndarray:
        if self._last is None:
            raise StepFailed("output() called before invoke_prepared()")
        return self._last

    def close(self) -> None:
        self._sess = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    format = "onnx"

    def __init__(self):
        try:
            import onnxruntime as ort  # type: ignore
        except ImportError:
            raise BackendUnavailable(
                "ONNX Runtime is not installed: pip install onnxruntime (onnxruntime-gpu on Jetson)"
            ) from None
        self._ort = ort

    def version(self) -> str:
        return f"onnxruntime {self._ort.__version__}"

    def load(self, model: bytes | str | Path, setting: RuntimeSetting) -> OrtModel:
        ort = self._ort
        available = set(ort.get_available_providers())
        wanted = [p for p in setting.providers if p in available]
        if not wanted:
            wanted = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(setting.threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        src = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
        try:
            sess = ort.InferenceSession(src, sess_options=opts, providers=wanted)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph...)
            raise UsageError(f"ONNX Runtime could not load the model: {exc}") from None
        used = sess.get_providers()[0] if sess.get_providers() else "CPUExecutionProvider"
        return OrtModel(sess, used)
