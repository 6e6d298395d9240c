"""A user's ONNX model: external data checked to stay in its folder before anything loads it, then kept as model.onnx.

ONNX external data names files by path; a crafted model can point outside its folder ("../x", an
absolute path, a symlink) and make a loader read any file (CVE-2022-25882). Every location is resolved
and checked here before onnx reads a byte of it; the run keeps one self-contained model.onnx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from converters.importing.conventions import InputConvention
from converters.importing.sources import EVAL_BATCH, Source, check_image_model, check_scores
from edge.core.atomic import atomic_write_bytes, sha256_bytes
from edge.core.errors import StepFailed, UsageError

FILE_NAME = "model.onnx"
MAX_PROTO = 2 << 30  # protobuf's limit for one serialized model
NHWC_INPUT = "pixels_nhwc"


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise StepFailed("importing ONNX models needs the onnx package: pip install onnx "
                         "(or the workstation extra: pip install -e '.[train]')") from None
    return onnx


def _graph_tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers, sparse ones, node attributes, subgraphs (If, Loop, Scan)."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node) -> Iterator:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sp in attr.sparse_tensors:
            yield sp.values
            yield sp.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def model_tensors(proto) -> Iterator:
    yield from _graph_tensors(proto.graph)
    for fn in proto.functions:
        for node in fn.node:
            yield from _node_tensors(node)


def check_external_data(proto, path: Path) -> int:
    """Refuse any external-data location that leaves the model's folder; returns how many tensors use one."""
    onnx = _require_onnx()
    base = path.parent.resolve()
    n = 0
    for t in model_tensors(proto):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        n += 1
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        where = f"{path}: tensor {t.name!r} keeps its data in an external file"
        if not loc:
            raise UsageError(f"{where} but names no location; export the model again with its data inside")
        rel = Path(loc)
        if rel.is_absolute() or os.path.isabs(loc) or ".." in rel.parts or "\\" in loc or "\0" in loc:
            raise UsageError(f"{where} at {loc!r}, outside the model's folder {base} (absolute or '..' paths are "
                             "refused: the path-traversal class of CVE-2022-25882); put the data file beside the "
                             "model and name it by a plain relative path, or save the model with its data inside")
        target = (base / rel).resolve()
        if target != base and base not in target.parents:
            raise UsageError(f"{where} at {loc!r}, which resolves to {target}, outside the model's folder {base} "
                             "(a symlink?); put the data file itself beside the model")
        if not target.is_file():
            raise UsageError(f"{where} at {loc!r}, but {target} is not a file; copy the data file beside the model")
    return n


def nchw_to_nhwc(proto, path: Path) -> tuple[int, ...]:
    """Give a channels-first model an NHWC input: a Transpose(0, 3, 1, 2) in front of its graph."""
    onnx = _require_onnx()
    from onnx import helper

    graph = proto.graph
    inp = graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    n, c, h, w = dims
    new = helper.make_tensor_value_info(NHWC_INPUT, inp.type.tensor_type.elem_type,
                                        [n.dim_param or n.dim_value or None, h.dim_value, w.dim_value, c.dim_value])
    node = helper.make_node("Transpose", [NHWC_INPUT], [inp.name], perm=[0, 3, 1, 2], name="edgekit_nhwc_to_nchw")
    old_name = inp.name
    graph.node.insert(0, node)
    graph.input.remove(inp)
    graph.input.insert(0, new)
    if any(i.name == old_name for i in graph.input):  # pragma: no cover - defensive
        raise StepFailed(f"{path}: could not move the input {old_name!r} behind a transpose")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UsageError(f"{path}: the channels-first model does not check once transposed to NHWC ({exc}); "
                         "export it channels-last (N, H, W, C)") from None
    return (-1, h.dim_value, w.dim_value, c.dim_value)


def _dims(value_info) -> tuple:
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in value_info.type.tensor_type.shape.dim)


def fixed_batch(proto) -> int | None:
    """The input's fixed batch size, or None when it is dynamic."""
    d = proto.graph.input[0].type.tensor_type.shape.dim
    return int(d[0].dim_value) if d and d[0].HasField("dim_value") and d[0].dim_value > 0 else None


def read_onnx(path: Path):
    """The model in ``path`` (untrusted): parsed, external data checked then loaded in, checked by onnx.checker."""
    onnx = _require_onnx()
    from google.protobuf.message import DecodeError

    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)  # external data is not read from a string
    except (DecodeError, ValueError, RuntimeError, TypeError) as exc:
        raise UsageError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}); it is truncated or not ONNX: "
                         "export it again (torch.onnx.export, tf2onnx)") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise UsageError(f"{path} is not an ONNX model (no graph in it); it is truncated or not ONNX: export it "
                         "again (torch.onnx.export, tf2onnx)")
    if check_external_data(proto, path):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(path.parent.resolve()))
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        raise UsageError(f"{path} is not a valid ONNX model ({' '.join(str(exc).split())[:400]}); it is truncated "
                         "or damaged: export it again") from None
    return proto, sha256_bytes(data)


class OnnxSource(Source):
    """.onnx: one NHWC (or transposed NCHW) float image input, one (N, classes) output, run with onnxruntime."""

    format = "onnx"
    file_name = FILE_NAME

    def __init__(self, path: Path):
        super().__init__(path)
        onnx = _require_onnx()
        proto, self.sha256 = read_onnx(path)
        graph = proto.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise UsageError(f"{path}: the model has {len(inputs)} inputs and {len(graph.output)} outputs; edgekit "
                             "imports image classifiers with one image input and one (N, classes) output")
        if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise UsageError(f"{path}: its input is of ONNX type "
                             f"{onnx.TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)}; edgekit feeds "
                             "float32 images (with the input convention applied)")
        shape = _dims(inputs[0])
        if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
            nchw = shape
            nchw_to_nhwc(proto, path)
            shape = _dims(proto.graph.input[0])
            self.note(f"channels-first input {nchw} given an NHWC input {shape} (Transpose in front)")
        self.input_hwc = check_image_model(path, shape, "its")
        self.classes = check_scores(path, _dims(graph.output[0]), "its")
        self.batch = fixed_batch(proto)
        self.params = int(sum(int(np.prod(i.dims)) for i in graph.initializer))
        self.data = proto.SerializeToString()
        if len(self.data) >= MAX_PROTO:
            raise UsageError(f"{path}: the model with its external data is {len(self.data)} bytes, over ONNX's "
                             "2 GiB limit for one file; edgekit imports models that fit in one file")
        self._session = None
        try:
            self._load()
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}; export it again with an opset onnxruntime supports") from None

    def _load(self):
        from device_profiles import RuntimeSetting
        from edge.backends import get_backend

        if self._session is None:
            setting = RuntimeSetting(name="import", backend="onnxruntime", threads=os.cpu_count() or 1)
            self._session = get_backend("onnxruntime").load(self.data, setting)
        return self._session

    def scores(self, images: np.ndarray, convention: InputConvention) -> np.ndarray:
        from edge.artifacts.tensors import scores, with_recorded_input

        lm = self._load()
        spec = convention.for_channels(self.input_hwc[2], self.path).tensor_spec(lm.input_spec)
        lm = with_recorded_input(lm, spec)
        return scores(lm, self.at_input_size(images), batch_size=self.batch or EVAL_BATCH)

    def write(self, model_dir: Path, convention: InputConvention) -> Path:
        return atomic_write_bytes(model_dir / self.file_name, self.data)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        self._session = None
