"""`edgekit bundle --predictive-test`: the compact predictive test of each bundled artifact (edge.bundle.predictive).

Per artifact, on the workstation:

1. **A population of degraded copies** (converters.pack.degrade): Gaussian weight noise, int8 bit flips and
   perturbed quantization scales, each at levels chosen from a calibration sweep so that the copies' accuracies
   spread evenly from near chance (12 %) to the artifact's own. The fitting copies and the held-out ones differ in
   seeds and levels (the held-out levels sit half-way between the fitting ones).
2. **Greedy down-selection** of ``images`` test images from a candidate pool of the bundle's evaluation set: each
   step adds the candidate with the least leave-one-out error of the regressor over the fitting copies.
3. **Refinement by gradient steps on the float model** (a trained or Keras-imported model at the bundle's image
   size): the pixels move to lower the regressor's leave-one-out error over a population of noisy copies of the
   Keras model, differentiated through the closed-form ridge fit. The refined images are kept only if they
   also lower the error over the artifact's own fitting copies.
4. **The regressor**: ridge regression from how far the answers on the test images moved (edge.bundle.predictive.
   predictive_features) to accuracy, its penalty
   chosen by leave-one-out error; then its error on the held-out copies, beside the same procedure fed with
   random test images instead.

The copies run with the artifact's own runtime (LiteRT, ONNX Runtime), in batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from converters.pack.degrade import Degradation, degrade, kinds_for, weights_of
from edge.artifacts.manifest import ArtifactRecord
from edge.bundle.predictive import AccuracyRegressor, ArtifactTest, capped_prediction, predictive_features
from edge.core.errors import UsageError

# The calibration grid per degradation (levels as in converters.pack.degrade.kinds).
LEVEL_GRIDS = {"noise": np.geomspace(0.01, 10.0, 13), "bitflip": np.geomspace(1e-4, 0.5, 13),
               "qparams": np.geomspace(0.01, 4.0, 13)}
FLOOR_ACCURACY = 0.12  # the least accurate copies aimed at: near chance for 10 classes, above it for fewer
ALPHAS = (0.3, 1.0, 3.0, 10.0, 30.0)  # ridge penalties tried, on standardized features
RANDOM_DRAWS = 20  # random image sets the greedy+refined choice is compared with
WIDE_IMAGES = 64  # a reference: the same regressor on this many random images (what more images would buy)
# A bound on what choosing the images can reach: the best of this many random sets of the candidates, each judged
# on the held-out copies themselves (so no method could pick it; a choice near it leaves nothing to selection).
BOUND_DRAWS = 300
MIN_HELDOUT_ACCURACY = 0.2  # the held-out error is quoted over copies from this accuracy to the artifact's


@dataclass(frozen=True)
class PredictiveOptions:
    images: int = 4  # test images per artifact
    fit_copies: int = 180  # fitting copies, split evenly over the degradation kinds the artifact has
    heldout_copies: int = 60  # held-out copies, likewise
    truth_images: int = 2000  # evaluation images each copy's accuracy is measured on
    calibration_images: int = 400  # ... and in the calibration sweep
    candidates: int = 256  # candidate test images (from the other half of the evaluation set)
    float_copies: int = 24  # noisy Keras copies the refinement differentiates through
    refine_steps: int = 25
    refine_lr: float = 3.0  # Adam step in pixel units (0..255)
    seed: int = 0
    only: tuple[str, ...] = ()  # artifact id patterns (edge.core.patterns); empty: every artifact

    def __post_init__(self) -> None:
        if not 1 <= self.images <= 16:
            raise UsageError(f"--predictive-images must be 1..16, got {self.images}")
        for name in ("fit_copies", "heldout_copies", "truth_images", "calibration_images", "candidates"):
            if getattr(self, name) < 2:
                raise UsageError(f"predictive test: {name} must be at least 2, got {getattr(self, name)}")
        if self.candidates < self.images:
            raise UsageError(f"predictive test: {self.candidates} candidates cannot give {self.images} test images")


@dataclass(frozen=True)
class TestReport:
    """What building one artifact's test measured."""

    artifact_id: str
    accuracy: float  # the undegraded artifact's, on the truth images
    heldout_mae: float  # on held-out copies from MIN_HELDOUT_ACCURACY to the artifact's accuracy
    random_mae: float  # the same, with random test images (mean over RANDOM_DRAWS draws)
    wide_mae: float  # the same, with WIDE_IMAGES random test images
    bound_mae: float  # the best of BOUND_DRAWS random image sets, judged on the held-out copies: a bound, not a test
    fit_copies: int
    heldout_copies: int  # of them within the quoted accuracy range
    kinds: tuple[str, ...]
    refined: str  # "kept", "not kept (...)" or why it did not run
    seconds: float


@dataclass(frozen=True)
class _Copy:
    data: bytes
    accuracy: float
    candidate_scores: np.ndarray  # (candidates, classes)


# ------------------------------------------------------------------------------------------------ the regressor

def _design(F: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = F.mean(axis=0)
    scale = F.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    return (F - mean) / scale, mean, scale


def loo_error(F: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Mean absolute leave-one-out error of ridge(``alpha``) from features ``F`` (n, d) to ``y`` (n,)."""
    X, _, _ = _design(F)
    X = np.c_[X, np.ones(len(X))]
    R = alpha * np.eye(X.shape[1])
    R[-1, -1] = 0.0  # the intercept is not penalized
    H = X @ np.linalg.solve(X.T @ X + R, X.T)
    e = (y - H @ y) / np.clip(1.0 - np.diag(H), 1e-6, None)
    return float(np.mean(np.abs(e)))


def fit_ridge(F: np.ndarray, y: np.ndarray, alpha: float | None = None) -> tuple[AccuracyRegressor, float]:
    """The ridge regressor of ``y`` on ``F`` and its penalty (the one of ALPHAS with the least LOO error if None)."""
    if alpha is None:
        alpha = min(ALPHAS, key=lambda a: loo_error(F, y, a))
    X, mean, scale = _design(F)
    yc = y - y.mean()
    w = np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ yc)
    return AccuracyRegressor(mean=mean, scale=scale, weights=w, bias=float(y.mean())), alpha


def _features(score_sets: list[np.ndarray], reference: np.ndarray, idx: list[int], probabilities: bool) -> np.ndarray:
    return np.stack([predictive_features(s[idx], reference[idx], probabilities) for s in score_sets])


def greedy_select(score_sets: list[np.ndarray], reference: np.ndarray, y: np.ndarray, k: int,
                  probabilities: bool) -> list[int]:
    """Greedy down-selection: add, k times, the candidate whose features give the least LOO error (best alpha).

    ``score_sets``: each copy's scores on the candidates; ``reference``: the undegraded artifact's."""
    chosen: list[int] = []
    n = score_sets[0].shape[0]
    for _ in range(k):
        best, best_err = -1, np.inf
        for c in range(n):
            if c in chosen:
                continue
            F = _features(score_sets, reference, chosen + [c], probabilities)
            err = min(loo_error(F, y, a) for a in (1.0, 10.0))
            if err < best_err:
                best, best_err = c, err
        chosen.append(best)
    return chosen


# ------------------------------------------------------------------------------------------------ the copies

class _Runner:
    """Runs copies of one artifact with its backend, in batches, on the truth and candidate images."""

    def __init__(self, rec: ArtifactRecord, truth_x: np.ndarray, truth_y: np.ndarray, candidates: np.ndarray):
        from device_profiles import RuntimeSetting
        from edge.artifacts.formats import backend_for
        from edge.backends import get_backend

        name = backend_for(rec.format)
        self.backend = get_backend(name)
        self.setting = RuntimeSetting(name="predictive-test", backend=name, threads=1)
        self.rec = rec
        self.truth_x, self.truth_y, self.candidates = truth_x, truth_y, candidates

    def _scores(self, model: Any, images: np.ndarray) -> np.ndarray:
        from edge.artifacts.tensors import scores, with_recorded_input

        with_recorded_input(model, self.rec.input)
        return scores(model, images, batch_size=200)

    def run(self, data: bytes, truth: int | None = None, images: np.ndarray | None = None
            ) -> tuple[float, np.ndarray] | None:
        """(accuracy on the first ``truth`` truth images, scores on ``images`` or the candidates); None for a copy
        the runtime refuses to load (XNNPACK refuses some perturbed quantization scales): no board would run it."""
        try:
            model = self.backend.load(data, self.setting)
        except (RuntimeError, ValueError):
            return None
        try:
            n = len(self.truth_x) if truth is None else truth
            s = self._scores(model, self.truth_x[:n])
            acc = float(np.mean(np.argmax(s, axis=1) == self.truth_y[:n])) if np.all(np.isfinite(s)) else 0.0
            c = self._scores(model, self.candidates if images is None else images)
            return acc, np.nan_to_num(c, nan=0.0, posinf=1e4, neginf=-1e4)
        finally:
            model.close()

    def scores_on(self, data: bytes, images: np.ndarray) -> np.ndarray:
        model = self.backend.load(data, self.setting)
        try:
            return np.nan_to_num(self._scores(model, images), nan=0.0, posinf=1e4, neginf=-1e4)
        finally:
            model.close()


def _levels(grid: np.ndarray, accs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Levels whose accuracy should be ``targets``, interpolated in log level on the (made monotone) sweep."""
    acc = np.minimum.accumulate(accs)
    lg = np.log(grid)
    out = []
    for t in targets:
        if t >= acc[0]:
            out.append(float(grid[0]))
            continue
        i = int(np.argmax(acc <= t))
        if acc[i] > t:  # never falls that low on the grid
            out.append(float(grid[-1]))
            continue
        f = (acc[i - 1] - t) / max(acc[i - 1] - acc[i], 1e-9)
        out.append(float(np.exp(lg[i - 1] + f * (lg[i] - lg[i - 1]))))
    return out


def _population(runner: _Runner, wf, kinds: tuple[str, ...], clean_acc: float, opts: PredictiveOptions
                ) -> tuple[list[_Copy], list[_Copy]]:
    fit: list[_Copy] = []
    held: list[_Copy] = []
    top = max(clean_acc, FLOOR_ACCURACY + 0.05)
    for ki, kind in enumerate(kinds):
        grid = LEVEL_GRIDS[kind]
        runs = [runner.run(degrade(wf, Degradation(kind, float(lv), opts.seed + 7919 * ki + j)),
                           truth=opts.calibration_images) for j, lv in enumerate(grid)]
        sweep = np.array([0.0 if r is None else r[0] for r in runs])
        for total, offset, dest, base in ((opts.fit_copies, 0.0, fit, 100_000),
                                          (opts.heldout_copies, 0.5, held, 500_000)):
            n = max(1, total // len(kinds))
            step = (top - FLOOR_ACCURACY) / n
            targets = FLOOR_ACCURACY + step * (np.arange(n) + offset)
            for j, lv in enumerate(_levels(grid, sweep, targets)):
                data = degrade(wf, Degradation(kind, lv, opts.seed + base + 1000 * ki + j))
                got = runner.run(data)
                if got is not None:
                    dest.append(_Copy(data, *got))
    return fit, held


# ------------------------------------------------------------------------------------------------ refinement

def refine_images(keras_model: Any, images: np.ndarray, truth_x: np.ndarray, truth_y: np.ndarray,
                  probabilities: bool, opts: PredictiveOptions) -> np.ndarray:
    """``images`` (uint8) after ``refine_steps`` Adam steps that lower the ridge's LOO error over noisy Keras copies."""
    import tensorflow as tf

    rng = np.random.default_rng(opts.seed + 17)
    kernels = [v for v in keras_model.weights if len(v.shape) >= 2]  # also an ensemble's frozen members
    base = [v.numpy() for v in kernels]
    stds = [float(b.std()) or 1.0 for b in base]

    def noisy(level: float, seed: int) -> list[np.ndarray]:
        r = np.random.default_rng(seed)
        return [b + r.standard_normal(b.shape).astype(b.dtype) * level * s for b, s in zip(base, stds)]

    def accuracy_at(ws: list[np.ndarray]) -> float:
        for v, w in zip(kernels, ws):
            v.assign(w)
        p = keras_model.predict(truth_x.astype(np.float32), batch_size=500, verbose=0)
        return float(np.mean(np.argmax(p, axis=1) == truth_y))

    try:
        grid = LEVEL_GRIDS["noise"]
        sweep = np.array([accuracy_at(noisy(float(lv), 1 + j)) for j, lv in enumerate(grid)])
        clean = accuracy_at(base)
        targets = np.linspace(FLOOR_ACCURACY, max(clean, FLOOR_ACCURACY + 0.05), opts.float_copies)
        copies = [noisy(lv, int(rng.integers(1 << 30))) for lv in _levels(grid, sweep, targets)]
        y = np.array([accuracy_at(ws) for ws in copies], np.float64)

        x = tf.Variable(images.astype(np.float32))
        opt = tf.keras.optimizers.Adam(learning_rate=opts.refine_lr)
        yt = tf.constant(y - y.mean(), tf.float64)

        def logp_at(ws: list[np.ndarray]):
            for v, w in zip(kernels, ws):
                v.assign(w)
            out = tf.cast(keras_model(x, training=False), tf.float64)
            return tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)) if probabilities else tf.nn.log_softmax(out)

        for _ in range(opts.refine_steps):
            with tf.GradientTape() as tape:
                lr = logp_at(base)  # the undegraded answer moves with the pixels too
                b = lr - tf.reduce_mean(lr, axis=-1, keepdims=True)
                feats = []
                for ws in copies:  # predictive_features, in TensorFlow
                    lp = logp_at(ws)
                    kl = tf.reduce_sum(tf.exp(lr) * (lr - lp), axis=-1)
                    a = lp - tf.reduce_mean(lp, axis=-1, keepdims=True)
                    cos = tf.reduce_sum(a * b, axis=-1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + 1e-9)
                    feats.append(tf.concat([tf.math.log(tf.maximum(kl, 0.0) + 1e-4),
                                            tf.math.log(tf.maximum(1.0 - cos, 0.0) + 1e-5)], axis=0))
                F = tf.stack(feats)
                mean, var = tf.nn.moments(F, axes=[0])
                X = (F - mean) / tf.sqrt(var + 1e-9)
                A = tf.matmul(X, X, transpose_a=True) + 3.0 * tf.eye(X.shape[1], dtype=tf.float64)
                H = tf.matmul(X, tf.linalg.solve(A, tf.transpose(X)))
                # LOO residuals of the centred ridge (the intercept is the mean): (y - Hy) / (1 - h_ii - 1/n)
                n = tf.cast(tf.shape(X)[0], tf.float64)
                e = (yt - tf.linalg.matvec(H, yt)) / tf.maximum(1.0 - tf.linalg.diag_part(H) - 1.0 / n, 1e-3)
                loss = tf.reduce_mean(tf.square(e))
            grad = tape.gradient(loss, x)
            opt.apply_gradients([(grad, x)])
            x.assign(tf.clip_by_value(x, 0.0, 255.0))
        return np.round(x.numpy()).astype(np.uint8)
    finally:
        for v, b in zip(kernels, base):
            v.assign(b)


# ------------------------------------------------------------------------------------------------ one artifact

def build_test(rec: ArtifactRecord, data: bytes, truth_x: np.ndarray, truth_y: np.ndarray, candidates: np.ndarray,
               opts: PredictiveOptions, keras_model: Any = None) -> tuple[ArtifactTest, TestReport]:
    """The predictive test of one artifact and what building it measured."""
    t0 = time.perf_counter()
    wf = weights_of(rec.format, data, what=f"artifact {rec.artifact_id}")
    kinds = kinds_for(wf)
    runner = _Runner(rec, truth_x, truth_y, candidates)
    clean = runner.run(data)
    if clean is None:
        raise UsageError(f"artifact {rec.artifact_id} does not load on this workstation; rerun 'edgekit convert'")
    clean_acc, clean_cand = clean
    probabilities = bool(np.all(clean_cand >= 0) and np.allclose(clean_cand.sum(axis=1), 1.0, atol=2e-2))
    fit, held = _population(runner, wf, kinds, clean_acc, opts)
    fit.append(_Copy(data, clean_acc, clean_cand))
    y = np.array([c.accuracy for c in fit])
    yh = np.array([c.accuracy for c in held])
    in_range = (yh >= MIN_HELDOUT_ACCURACY) & (yh <= clean_acc + 0.01)
    fit_scores = [c.candidate_scores for c in fit]
    held_scores = [c.candidate_scores for c in held]

    chosen = greedy_select(fit_scores, clean_cand, y, opts.images, probabilities)
    images, reference = candidates[chosen], clean_cand[chosen]
    F = _features(fit_scores, clean_cand, chosen, probabilities)
    reg, alpha = fit_ridge(F, y)
    fit_err = loo_error(F, y, alpha)
    Fh = _features(held_scores, clean_cand, chosen, probabilities)

    refined = "no float model (an imported ONNX or TFLite model)" if keras_model is None else ""
    if keras_model is not None:
        shape = tuple(int(s) for s in keras_model.input_shape[1:])
        if shape != tuple(images.shape[1:]):
            refined = f"the float model takes {shape}, the test images are {tuple(images.shape[1:])}"
        else:
            new = refine_images(keras_model, images, truth_x[:1000], truth_y[:1000], probabilities, opts)
            ref_n = runner.scores_on(data, new)
            Fn = np.stack([predictive_features(runner.scores_on(c.data, new), ref_n, probabilities) for c in fit])
            reg_n, alpha_n = fit_ridge(Fn, y)
            err_n = loo_error(Fn, y, alpha_n)
            if err_n < fit_err:
                images, reference, reg = new, ref_n, reg_n
                Fh = np.stack([predictive_features(runner.scores_on(c.data, new), ref_n, probabilities)
                               for c in held])
                refined = f"kept (fitting LOO error {100 * fit_err:.2f} -> {100 * err_n:.2f} pt)"
            else:
                refined = f"not kept (fitting LOO error {100 * fit_err:.2f} -> {100 * err_n:.2f} pt)"
    mask = in_range if in_range.any() else np.ones_like(in_range)

    def capped(r: AccuracyRegressor, F_: np.ndarray) -> np.ndarray:  # as the board predicts (ArtifactTest)
        return capped_prediction(r, F_, clean_acc)

    heldout_mae = float(np.mean(np.abs(capped(reg, Fh) - yh)[mask]))

    def random_set_error(k: int) -> float:
        """The held-out error of the same regressor fitted on ``k`` random candidates (drawn from ``rng``)."""
        idx = sorted(int(i) for i in rng.choice(len(candidates), k, replace=False))
        r, _ = fit_ridge(_features(fit_scores, clean_cand, idx, probabilities), y)
        return float(np.mean(np.abs(capped(r, _features(held_scores, clean_cand, idx, probabilities)) - yh)[mask]))

    rng = np.random.default_rng(opts.seed + 31)
    random_mae = float(np.mean([random_set_error(opts.images) for _ in range(RANDOM_DRAWS)]))
    wide_mae = random_set_error(min(WIDE_IMAGES, len(candidates)))
    bound_mae = min(random_set_error(opts.images) for _ in range(BOUND_DRAWS))

    test = ArtifactTest(rec.artifact_id, np.ascontiguousarray(images, np.uint8), reference.astype(np.float32), reg,
                        rec.sha256, probabilities,
                        heldout_mae, random_mae, clean_acc)
    report = TestReport(rec.artifact_id, clean_acc, heldout_mae, random_mae, wide_mae, bound_mae, len(fit),
                        int(mask.sum()), kinds, refined, time.perf_counter() - t0)
    return test, report


def build_tests(items: list[tuple[ArtifactRecord, bytes]], eval_x: np.ndarray, eval_y: np.ndarray,
                opts: PredictiveOptions, keras_model_for: Callable[[str], Any],
                say: Callable[[str], None] = print) -> tuple[dict[str, ArtifactTest], list[TestReport]]:
    """Tests of the artifacts ``items`` (record, file bytes) from the bundle's evaluation set.

    The copies' accuracy is measured on the first ``truth_images`` of the evaluation set's ``select`` half (the
    one the benchmark's accuracy comes from), the candidates are the first ``candidates`` of the other half.
    ``keras_model_for(model_id)``: the float model to refine on, or None.
    """
    from edge.bundle.reader import EVAL_PARTS

    sel, other = EVAL_PARTS["select"], EVAL_PARTS["serve"]
    truth_x, truth_y = eval_x[sel][:opts.truth_images], eval_y[sel][:opts.truth_images]
    candidates = np.ascontiguousarray(eval_x[other][:opts.candidates])
    if len(candidates) < opts.images or len(truth_x) < 2:
        raise UsageError(f"the predictive test needs at least {2 * opts.images} evaluation images; raise --eval-size")
    tests: dict[str, ArtifactTest] = {}
    reports: list[TestReport] = []
    for i, (rec, data) in enumerate(items, 1):
        test, rep = build_test(rec, data, truth_x, truth_y, candidates, opts, keras_model_for(rec.model_id))
        tests[rec.artifact_id] = test
        reports.append(rep)
        say(f"  predictive test {i}/{len(items)} {rec.artifact_id}: held-out error {100 * rep.heldout_mae:.2f} pt "
            f"(random images {100 * rep.random_mae:.2f} pt, {WIDE_IMAGES} random images {100 * rep.wide_mae:.2f} pt; "
            f"the best of {BOUND_DRAWS} random sets of {opts.images}, judged on the held-out copies themselves, "
            f"{100 * rep.bound_mae:.2f} pt), "
            f"refinement {rep.refined}, {rep.seconds:.0f} s")
    return tests, reports
