"""ONNX weights through the onnx package: initializers, and the scales of the DequantizeLinear nodes over them."""

from __future__ import annotations

import numpy as np

from converters.pack.degrade.weights import WeightTensor

_KINDS = (np.float32, np.float16, np.int8, np.uint8)


class ONNXWeights:
    def __init__(self, data: bytes):
        import onnx
        from onnx import numpy_helper

        self._onnx, self._helper = onnx, numpy_helper
        self._model = onnx.load_from_string(bytes(data))
        graph = self._model.graph
        inits = {i.name: i for i in graph.initializer}
        scale_of: dict[str, str] = {}
        for node in graph.node:  # a QDQ int8 model: weight --DequantizeLinear(scale, zero point)--> conv
            if node.op_type == "DequantizeLinear" and len(node.input) >= 2 and node.input[0] in inits:
                scale_of[node.input[0]] = node.input[1]
        self._scale_of: dict[str, str] = {}
        found = []
        for name, init in inits.items():
            values = numpy_helper.to_array(init)
            if values.ndim < 2 or values.dtype not in [np.dtype(k) for k in _KINDS]:
                continue
            scale = None
            if values.dtype.kind in "iu" and scale_of.get(name) in inits:
                self._scale_of[name] = scale_of[name]
                scale = numpy_helper.to_array(inits[scale_of[name]]).astype(np.float32)
            found.append(WeightTensor(name, values, scale))
        self._tensors = tuple(found)

    def tensors(self) -> tuple[WeightTensor, ...]:
        return self._tensors

    def with_changes(self, values: dict[str, np.ndarray], scales: dict[str, np.ndarray]) -> bytes:
        model = self._onnx.ModelProto()
        model.CopyFrom(self._model)
        inits = {i.name: i for i in model.graph.initializer}
        by_name = {w.name: w for w in self._tensors}
        for name, arr in values.items():
            inits[name].CopyFrom(self._helper.from_array(np.asarray(arr, by_name[name].values.dtype), name))
        for name, scale in scales.items():
            sname = self._scale_of[name]
            old = self._helper.to_array(inits[sname])
            inits[sname].CopyFrom(self._helper.from_array(np.asarray(scale, old.dtype).reshape(old.shape), sname))
        return model.SerializeToString()
