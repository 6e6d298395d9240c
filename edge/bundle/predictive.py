"""The compact predictive test: a few test images per artifact and a small regressor that predicts the artifact's
accuracy from its scores on them (built on the workstation by ``edgekit bundle --predictive-test``).

The canary says whether an artifact computes what it computed on the workstation; this says how accurate it
still is. After the compact test of RRAM CNN chips (a regressor fed with a chip's outputs on 2-4 co-optimized
images): the images are chosen from the test set by greedy down-selection over a population of degraded copies
of the artifact (weight noise, int8 bit flips, perturbed quantization scales), refined by gradient steps on the
float model, and a ridge regressor maps how far the artifact's answers on them moved from the workstation's
(``predictive_features``) to the copies' measured accuracy. On the board it costs one call of the artifact on 4
images and a dot product.

File ``predictive.npz`` (plain arrays, read with allow_pickle=False), per artifact id ``A``:

- ``images/A``: uint8 (k, H, W, C), the test images at the bundle's image size;
- ``reference/A``: float32 (k, classes), the artifact's scores on them on the workstation;
- ``regressor/A``: float64 (1 + 3d,): bias, then the features' means, scales and weights (d = 2k);
- ``sha256/A``: uint8 (32,), the sha256 of the artifact the test was built for (so a test file from another
  bundle is refused by name);
- ``meta/A``: float64 (4,): whether the artifact outputs probabilities (1) or logits (0), the held-out mean
  absolute error of the prediction, the same regressor's error on random test images, the workstation's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from edge.artifacts.tensors import scores
from edge.core.errors import UsageError

PREDICTIVE_NAME = "predictive.npz"
DRIFT_MARGIN = 0.05  # how far (accuracy, 0..1) a prediction may fall below the table's before it is a drift
ON_DRIFT = ("drop", "serve")  # what the daemon does with a variant whose prediction drifted


def check_margin(margin: float, what: str = "the drift margin") -> float:
    """``margin`` if it is an accuracy difference in 0..1, else UsageError naming ``what``."""
    if not 0 <= margin <= 1:
        raise UsageError(f"{what} is an accuracy difference in 0..1, got {margin}")
    return margin


_KEYS = ("images", "reference", "regressor", "sha256", "meta")


def log_probabilities(scores_: np.ndarray, probabilities: bool) -> np.ndarray:
    """Scores (n, classes) -> log-probabilities: log-softmax of logits, the log of an ensemble's probabilities."""
    s = np.asarray(scores_, np.float64)
    if probabilities:
        return np.log(np.clip(s, 1e-7, None))
    s = s - s.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def predictive_features(scores_: np.ndarray, reference: np.ndarray, probabilities: bool) -> np.ndarray:
    """An artifact's scores on the k test images (k, classes), beside the workstation's undegraded ``reference``
    scores on them -> the regressor's input (2k,): per image, how far the answer moved, as log(KL(reference ||
    scores) + 1e-4) and log(1 - cos + 1e-5) of the centred log-probabilities (the second is blind to a change of
    the output's scale, which a perturbed quantization scale causes without changing the answer)."""
    lp = log_probabilities(scores_, probabilities)
    lr = log_probabilities(reference, probabilities)
    kl = np.sum(np.exp(lr) * (lr - lp), axis=-1)
    a = lp - lp.mean(axis=-1, keepdims=True)
    b = lr - lr.mean(axis=-1, keepdims=True)
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-9)
    return np.concatenate([np.log(np.maximum(kl, 0.0) + 1e-4), np.log(np.maximum(1.0 - cos, 0.0) + 1e-5)])


@dataclass(frozen=True)
class AccuracyRegressor:
    """Ridge regression on standardized features: accuracy = ((f - mean) / scale) . weights + bias, in 0..1."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted accuracy of one feature vector (d,) or of many (n, d)."""
        f = np.asarray(features, np.float64)
        return np.clip(((f - self.mean) / self.scale) @ self.weights + self.bias, 0.0, 1.0)

    def to_vector(self) -> np.ndarray:
        return np.concatenate([[self.bias], self.mean, self.scale, self.weights]).astype(np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray, d: int) -> "AccuracyRegressor":
        if v.shape != (1 + 3 * d,) or not np.all(np.isfinite(v)) or np.any(v[1 + d: 1 + 2 * d] <= 0):
            raise ValueError(f"a regressor over {d} features needs {1 + 3 * d} finite values with positive scales, "
                             f"got {v.shape}")
        return cls(mean=v[1:1 + d], scale=v[1 + d:1 + 2 * d], weights=v[1 + 2 * d:], bias=float(v[0]))


def capped_prediction(regressor: AccuracyRegressor, features: np.ndarray, ceiling: float) -> np.ndarray:
    """The regressor's prediction, at most ``ceiling`` (the undegraded artifact's accuracy): a copy is no more
    accurate than what it is a copy of, and the linear fit would overshoot at the undegraded end (no movement)."""
    return np.minimum(regressor.predict(features), ceiling)


@dataclass(frozen=True)
class ArtifactTest:
    """One artifact's test: its images, its regressor, and what the workstation measured of them."""

    artifact_id: str
    images: np.ndarray  # uint8 (k, H, W, C)
    reference: np.ndarray  # float32 (k, classes): the artifact's scores on them on the workstation
    regressor: AccuracyRegressor
    sha256: str
    probabilities: bool
    heldout_mae: float  # on degraded copies the regressor was not fitted on (other seeds and levels)
    random_mae: float  # the same regressor fitted on random test images instead, on the same copies
    host_accuracy: float  # the undegraded artifact's, on the images the copies were measured on

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        return capped_prediction(self.regressor, features, self.host_accuracy)

    def predict(self, loaded_model: Any) -> float:
        """The predicted accuracy of ``loaded_model`` (this artifact loaded by a backend), from one call per image."""
        s = scores(loaded_model, self.images)
        if not np.all(np.isfinite(s)):
            return 0.0  # an artifact that answers NaN or inf answers nothing right
        return float(self.predict_features(predictive_features(s, self.reference, self.probabilities)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        a = self.artifact_id
        return {
            f"images/{a}": np.ascontiguousarray(self.images, np.uint8),
            f"reference/{a}": np.asarray(self.reference, np.float32),
            f"regressor/{a}": self.regressor.to_vector(),
            f"sha256/{a}": np.frombuffer(bytes.fromhex(self.sha256), np.uint8).copy(),
            f"meta/{a}": np.array([float(self.probabilities), self.heldout_mae, self.random_mae, self.host_accuracy]),
        }


def dump_tests(tests: dict[str, ArtifactTest]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in tests.values():
        out.update(t.to_arrays())
    return out


def load_tests(z: Mapping[str, np.ndarray], expected_sha256: dict[str, str], classes: dict[str, int],
               image_shape: tuple[int, ...], only: Iterable[str] | None = None) -> dict[str, ArtifactTest]:
    """The tests in ``z`` (the arrays of predictive.npz, or the open file: arrays are read only for the tests
    returned), checked against the bundle they sit in; ``only``: just these artifacts' tests.

    ``expected_sha256``: artifact id -> sha256 from the bundle's manifest; ``classes``: artifact id -> its
    output classes. ValueError says what is wrong: unknown keys, a test for an artifact the bundle lacks or whose
    sha256 differs (a file from another bundle), arrays of the wrong shape.
    """
    ids: set[str] = set()
    for key in z:
        kind, _, aid = key.partition("/")
        if kind not in _KEYS or not aid:
            raise ValueError(f"unexpected array '{key}' (expected {', '.join(k + '/<artifact>' for k in _KEYS)})")
        ids.add(aid)
    for aid in sorted(ids):  # from the names alone
        missing = [k for k in _KEYS if f"{k}/{aid}" not in z]
        if missing:
            raise ValueError(f"the test of {aid} lacks {missing}")
        if aid not in expected_sha256:
            raise ValueError(f"it holds a test for artifact {aid}, which this bundle does not have: the file comes "
                             "from another bundle")
    tests: dict[str, ArtifactTest] = {}
    for aid in sorted(ids if only is None else ids & set(only)):
        digest = z[f"sha256/{aid}"]
        sha = bytes(digest.astype(np.uint8)).hex() if digest.shape == (32,) else ""
        if sha != expected_sha256[aid]:
            raise ValueError(f"its test of {aid} was built for another file (sha256 {sha[:12] or '?'}..., the "
                             f"manifest says {expected_sha256[aid][:12]}...): the file comes from another bundle")
        images = z[f"images/{aid}"]
        if images.dtype != np.uint8 or images.ndim != 4 or not 1 <= len(images) <= 16 or \
                tuple(images.shape[1:]) != tuple(image_shape):
            raise ValueError(f"the test images of {aid} are {images.dtype}{images.shape}; expected uint8 "
                             f"(k, {', '.join(map(str, image_shape))}) with k of 1..16")
        meta = z[f"meta/{aid}"]
        if meta.shape != (4,) or not np.all(np.isfinite(meta)):
            raise ValueError(f"the test of {aid} has meta {meta.shape}, expected 4 finite values")
        reference = z[f"reference/{aid}"]
        if reference.shape != (len(images), int(classes[aid])) or not np.all(np.isfinite(reference)):
            raise ValueError(f"the reference scores of {aid} are {reference.shape}, expected {len(images)} finite rows "
                             f"of {classes[aid]} classes")
        regressor = AccuracyRegressor.from_vector(np.asarray(z[f"regressor/{aid}"], np.float64), 2 * len(images))
        tests[aid] = ArtifactTest(aid, images, reference.astype(np.float32), regressor, sha, bool(meta[0] > 0.5),
                                  float(meta[1]), float(meta[2]), float(meta[3]))
    return tests


@dataclass(frozen=True)
class DriftCheck:
    """A variant's predicted accuracy beside the accuracy it is expected to have (its table's or the manifest's)."""

    predicted: float
    expected: float
    margin: float
    drift: bool
    message: str


def check_drift(test: ArtifactTest, loaded_model: Any, expected: float | None, margin: float = DRIFT_MARGIN,
                what: str = "") -> DriftCheck:
    """Run the test on ``loaded_model``; a drift is a prediction more than ``margin`` below ``expected``."""
    name = what or test.artifact_id
    exp = test.host_accuracy if expected is None else float(expected)
    try:
        predicted = test.predict(loaded_model)
    except Exception as exc:  # runtimes raise their own types; an artifact that cannot run the test has drifted
        return DriftCheck(0.0, exp, margin, True, f"{name}: predictive test could not run: {type(exc).__name__}: "
                                                  f"{exc}")
    drift = predicted < exp - margin
    msg = (f"{name}: predicted accuracy {predicted:.3f}, expected {exp:.3f} (test error on held-out degraded "
           f"copies {test.heldout_mae:.3f})")
    if drift:
        msg += (f": DRIFT, more than {margin:.3f} below; this artifact may be degraded here (runtime, delegate, "
                "storage): compare with the workstation, re-copy the bundle")
    return DriftCheck(predicted, exp, margin, drift, msg)
