"""Converting one model's artifacts: the events it yields, in order, whether it runs here or as a Ray task.

Each event (Note, Started, Built, Failed) is made in this process or in a Ray task and applied to the
run folder and manifest by the driver (``converters.convert.record.Recorder.apply``).
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from converters.cluster import ray_sweep
from converters.cluster.ray_sweep import RayOptions
from device_profiles import BuildTarget
from edge.artifacts.manifest import artifact_id

if TYPE_CHECKING:
    from converters.convert.exporters import ExportResult
    from converters.convert.validate import Validation


@dataclass(frozen=True)
class ModelDir:
    """One finished model of a run (train.json present): trained (model.keras) or imported (train.json's source)."""

    model_id: str
    path: Path
    model_path: Path  # model.keras, or an import's model.onnx / model.tflite / saved_model folder
    train: dict[str, Any]
    source: str = "keras"  # keras | onnx | tflite | savedmodel: what the model file is

    @property
    def imported(self) -> bool:
        return isinstance(self.train.get("source"), dict)


@dataclass(frozen=True)
class Note:
    """A line to print: a WARN, or the FAIL of a model that does not load."""

    text: str


@dataclass(frozen=True)
class Started:
    """An artifact's conversion begins (the bar shows its id)."""

    artifact_id: str


@dataclass(frozen=True)
class Built:
    """An artifact converted and validated."""

    target: BuildTarget
    rel: str  # the artifact's path in the run folder
    result: ExportResult
    validation: Validation
    seconds: float
    data: bytes | None = None  # the artifact's bytes when a Ray task built it (in its own temporary folder)


@dataclass(frozen=True)
class Failed:
    """An artifact that could not be built or validated."""

    target: BuildTarget
    rel: str
    seconds: float
    error: str
    line: str = ""  # the FAIL line to print; "" when a Note said it for the whole model


def artifact_path(model_id: str, t: BuildTarget) -> tuple[str, str]:
    """(artifact id, its path in the run folder) of one model's artifact for a build target."""
    from converters.convert.exporters import extension

    aid = artifact_id(model_id, t.format, t.precision)
    return aid, f"artifacts/{aid}.{extension(t.format)}"


def _load_keras(path: Path):
    try:
        from converters.family.keras_build import load_keras_model
    except ImportError:
        # Families (custom layers) not installed: plain Keras still loads built-in-layer models safely.
        import keras

        return keras.saving.load_model(str(path), safe_mode=True)
    return load_keras_model(path)


def convert_one(md: ModelDir, model_path: Path, todo: list[BuildTarget], out_root: Path, x_eval, y_eval, x_calib,
                limit_test: int | None, max_drop: float, batch_size: int) -> Iterator[Any]:
    """Convert and validate one model's ``todo`` artifacts under ``out_root``; yields what happens, in order.

    The model file is ``model_path`` (the run's, or a Ray worker's copy); every artifact is validated
    against the source model's own outputs (converters.convert.sources).
    """
    from converters.convert import validate
    from converters.convert.sources import convert_source

    src = convert_source(md, model_path)
    try:
        src.load()
        reference = src.reference(x_eval, batch_size)
    except Exception as exc:  # Keras and the runtimes raise many types for a bad file; one model must not stop the rest
        msg = " ".join(f"cannot load {md.model_path}: {exc}".split())
        yield Note(f"FAIL  {md.model_id}: {msg[:500]}")
        for t in todo:
            yield Failed(t, artifact_path(md.model_id, t)[1], 0.0, msg)
        src.close()
        return
    warnings: list[str] = []
    _check_reload(md, reference, y_eval, limit_test, warnings.append)
    yield from (Note(w) for w in warnings)

    for t in todo:
        aid, rel = artifact_path(md.model_id, t)
        yield Started(aid)
        t0 = time.perf_counter()
        try:
            res = src.export(t, out_root / rel, x_calib)
            v = validate.validate_artifact(
                res.path, t.format, x_eval, y_eval, reference, max_drop=max_drop, batch_size=batch_size,
                input_spec=res.input,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            msg = " ".join(str(exc).split())
            yield Failed(t, rel, time.perf_counter() - t0, msg, line=f"FAIL  {aid}: {msg[:500]}")
            continue
        yield Built(t, rel, res, v, time.perf_counter() - t0)
    src.close()
    del src
    _release_keras()


def convert_task(md: ModelDir, model_bytes: bytes, todo: list[BuildTarget], evalset, limit_test: int | None,
                 max_drop: float, batch_size: int, ray: RayOptions) -> list[Any]:
    """A Ray task: convert and validate one model's ``todo`` artifacts in a temporary folder of its worker.

    Gets the model file as bytes and returns its events, each built artifact's bytes included, for the driver
    to apply (``Recorder.apply``); the worker never opens the run folder.
    """
    from converters.convert.sources import FOLDER_FORMATS, write_payload

    ray_sweep.init_worker(ray)
    events: list[Any] = []
    with ray_sweep.task_folder() as root:
        model_path = root / md.model_path.name
        write_payload(model_bytes, model_path, folder=md.source in FOLDER_FORMATS)
        for ev in convert_one(md, model_path, todo, root, *evalset, limit_test, max_drop, batch_size):
            if isinstance(ev, Built):
                ev = dataclasses.replace(ev, data=(root / ev.rel).read_bytes(),
                                         result=dataclasses.replace(ev.result, path=Path(ev.rel)))
            events.append(ev)
        ray_sweep.crash_point(md.model_id)
    return events


def _check_reload(md: ModelDir, reference: np.ndarray, labels: np.ndarray, limit_test: int | None, say) -> None:
    """Warn when the reloaded model file no longer scores what training (or import) recorded on the same test set.

    Artifacts are validated against the model as it loads now; if custom-layer code changed after
    training, that model (and every artifact) silently differs from the one that was trained.
    """
    recorded = md.train.get("test_accuracy")
    n = md.train.get("test_images")
    if recorded is None or limit_test is not None or (n is not None and int(n) != len(labels)):
        return
    now = float((reference.argmax(axis=1) == labels).mean())
    if abs(now - float(recorded)) > 0.005:
        say(
            f"WARN  {md.model_id}: {md.model_path.name} now scores {100 * now:.2f}% but train.json recorded "
            f"{100 * float(recorded):.2f}% on the same test set; it does not load as trained "
            + ("(the file or a runtime changed since?): re-import it with --force" if md.imported else
               "(custom layer code changed since?): retrain it")
        )


def _release_keras() -> None:
    try:
        import keras

        keras.backend.clear_session()
    except Exception:  # pragma: no cover - only frees memory
        pass
    gc.collect()
