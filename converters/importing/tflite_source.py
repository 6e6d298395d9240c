"""A user's TFLite model: verified and run with LiteRT, kept as model.tflite and served under the precision it has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.importing.conventions import InputConvention
from converters.importing.sources import EVAL_BATCH, Source, check_image_model, check_scores
from device_profiles import RuntimeSetting
from edge.core.atomic import atomic_write_bytes, sha256_bytes
from edge.core.errors import UsageError

FILE_NAME = "model.tflite"


def _interpreter(data: bytes, path: Path | str):
    """A LiteRT interpreter over ``data`` (LiteRT verifies the flatbuffer first); an error naming ``path``."""
    from edge.backends.litert import new_interpreter

    try:
        interp = new_interpreter(model_content=data, num_threads=1)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(f"{path} is not a TFLite model LiteRT can load ({' '.join(str(exc).split())[:300]}); it is "
                         "truncated or not a .tflite file: convert it again (tf.lite.TFLiteConverter)") from None
    return interp


def tflite_precision(data: bytes, path: Path | str = "the model") -> str:
    """What a .tflite file is, read from its tensors: int8 (integer input), dynamic (float input, int8 weights),
    fp16 (float16 weights) or fp32."""
    interp = _interpreter(data, path)
    inp = interp.get_input_details()[0]
    if np.dtype(inp["dtype"]).kind in "iu":
        return "int8"
    kinds = {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    if np.dtype(np.int8) in kinds:
        return "dynamic"
    if np.dtype(np.float16) in kinds:
        return "fp16"
    return "fp32"


class TfliteSource(Source):
    """.tflite: one image input (float or quantized), one (N, classes) output, served as given."""

    format = "tflite"
    file_name = FILE_NAME

    def __init__(self, path: Path):
        super().__init__(path)
        self.data = path.read_bytes()
        self.sha256 = sha256_bytes(self.data)
        interp = _interpreter(self.data, path)
        ins, outs = interp.get_input_details(), interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise UsageError(f"{path}: the model has {len(ins)} inputs and {len(outs)} outputs; edgekit imports "
                             "image classifiers with one image input and one (N, classes) output")
        shape = tuple(int(s) for s in ins[0].get("shape_signature", ins[0]["shape"]))
        out_shape = tuple(int(s) for s in outs[0].get("shape_signature", outs[0]["shape"]))
        self.input_hwc = check_image_model(path, shape, "its")
        self.classes = check_scores(path, out_shape, "its")
        self.precision = tflite_precision(self.data, path)
        self._model = None

    def _load(self):
        from edge.backends import get_backend

        if self._model is None:
            self._model = get_backend("litert").load(self.data, RuntimeSetting(name="import", backend="litert",
                                                                                threads=1))
        return self._model

    def scores(self, images: np.ndarray, convention: InputConvention) -> np.ndarray:
        from edge.artifacts.tensors import scores, with_recorded_input

        lm = self._load()
        lm = with_recorded_input(lm, convention.for_channels(self.input_hwc[2], self.path).tensor_spec(lm.input_spec))
        x = self.at_input_size(images)
        try:
            return scores(lm, x, batch_size=EVAL_BATCH)
        except (ValueError, RuntimeError):  # a graph with a fixed batch: one image at a time
            self.close()
            lm = with_recorded_input(self._load(), lm.input_spec)
            return scores(lm, x, batch_size=1)

    def write(self, model_dir: Path, convention: InputConvention) -> Path:
        return atomic_write_bytes(model_dir / self.file_name, self.data)

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model = None

