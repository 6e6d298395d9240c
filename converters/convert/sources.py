"""What each kind of model a run holds can be converted to, its reference outputs, and how each artifact is made.

A trained or imported Keras model (or a SavedModel, run as Keras) makes all seven targets. An imported
ONNX model makes ONNX fp32 (the file as given), fp16 and int8. An imported TFLite file is served as given,
under the precision it has; a float one also gets ONNX fp32/fp16/int8 through tf2onnx's TFLite frontend.
Artifacts are validated against the source itself: Keras (TensorFlow) for Keras and SavedModel sources,
onnxruntime for ONNX, LiteRT for TFLite, fed with the model's input convention (folded into the graph for
Keras and SavedModel sources, recorded in each artifact's input spec for ONNX and TFLite sources).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from device_profiles import BuildTarget
from edge.artifacts.manifest import TensorSpec

if TYPE_CHECKING:
    from converters.convert.exporters import ExportResult
    from converters.convert.model import ModelDir
    from converters.importing.conventions import InputConvention

NO_TFLITE_FROM_ONNX = ("TFLiteConverter cannot read ONNX and edgekit has no ONNX-to-TFLite converter; import the "
                       "Keras or a TFLite version of the model for TFLite artifacts")
TFLITE_AS_GIVEN = ("a .tflite is served as given ({have}): TFLiteConverter cannot re-quantize a .tflite file "
                   "(ai-edge-quantizer can; it is not part of edgekit); import the Keras model for {want}")
NO_ONNX_FROM_QUANTIZED_TFLITE = ("ONNX is made from float .tflite files only (tf2onnx's TFLite frontend); this one "
                                 "is {have}: import the float .tflite or the Keras model for ONNX artifacts")


@dataclass(frozen=True)
class Unavailable:
    """A profile target a model's source cannot produce, and why (not a failure)."""

    model_id: str
    format: str
    precision: str
    reason: str


class ConvertSource(abc.ABC):
    """One model of a run, as conversion sees it: which targets it allows, its reference, each artifact."""

    def __init__(self, md: ModelDir, model_path: Path):
        self.md = md
        self.model_path = model_path

    def cannot_build(self, t: BuildTarget) -> str | None:
        """Why ``t`` cannot be made from this source (None: it can)."""
        return None

    def calibrated(self, t: BuildTarget) -> bool:
        """Whether making ``t`` uses the calibration images (int8: TFLite full-integer, ONNX static QDQ)."""
        return t.precision == "int8"

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model (Keras, onnxruntime, LiteRT); raises for a file that no longer loads."""

    @abc.abstractmethod
    def reference(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """The source model's float32 scores for uint8 NHWC images: what every artifact is validated against."""

    @abc.abstractmethod
    def export(self, t: BuildTarget, path: Path, calib_images: np.ndarray | None) -> ExportResult:
        """Write the artifact for ``t`` to ``path``."""

    @property
    def convention(self) -> TensorSpec | None:
        """The input spec fields an artifact records for this source (None: raw pixels)."""
        return None

    @abc.abstractmethod
    def input_hw(self) -> tuple[int, int]:
        """The (H, W) the loaded model takes."""

    def _at_model_size(self, images: np.ndarray | None) -> np.ndarray | None:
        """The run's images at the model's input size (a spec with its own resolution, or an import of another
        size), by the one resize."""
        from edge.artifacts.images import resize_pixels

        if images is None or len(images) == 0:
            return images
        h, w = self.input_hw()
        x = images[..., None] if images.ndim == 3 else images
        return x if tuple(x.shape[1:3]) == (h, w) else resize_pixels(x, (h, w))

    def close(self) -> None:
        pass


class KerasConvert(ConvertSource):
    """A trained model or a Keras import (its convention already folded in): every target, validated against Keras."""

    model = None

    def load(self) -> None:
        from converters.convert.model import _load_keras

        self.model = _load_keras(self.model_path)

    def input_hw(self) -> tuple[int, int]:
        from converters.convert.exporters.base import model_input_shape

        h, w, _ = model_input_shape(self.model)
        return h, w

    def reference(self, images, batch_size):
        from converters.convert import validate

        return validate.keras_outputs(self.model, self._at_model_size(images), batch_size=batch_size)

    def export(self, t, path, calib_images):
        from converters.convert.exporters import export_model

        return export_model(self.model, path, t.format, t.precision, calib_images=self._at_model_size(calib_images))

    def close(self) -> None:
        self.model = None


def _convention(md: ModelDir) -> InputConvention:
    from converters.importing.conventions import DEFAULT, InputConvention

    inp = (md.train.get("source") or {}).get("input")
    return InputConvention.from_dict(inp) if isinstance(inp, dict) else DEFAULT


class _Imported(ConvertSource):
    """An ONNX or TFLite import: run by its own runtime through the import's source class."""

    source_cls: type

    def __init__(self, md, model_path):
        super().__init__(md, model_path)
        self.conv = _convention(md)
        self.src = None

    @property
    def convention(self) -> TensorSpec | None:
        if self.conv.raw:
            return None
        return TensorSpec("input", (-1,), "float32", mean=self.conv.mean, std=self.conv.std)

    def load(self) -> None:
        self.src = self.source_cls(self.model_path)
        self.conv = self.conv.for_channels(self.src.input_hwc[2], self.model_path)

    def input_hw(self) -> tuple[int, int]:
        h, w, _ = self.src.input_hwc
        return h, w

    def reference(self, images, batch_size):
        return self.src.scores(images, self.conv)

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
        self.src = None


class OnnxConvert(_Imported):
    def __init__(self, md, model_path):
        from converters.importing.onnx_source import OnnxSource

        self.source_cls = OnnxSource
        super().__init__(md, model_path)

    def cannot_build(self, t):
        return NO_TFLITE_FROM_ONNX if t.format != "onnx" else None

    def export(self, t, path, calib_images):
        from converters.convert.exporters.onnx import from_fp32

        return from_fp32(self.src.data, path, t.precision, self._at_model_size(calib_images),
                         convention=self.convention)


class TfliteConvert(_Imported):
    def __init__(self, md, model_path):
        from converters.importing.tflite_source import TfliteSource

        self.source_cls = TfliteSource
        super().__init__(md, model_path)
        self._precision: str | None = None
        self._onnx: bytes | None = None

    @property
    def precision(self) -> str:
        if self._precision is None:  # recorded by the import (train.json source.precision), else read from the file
            recorded = (self.md.train.get("source") or {}).get("precision")
            if recorded:
                self._precision = str(recorded)
            else:
                from converters.importing.tflite_source import tflite_precision

                self._precision = tflite_precision(self.model_path.read_bytes(), self.model_path)
        return self._precision

    def cannot_build(self, t):
        have = self.precision
        if t.format == "tflite":
            return None if t.precision == have else TFLITE_AS_GIVEN.format(have=have, want=t.precision)
        if t.format == "onnx" and have != "fp32":
            return NO_ONNX_FROM_QUANTIZED_TFLITE.format(have=have)
        return None

    def calibrated(self, t):
        return t.format != "tflite" and super().calibrated(t)  # a .tflite is served as given

    def export(self, t, path, calib_images):
        if t.format == "tflite":
            from converters.convert.exporters.tflite import from_file

            return from_file(self.src.data, path, t.precision, convention=self.convention)
        from converters.convert.exporters.onnx import from_fp32, from_tflite

        if self._onnx is None:
            self._onnx = from_tflite(self.model_path)
        return from_fp32(self._onnx, path, t.precision, self._at_model_size(calib_images),
                         convention=self.convention)


class SavedModelConvert(KerasConvert):
    """A SavedModel import: a Keras model over its serving signature (TFSMLayer) with the convention folded in
    front, so every target, validated against TensorFlow running the SavedModel."""

    def load(self) -> None:
        from converters.importing.keras_source import fold
        from converters.importing.savedmodel_source import keras_model

        model, hwc, _ = keras_model(self.model_path)
        self.model = fold(model, _convention(self.md).for_channels(hwc[2], self.model_path), hwc)


_BY_FORMAT: dict[str, type[ConvertSource]] = {"keras": KerasConvert, "onnx": OnnxConvert, "tflite": TfliteConvert,
                                              "savedmodel": SavedModelConvert}
FOLDER_FORMATS = ("savedmodel",)  # whose model is a folder, not a file


def model_sha256(path: Path) -> str:
    """What an artifact records as its source: the model file's sha256, or a SavedModel folder's tree hash."""
    if path.is_dir():
        from converters.importing.savedmodel_source import tree_sha256

        return tree_sha256(path)
    from edge.core.atomic import sha256_file

    return sha256_file(path)


def model_payload(path: Path) -> bytes:
    """The model as bytes for a Ray task: the file, or an uncompressed tar of the folder's regular files."""
    if not path.is_dir():
        return path.read_bytes()
    import io
    import tarfile

    from converters.importing.savedmodel_source import tree_files

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in tree_files(path):
            tar.add(p, arcname=str(p.relative_to(path)), recursive=False)
    return buf.getvalue()


def write_payload(data: bytes, dest: Path, folder: bool) -> None:
    """Undo :func:`model_payload` in a Ray task's own folder (the tar is this process's, regular files only)."""
    if not folder:
        dest.write_bytes(data)
        return
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


def convert_source(md: ModelDir, model_path: Path | None = None) -> ConvertSource:
    """The conversion side of ``md`` (its model file at ``model_path``, by default the run's)."""
    return _BY_FORMAT[md.source](md, model_path or md.model_path)


def uses_calibration(md: ModelDir, t: BuildTarget) -> bool:
    """Whether ``md``'s artifact for ``t`` is calibrated (so it depends on the calibration images)."""
    return convert_source(md).calibrated(t)


def plan_targets(md: ModelDir, targets: list[BuildTarget]) -> tuple[list[BuildTarget], list[Unavailable]]:
    """(the targets ``md``'s source can make, the others with the reason)."""
    cs = convert_source(md)
    can, cannot = [], []
    for t in targets:
        why = cs.cannot_build(t)
        if why is None:
            can.append(t)
        else:
            cannot.append(Unavailable(md.model_id, t.format, t.precision, why))
    return can, cannot
