"""A user's Keras model (.keras, .h5): loaded in safe mode, its input convention folded in front of its graph."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from converters.importing.conventions import InputConvention
from converters.importing.sources import EVAL_BATCH, Source, check_image_model, check_scores
from converters.train.run_folder import MODEL_FILE, MODEL_TMP_PREFIX, MODEL_TMP_SUFFIX
from edge.core.atomic import sha256_file
from edge.core.errors import StepFailed, UsageError

CONVENTION_LAYER = "edgekit_input_convention"
REFUSED_CLASSES = ("Lambda",)  # layers whose config carries Python code


def _safe_mode_error(path: Path, what: str) -> UsageError:
    return UsageError(
        f"{path}: Keras safe mode refused to run its code: it has a {what} layer, whose Python code edgekit never "
        "runs (a model file is untrusted input). Rebuild the model without Lambda layers (use built-in layers, "
        "e.g. keras.layers.Rescaling for input scaling, or a registered custom layer class), save it again and "
        "import that file")


def _walk_classes(obj: Any) -> Iterator[str]:
    """Every ``class_name`` in a Keras config (nested models, wrappers, functional layers)."""
    if isinstance(obj, dict):
        name = obj.get("class_name")
        if isinstance(name, str):
            yield name
        for v in obj.values():
            yield from _walk_classes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_classes(v)


def read_config(path: Path) -> Any:
    """The model's architecture (JSON) read without Keras: config.json of a .keras zip, model_config of an .h5."""
    if path.suffix.lower() == ".keras":
        try:
            with zipfile.ZipFile(path) as zf:
                text = zf.read("config.json")
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            raise UsageError(f"{path} is not a readable .keras file (a zip archive with config.json): {exc}; "
                             "it is truncated or not a Keras model: save it again with model.save('name.keras')"
                             ) from None
    else:
        try:
            import h5py
        except ImportError:  # pragma: no cover - Keras depends on h5py
            raise StepFailed("reading .h5 models needs h5py: pip install h5py") from None
        try:
            with h5py.File(path, "r") as f:
                text = f.attrs.get("model_config")
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path} is not a readable HDF5 Keras model: {exc}; it is truncated or not a Keras "
                             "model: save it again with model.save('name.keras')") from None
        if text is None:
            raise UsageError(f"{path} holds weights only (no model_config); save the whole model with "
                             "model.save('name.keras')")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: its model config is not valid JSON ({exc}); save the model again") from None


def _custom_objects() -> dict:
    try:
        from converters.family.keras_build import custom_objects
    except ImportError:  # pragma: no cover - the family package ships with converters
        return {}
    return custom_objects()


def load_safely(path: Path):
    """A Keras model from an untrusted file: its config scanned for code-carrying layers, then safe-mode loading."""
    import keras

    for name in _walk_classes(read_config(path)):
        if name in REFUSED_CLASSES:
            raise _safe_mode_error(path, name)
    try:
        return keras.saving.load_model(str(path), custom_objects=_custom_objects(), compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError... for a bad file
        msg = " ".join(str(exc).split())
        if "safe_mode" in msg or "unsafe_deserialization" in msg:
            raise _safe_mode_error(path, "code-carrying") from None
        raise UsageError(f"{path}: Keras cannot load it in safe mode: {msg[:600]}; edgekit imports models of "
                         "built-in Keras layers (save it again with model.save('name.keras'))") from None


def fold(model, convention: InputConvention, hwc: tuple[int, int, int]):
    """``model`` behind a Rescaling layer computing ``convention``, so that it takes raw pixels 0..255."""
    import keras

    if convention.raw:
        return model
    conv = convention.for_channels(hwc[2])
    inp = keras.Input(hwc, dtype="float32", name="pixels")
    # (x - mean) / std as x * (1 / std) + (-mean / std), one value per channel.
    x = keras.layers.Rescaling(scale=[1.0 / s for s in conv.std], offset=[-m / s for m, s in zip(conv.mean, conv.std)],
                               name=CONVENTION_LAYER)(inp)
    return keras.Model(inp, model(x), name=model.name)


def keras_scores(model, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    import keras

    x = np.asarray(images)
    outs = [keras.ops.convert_to_numpy(model(x[i : i + batch].astype(np.float32), training=False))
            for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def count(model) -> tuple[int, int]:
    try:
        from converters.family.keras_build import count_params_macs

        return count_params_macs(model)
    except Exception:  # an estimate for the tables only; a layer it cannot measure leaves MACs unknown
        return int(model.count_params()), 0


class KerasGraphSource(Source):
    """A source loaded as a Keras model (a .keras/.h5 file or a SavedModel): scored with its input convention
    folded into the graph, each convention folded once; subclasses set ``model`` and ``input_hwc``."""

    model: Any = None

    def __init__(self, path: Path):
        super().__init__(path)
        self._folded: dict[tuple, Any] = {}

    def folded(self, convention: InputConvention):
        key = (convention.mean, convention.std)
        if key not in self._folded:
            self._folded[key] = fold(self.model, convention, self.input_hwc)
        return self._folded[key]

    def scores(self, images: np.ndarray, convention: InputConvention) -> np.ndarray:
        return keras_scores(self.folded(convention), self.at_input_size(images))

    def close(self) -> None:
        import keras

        self.model = None
        self._folded.clear()
        keras.backend.clear_session()


class KerasSource(KerasGraphSource):
    """.keras or .h5: checked, loaded in safe mode, kept as model.keras with the convention folded in."""

    format = "keras"
    file_name = MODEL_FILE

    def __init__(self, path: Path):
        super().__init__(path)
        self.sha256 = sha256_file(path)
        self.model = load_safely(path)
        inputs, outputs = list(self.model.inputs or []), list(self.model.outputs or [])
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"{path}: the model has {len(inputs)} inputs and {len(outputs)} outputs; edgekit "
                             "imports image classifiers with one image input and one (N, classes) output")
        self.input_hwc = check_image_model(path, tuple(inputs[0].shape), "its")
        self.classes = check_scores(path, tuple(outputs[0].shape), "its")
        self.params, self.macs = count(self.model)

    def write(self, model_dir: Path, convention: InputConvention) -> Path:
        """model.keras (atomically, its temp file in ``model_dir``); it must reload in safe mode to the same outputs."""
        model = self.folded(convention)
        out = model_dir / self.file_name
        tmp = model_dir / f"{MODEL_TMP_PREFIX}{os.getpid()}{MODEL_TMP_SUFFIX}"
        try:
            model.save(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            reloaded = load_safely(tmp)
            probe = np.random.default_rng(0).integers(0, 256, (4, *self.input_hwc)).astype(np.uint8)
            diff = float(np.max(np.abs(keras_scores(model, probe) - keras_scores(reloaded, probe))))
            if not np.isfinite(diff) or diff > 1e-4 * max(1.0, float(np.abs(keras_scores(model, probe)).max())):
                raise StepFailed(f"{self.path}: the model saved as {out} reloads with different outputs "
                                 f"(max diff {diff:g}); it cannot be imported as a .keras file")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out
