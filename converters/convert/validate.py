"""Validate converted artifacts on the host with their edge runtime against the model they came from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_profiles import RuntimeSetting
from edge.artifacts.formats import backend_for
from edge.artifacts.manifest import ArtifactRecord, TensorSpec
from edge.artifacts.tensors import scores, with_recorded_input
from edge.backends import get_backend
from edge.core.errors import UsageError

DEFAULT_MAX_DROP = 2.0  # accuracy points an artifact may lose (or gain) against its Keras source
# Top-1 agreement with the Keras source below this rejects an artifact whatever its accuracy. Trained
# models' int8 artifacts agree on 99 % or more; a batch-norm ensemble exported with batch statistics
# agreed on 44 % while its accuracy moved the other way.
MIN_AGREEMENT = 0.90
DEFAULT_BATCH = 256
NONFINITE_REASON = "the artifact produced NaN or infinite outputs"


@dataclass(frozen=True)
class Validation:
    """What one artifact did on the host's evaluation set, and the verdict."""

    accuracy: float  # top-1, fraction 0..1
    keras_accuracy: float  # the Keras model on the same images
    agreement: float  # fraction of images where artifact and Keras top-1 agree
    max_abs_diff: float | None  # max |artifact - keras| over dequantized outputs; None if not finite
    eval_count: int
    status: str  # ok | rejected
    reason: str = ""

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.keras_accuracy - self.accuracy)


def host_setting(fmt: str, threads: int = 1) -> RuntimeSetting:
    """The runtime configuration validation uses on this machine (XNNPACK / ORT CPU)."""
    return RuntimeSetting(name=f"validate-{fmt}", backend=backend_for(fmt), threads=threads)


def _as_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        raise UsageError(f"evaluation images must be uint8 NHWC pixels, got {x.dtype}")
    return x


def keras_outputs(model, images: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """The Keras model's logits for uint8 NHWC images (fed as float32 0..255, as every artifact is)."""
    x = _as_images(images)
    outs = []
    for i in range(0, len(x), batch_size):
        y = model(x[i : i + batch_size].astype(np.float32), training=False)
        outs.append(y.numpy() if hasattr(y, "numpy") else np.asarray(y))
    return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)


def run_artifact(
    path: str | Path,
    fmt: str,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH,
    setting: RuntimeSetting | None = None,
    input_spec: TensorSpec | None = None,
) -> np.ndarray:
    """Dequantized float32 outputs of the artifact at ``path`` for uint8 images, in batches.

    ``input_spec``: the artifact's recorded input (an imported model's mean/std is only there). A graph
    with a fixed batch (imported ONNX and TFLite models often have one) is run one image at a time.
    """
    setting = setting or host_setting(fmt)
    x = _as_images(images)
    backend = get_backend(setting.backend)
    with backend.load(Path(path), setting) as lm:
        if input_spec is not None:
            with_recorded_input(lm, input_spec)
        try:
            return scores(lm, x, batch_size=batch_size)
        except Exception:  # runtimes raise their own types for a batch the graph cannot take
            if batch_size == 1:
                raise
    with backend.load(Path(path), setting) as lm:  # the failed resize may leave the interpreter unusable
        if input_spec is not None:
            with_recorded_input(lm, input_spec)
        return scores(lm, x, batch_size=1)


def judge(accuracy: float, keras_accuracy: float, max_drop: float = DEFAULT_MAX_DROP,
          agreement: float | None = None) -> tuple[str, str]:
    """(status, reason): rejected when the artifact is more than ``max_drop`` points below Keras, as many
    points above it, or agrees with its top-1 on fewer than MIN_AGREEMENT of the images: either way it
    does not compute its Keras source's function."""
    drop = 100.0 * (keras_accuracy - accuracy)
    if drop > max_drop + 1e-9:
        return "rejected", (
            f"accuracy {100 * accuracy:.2f}% is {drop:.2f} points below the Keras model's "
            f"{100 * keras_accuracy:.2f}% (max drop {max_drop:.2f})"
        )
    if -drop > max_drop + 1e-9:
        return "rejected", (
            f"accuracy {100 * accuracy:.2f}% is {-drop:.2f} points above the Keras model's "
            f"{100 * keras_accuracy:.2f}% (max change {max_drop:.2f}): the artifact computes something else"
        )
    if agreement is not None and agreement < MIN_AGREEMENT:
        return "rejected", (
            f"its top-1 agrees with the Keras model's on only {100 * agreement:.2f}% of the images "
            f"(minimum {100 * MIN_AGREEMENT:.0f}%): the artifact computes something else"
        )
    return "ok", ""


def compare(
    scores: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    max_drop: float = DEFAULT_MAX_DROP,
) -> Validation:
    """Score artifact outputs against labels and the Keras reference outputs."""
    scores = np.asarray(scores, np.float32)
    reference = np.asarray(reference, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != reference.shape or len(labels) != len(scores):
        raise UsageError(
            f"artifact outputs {scores.shape}, Keras outputs {reference.shape} and {len(labels)} labels do not line up"
        )
    n = len(labels)
    if n == 0:
        raise UsageError("the evaluation set is empty; nothing to validate on")
    top = scores.argmax(axis=1)
    ref_top = reference.argmax(axis=1)
    acc = float((top == labels).mean())
    keras_acc = float((ref_top == labels).mean())
    finite = bool(np.isfinite(scores).all())
    # None rather than inf/NaN, which JSON cannot hold.
    max_diff = float(np.abs(scores - reference).max()) if finite else None
    agreement = float((top == ref_top).mean())
    status, reason = judge(acc, keras_acc, max_drop, agreement)
    if not finite:
        status, reason = "rejected", NONFINITE_REASON
    return Validation(
        accuracy=acc,
        keras_accuracy=keras_acc,
        agreement=agreement,
        max_abs_diff=max_diff,
        eval_count=n,
        status=status,
        reason=reason,
    )


def validate_artifact(
    path: str | Path,
    fmt: str,
    images: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    max_drop: float = DEFAULT_MAX_DROP,
    batch_size: int = DEFAULT_BATCH,
    setting: RuntimeSetting | None = None,
    input_spec: TensorSpec | None = None,
) -> Validation:
    """Run the artifact over ``images`` with its edge runtime and compare to the source model's ``reference``
    outputs (Keras, or the imported ONNX/TFLite file run by its own runtime)."""
    scores = run_artifact(path, fmt, images, batch_size=batch_size, setting=setting, input_spec=input_spec)
    return compare(scores, labels, reference, max_drop=max_drop)


def apply_validation(record: ArtifactRecord, v: Validation) -> ArtifactRecord:
    """The manifest record with validation results filled in."""
    return dataclasses.replace(
        record,
        keras_accuracy=v.keras_accuracy,
        host_accuracy=v.accuracy,
        agreement=v.agreement,
        max_abs_diff=v.max_abs_diff,
        eval_count=v.eval_count,
        status=v.status,
        reason=v.reason,
    )


def rejudge(record: ArtifactRecord, max_drop: float = DEFAULT_MAX_DROP) -> ArtifactRecord:
    """Re-apply a (possibly new) accuracy threshold to a record validated earlier, without rerunning it."""
    if record.host_accuracy is None or record.keras_accuracy is None:
        return record
    if record.reason == NONFINITE_REASON:
        return record  # NaN/inf outputs stay rejected whatever the threshold
    status, reason = judge(record.host_accuracy, record.keras_accuracy, max_drop, record.agreement)
    return dataclasses.replace(record, status=status, reason=reason)
