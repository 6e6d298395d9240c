"""LiteRT (.tflite) weights through TensorFlow's own flatbuffer object API (tensorflow.lite.tools.flatbuffer_utils)."""

from __future__ import annotations

import numpy as np

from converters.pack.degrade.weights import WeightTensor

# tflite schema TensorType -> numpy dtype, for the weight encodings edgekit's artifacts hold
_DTYPES = {0: np.float32, 1: np.float16, 3: np.uint8, 9: np.int8}


class TFLiteWeights:
    def __init__(self, data: bytes):
        from tensorflow.lite.tools import flatbuffer_utils

        self._fb = flatbuffer_utils
        self._data = bytes(data)
        model = self._read()
        found: dict[int, WeightTensor] = {}  # by buffer: a buffer shared by two tensors is one weight
        self._buffer_of: dict[str, int] = {}
        self._tensor_of: dict[str, list] = {}
        for g, graph in enumerate(model.subgraphs):
            for t, tensor in enumerate(graph.tensors):
                buf = model.buffers[tensor.buffer]
                shape = [] if tensor.shape is None else [int(s) for s in tensor.shape]
                if tensor.type not in _DTYPES or buf.data is None or len(buf.data) == 0 or len(shape) < 2:
                    continue
                dtype = np.dtype(_DTYPES[tensor.type])
                if len(buf.data) != dtype.itemsize * int(np.prod(shape)):
                    continue
                name = f"{g}:{t}:{tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name}"
                self._tensor_of.setdefault(str(tensor.buffer), []).append((g, t))
                if tensor.buffer in found:
                    continue
                values = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), dtype).reshape(shape)
                q = tensor.quantization
                scale = None
                if dtype.kind in "iu" and q is not None and q.scale is not None and len(q.scale):
                    scale = np.asarray(q.scale, np.float32).copy()
                found[tensor.buffer] = WeightTensor(name, values, scale)
                self._buffer_of[name] = tensor.buffer
        self._tensors = tuple(found.values())

    def _read(self):
        return self._fb.read_model_from_bytearray(bytearray(self._data))

    def tensors(self) -> tuple[WeightTensor, ...]:
        return self._tensors

    def with_changes(self, values: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> bytes:
        model = self._read()
        by_name = {w.name: w for w in self._tensors}
        for name, arr in values.items():
            want = by_name[name].values
            model.buffers[self._buffer_of[name]].data = np.frombuffer(
                np.ascontiguousarray(arr, want.dtype).tobytes(), np.uint8).copy()
        for name, scale in scales.items():
            for g, t in self._tensor_of[str(self._buffer_of[name])]:
                model.subgraphs[g].tensors[t].quantization.scale = np.asarray(scale, np.float32).copy()
        return bytes(self._fb.convert_object_to_bytearray(model))
