"""Loading, checksum-checking, canary-checking and warming the variants of a selected table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.bundle.predictive import DRIFT_MARGIN, check_drift
from edge.core.errors import UsageError
from edge.runtime.scheduler import ServingState
from edge.runtime.selector import Selector

WARMUP_RUNS = 5


@dataclass(frozen=True)
class VariantInfo:
    variant: str
    artifact_id: str
    setting: str
    ready: bool
    reason: str = ""
    provider: str = ""
    predicted_accuracy: float | None = None  # the bundle's predictive test, None without one
    drift: bool = False  # the prediction fell more than the drift margin below the table's accuracy


class VariantPool:
    """Loads each variant once per slot; a variant is served only if its file matches the
    manifest's sha256 when it is first loaded (at start or on a reload) and its canary passes.

    A bundle with a predictive test (``edgekit bundle --predictive-test``) also predicts each variant's accuracy
    then; a variant predicted more than ``drift_margin`` below its table's accuracy is dropped
    (``on_drift="drop"``) or served with a warning (``"serve"``). The test file is read for the table's
    artifacts (and refused by name if missing, corrupt or another bundle's) before they load."""

    def __init__(self, bundle, profile, slots: int, warmup: int = WARMUP_RUNS, log=None, on_drift: str = "drop",
                 drift_margin: float = DRIFT_MARGIN, warn=None):
        self.bundle = bundle
        self.on_drift = on_drift
        self.drift_margin = drift_margin
        self.warn = warn or log or (lambda msg: None)
        self.tests: dict = {}
        self.profile = profile
        self.slots = slots
        self.warmup = warmup
        self.log = log or (lambda msg: None)
        # variant -> per-slot loaded copies (only variants that passed every check)
        self.loaded: dict[str, list] = {}
        self.info: dict[str, VariantInfo] = {}
        self.input_hwc: tuple[int, ...] | None = None
        self.classes: int | None = None

    def _setting(self, row):
        s = self.profile.setting(row.setting)
        if s.backend != row.backend:
            raise UsageError(f"profile runs setting '{s.name}' with {s.backend}, the table with {row.backend}")
        return s

    def _warm(self, model) -> None:
        from edge.artifacts.tensors import prepare_input

        imgs = self.bundle.canary().images
        img = imgs[:1] if len(imgs) else np.zeros((1, *self.input_hwc), np.uint8)  # type: ignore[misc]
        x = prepare_input(img, model.input_spec)
        for _ in range(self.warmup):
            model.predict(x)

    def _fail(self, row, reason: str, provider: str = "") -> VariantInfo:
        info = VariantInfo(row.variant, row.artifact_id, row.setting, False, reason, provider)
        self.info[row.variant] = info
        return info

    def load_variant(self, row, verify: bool = True) -> VariantInfo:
        """Load ``row``'s variant once per slot; check its sha256 (unless the caller has just verified
        the whole bundle) and run the canary on the first copy."""
        from edge.artifacts.tensors import with_recorded_input
        from edge.backends import BackendUnavailable, get_backend
        from edge.bundle.canary import check_canary
        from edge.bundle.reader import BundleError

        v = row.variant
        if v in self.loaded:
            return self.info[v]
        try:
            setting = self._setting(row)
            path = (self.bundle.verified_artifact_path if verify else self.bundle.artifact_path)(row.artifact_id)
            backend = get_backend(setting.backend)
            recorded = self.bundle.artifact(row.artifact_id).input  # an imported model's input convention
            first = with_recorded_input(backend.load(path, setting), recorded)
        except (BackendUnavailable, BundleError, ValueError, OSError) as exc:
            return self._fail(row, f"cannot load: {exc}")
        hwc = tuple(int(s) for s in first.input_spec.shape[1:])
        classes = int(first.output_spec.shape[-1])
        # Served at the bundle's image size: a variant of another height and width gets each image resized
        # (edge.runtime.scheduler.InputPreparer), one of other channels or classes cannot be served beside them.
        source = tuple(self.bundle.input_shape) or hwc
        served = self.input_hwc or source
        if len(hwc) != 3 or hwc[2] != served[-1] or (self.classes is not None and classes != self.classes):
            first.close()
            return self._fail(row, f"takes {hwc} -> {classes} classes, the served images are {served} and the other "
                                   f"variants give {self.classes if self.classes is not None else classes} classes")
        try:
            res = check_canary(self.bundle, row.artifact_id, first)
            ok, msg = bool(res.ok), str(res.message)
        except (BundleError, ValueError) as exc:
            ok, msg = False, f"canary could not run: {exc}"
        if not ok:
            first.close()
            return self._fail(row, msg, first.provider)
        predicted, drift = None, False
        test = self.tests.get(row.artifact_id)
        if test is not None:
            dc = check_drift(test, first, row.accuracy, self.drift_margin, what=v)
            predicted, drift = dc.predicted, dc.drift
            if drift and self.on_drift == "drop":
                first.close()
                info = VariantInfo(v, row.artifact_id, row.setting, False, dc.message + " (dropped: --on-drift drop)",
                                   first.provider, predicted, True)
                self.info[v] = info
                return info
            if drift:
                self.warn(dc.message + " (served anyway: --on-drift serve)")
            msg = f"{msg}; {dc.message}"
        if self.input_hwc is None:
            self.input_hwc, self.classes = served, classes
        copies = [first]
        try:
            for _ in range(1, self.slots):
                copies.append(with_recorded_input(backend.load(path, setting), recorded))
            for m in copies:
                self._warm(m)
        except (ValueError, OSError, RuntimeError) as exc:
            return self._fail(row, f"warm-up failed: {exc}", first.provider)
        self.loaded[v] = copies
        info = VariantInfo(v, row.artifact_id, row.setting, True, msg, first.provider, predicted, drift)
        self.info[v] = info
        return info

    def retain(self, variants: set[str]) -> None:
        """Forget the loaded copies of variants no longer served (requests still running on them
        hold their own references, so the runtime frees them once those finish)."""
        for v in list(self.loaded):
            if v not in variants:
                del self.loaded[v]

    def state_for(self, table, selector_args: dict, slowdown, table_path: str, generation: int,
                  verify: bool = True) -> ServingState:
        """Load what ``table`` needs and build a serving state; ValueError if no variant is usable."""
        self.tests.update(self.bundle.predictive_test([r.artifact_id for r in table.rows]))
        rows = []
        for row in table.rows:
            info = self.load_variant(row, verify)
            if info.ready:
                rows.append(row)
            else:
                self.log(f"variant {row.variant} is NOT ready and is excluded: {info.reason}")
        if not rows:
            raise UsageError(
                f"no variant of {table_path} could be loaded and passed its canary check; see the messages above"
            )
        selector = Selector(rows, slowdown=slowdown, **selector_args)
        models = tuple({r.variant: self.loaded[r.variant][w] for r in rows} for w in range(self.slots))
        return ServingState(selector=selector, models=models, table_path=table_path, generation=generation)
