"""Imported model sources: what each format must tell the import, and the registry by file suffix or folder."""

from __future__ import annotations

import abc
import importlib
from pathlib import Path

import numpy as np

from converters.importing.conventions import InputConvention
from edge.core.errors import UsageError

# suffix -> format; a folder holding saved_model.pb is a SavedModel.
SUFFIXES: dict[str, str] = {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".onnx": "onnx", ".tflite": "tflite"}
SAVED_MODEL_FILE = "saved_model.pb"
# format -> "module:Class", imported on first use so a missing optional dependency breaks only its format.
_REGISTRY: dict[str, str] = {
    "keras": "converters.importing.keras_source:KerasSource",
    "onnx": "converters.importing.onnx_source:OnnxSource",
    "tflite": "converters.importing.tflite_source:TfliteSource",
    "savedmodel": "converters.importing.savedmodel_source:SavedModelSource",
}
ACCEPTED = ".keras, .h5 (Keras), a SavedModel folder (with saved_model.pb), .onnx, .tflite"
EVAL_BATCH = 256


class Source(abc.ABC):
    """One user model file, opened and checked; subclasses fill in the fields in ``__init__``."""

    format: str = ""  # keras | onnx | tflite | savedmodel: the format of the model the run keeps
    file_name: str = ""  # model.keras | model.onnx | model.tflite | saved_model (a folder)

    def __init__(self, path: Path):
        self.path = path
        self.sha256 = ""
        self.input_hwc: tuple[int, int, int] = (0, 0, 0)
        self.classes = 0
        self.precision = "fp32"  # what the run serves it as (a TFLite file: read from the file)
        self.params = 0
        self.macs = 0  # 0 when unknown
        self.notes: tuple[str, ...] = ()  # what the import changed, e.g. a channels-first input transposed

    def note(self, text: str) -> None:
        """Record what the import changes about this model (printed and kept in its train.json)."""
        self.notes = (*self.notes, text)

    @abc.abstractmethod
    def scores(self, images: np.ndarray, convention: InputConvention) -> np.ndarray:
        """float32 (N, classes) scores of the model for uint8 NHWC images, fed as ``convention`` says; images of
        another height and width (the run's) are resized to the model's first (``at_input_size``)."""

    def at_input_size(self, images: np.ndarray) -> np.ndarray:
        """uint8 NHWC images at this model's input height and width: resized by the one resize
        (``edge.artifacts.images.resize_pixels``, as training, the bundle, the benchmark and serving resize) when
        only those differ from the run's, else as they are."""
        x = np.asarray(images)
        h, w, _ = self.input_hwc
        if x.ndim != 4 or tuple(x.shape[1:3]) == (h, w):
            return x
        from edge.artifacts.images import resize_pixels

        return resize_pixels(x, (h, w))

    @abc.abstractmethod
    def write(self, model_dir: Path, convention: InputConvention) -> Path:
        """Write the run's copy of the model into ``model_dir`` atomically (temp files there); returns its path."""

    def close(self) -> None:
        pass

    def describe_input(self) -> str:
        h, w, c = self.input_hwc
        return f"{h}x{w}x{c}"


def source_format(path: Path) -> str:
    """The format of ``path`` by suffix (or a SavedModel folder); an error naming it and what is accepted."""
    if path.is_dir():
        if (path / SAVED_MODEL_FILE).is_file():
            return "savedmodel"
        raise UsageError(f"{path} is a folder without {SAVED_MODEL_FILE}, so not a SavedModel; edgekit import "
                         f"accepts {ACCEPTED}")
    if not path.exists():
        raise UsageError(f"{path}: no such model file; edgekit import accepts {ACCEPTED}")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}; edgekit import "
                         f"accepts {ACCEPTED}")
    return fmt


def open_source(path: str | Path) -> Source:
    """Open and check one model file (untrusted input) with the source module of its format."""
    p = Path(path).expanduser()
    fmt = source_format(p)
    mod, _, cls = _REGISTRY[fmt].partition(":")
    return getattr(importlib.import_module(mod), cls)(p)


def check_image_model(path: Path, shape: tuple, what: str) -> tuple[int, int, int]:
    """(H, W, C) of an (N, H, W, C) image input with fixed H, W, C of 1 or 3 channels; else an error naming it."""
    if len(shape) != 4:
        raise UsageError(f"{path}: {what} input has shape {tuple(shape)}; edgekit feeds images as (N, H, W, C)")
    h, w, c = shape[1:]
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in (h, w, c)):
        raise UsageError(f"{path}: {what} input {tuple(shape)} needs a fixed height, width and channels "
                         "(N, H, W, C); export it with a fixed input size")
    if int(c) not in (1, 3):
        raise UsageError(f"{path}: {what} input {tuple(shape)} has {c} channels; edgekit feeds grayscale (1) or "
                         "RGB (3) images as (N, H, W, C)")
    return int(h), int(w), int(c)


def check_scores(path: Path, shape: tuple, what: str) -> int:
    """The class count of an (N, classes) output; else an error naming the file."""
    if len(shape) != 2 or not isinstance(shape[1], (int, np.integer)) or shape[1] < 2:
        raise UsageError(f"{path}: {what} output has shape {tuple(shape)}; edgekit needs one (N, classes) output of "
                         "class scores (logits or softmax probabilities)")
    return int(shape[1])
