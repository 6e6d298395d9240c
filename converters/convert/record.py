"""The driver's side of a convert: applies conversion events to the run folder, manifest.json and outcomes.

Only this process writes artifacts and manifest.json, whether a model was converted here or in a Ray
task; it also keeps the outcomes, the printed lines and the progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from converters.convert.model import Built, Failed, ModelDir, Note, Started, artifact_path
from device_profiles import BuildTarget
from edge.artifacts.manifest import ArtifactRecord, Manifest, ManifestError, artifact_id
from edge.core.atomic import atomic_write_bytes, sha256_bytes, sha256_file
from edge.core.errors import StepFailed
from edge.core.units import kb

if TYPE_CHECKING:
    from converters.convert.calibration import CalibrationSet

LOCK_FILE = ".convert.lock"
CALIBRATION = "calibration"  # manifest.json extra: {artifact id: the calibration set it was built from}


@dataclass(frozen=True)
class Outcome:
    """What happened to one artifact in this convert: built, skip or failed."""

    artifact_id: str
    model_id: str
    format: str
    precision: str
    action: str  # built | skip | failed
    seconds: float = 0.0
    error: str = ""


def is_unchanged(rec: ArtifactRecord | None, run_dir: Path, source_sha256: str) -> bool:
    """True when the recorded artifact exists with its recorded sha256 and was built from this model.keras."""
    if rec is None or rec.source_sha256 != source_sha256:
        return False
    path = run_dir / rec.path
    return path.is_file() and sha256_file(path) == rec.sha256


def open_manifest(run_dir: Path, dataset: str, labels: tuple[str, ...]) -> Manifest:
    path = run_dir / "manifest.json"
    if not path.exists():
        return Manifest(dataset=dataset, labels=labels)
    m = Manifest.load(path)
    if m.dataset != dataset:
        raise ManifestError(
            f"{path} is for dataset '{m.dataset}' but this run trained on '{dataset}'; move it away and convert again"
        )
    return m


@contextlib.contextmanager
def convert_lock(run_dir: Path) -> Iterator[None]:
    """One convert per run folder at a time (two would lose each other's manifest updates)."""
    fh = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepFailed(f"another 'edgekit convert' is using {run_dir}; wait for it to finish") from None
        yield
    finally:
        fh.close()


def recorded_calibration(manifest: Manifest, aid: str) -> dict[str, Any] | None:
    """The calibration set manifest.json records for artifact ``aid`` (None: none recorded)."""
    got = (manifest.extra.get(CALIBRATION) or {}).get(aid)
    return got if isinstance(got, dict) else None


def _with_calibration(manifest: Manifest, aid: str, rec: dict[str, Any] | None) -> Manifest:
    """A copy whose extra records ``rec`` as ``aid``'s calibration set (None: records none)."""
    sets = {k: v for k, v in (manifest.extra.get(CALIBRATION) or {}).items() if k != aid}
    if rec is not None:
        sets[aid] = rec
    extra = {k: v for k, v in manifest.extra.items() if k != CALIBRATION}
    if sets:
        extra[CALIBRATION] = dict(sorted(sets.items()))
    return dataclasses.replace(manifest, extra=extra)


def _without(manifest: Manifest, aid: str) -> Manifest:
    manifest = _with_calibration(manifest, aid, None)
    return dataclasses.replace(manifest, artifacts=tuple(a for a in manifest.artifacts if a.artifact_id != aid))


class Recorder:
    """This process's side of a convert: the run folder's artifacts, manifest.json, outcomes, lines and bar.

    ``calibration`` gives the calibration set of this convert (called only when an int8 artifact is
    checked or built; it should load the set once): an int8 artifact is unchanged only if it was
    calibrated on the same images (their sha256), and each one built records its set in the manifest.
    """

    def __init__(self, run_dir: Path, manifest: Manifest, bar, out: TextIO,
                 calibration: Callable[[], CalibrationSet] | None = None):
        self.run_dir, self.manifest, self.bar, self.out = run_dir, manifest, bar, out
        self.path = run_dir / "manifest.json"
        self.outcomes: list[Outcome] = []
        self.calibration = calibration

    def _calibration(self) -> CalibrationSet:
        if self.calibration is None:  # pragma: no cover - the command always gives one
            raise RuntimeError("Recorder: an int8 artifact needs the convert's calibration set; none was given")
        return self.calibration()

    def say(self, msg: str) -> None:
        self.bar.write(msg, file=self.out)

    def save(self, manifest: Manifest) -> None:
        self.manifest = manifest
        manifest.save(self.path)

    def plan(self, md: ModelDir, source_sha: str, targets: list[BuildTarget], force: bool,
             max_drop: float) -> list[BuildTarget]:
        """Record the model's unchanged artifacts as skipped (re-judged); returns the targets to build.

        Unchanged: the recorded file is there with its sha256, built from this model file, and (an int8
        artifact) calibrated on this convert's calibration set.
        """
        from converters.convert import validate
        from converters.convert.calibration import same_set
        from converters.convert.sources import uses_calibration

        todo: list[BuildTarget] = []
        for t in targets:
            aid = artifact_id(md.model_id, t.format, t.precision)
            rec = self.manifest.by_id().get(aid)
            unchanged = not force and is_unchanged(rec, self.run_dir, source_sha)
            if unchanged and uses_calibration(md, t):
                cal = self._calibration()
                if not same_set(recorded_calibration(self.manifest, aid), cal):
                    self.say(f"redo  {aid}: it was calibrated on other images; now on {cal.describe()}")
                    unchanged = False
            if unchanged:
                assert rec is not None
                rejudged = validate.rejudge(rec, max_drop)
                if rejudged != rec:
                    self.save(self.manifest.with_artifact(rejudged))
                self.say(f"skip  {aid} (unchanged)")
                self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "skip"))
                self.bar.update(1)
            else:
                todo.append(t)
        return todo

    def apply(self, ev: Any, md: ModelDir, source_sha: str) -> None:
        from converters.convert import validate
        from converters.convert.sources import uses_calibration

        if isinstance(ev, Note):
            self.say(ev.text)
        elif isinstance(ev, Started):
            self.bar.set_postfix_str(ev.artifact_id, refresh=True)
        elif isinstance(ev, Built) and ev.data is not None and sha256_bytes(ev.data) != ev.result.sha256:
            msg = "the bytes its Ray task returned do not match the sha256 the task computed; rerun to rebuild it"
            aid = artifact_path(md.model_id, ev.target)[0]
            self.apply(Failed(ev.target, ev.rel, ev.seconds, msg, line=f"FAIL  {aid}: {msg}"), md, source_sha)
        elif isinstance(ev, Built):
            t, res, v = ev.target, ev.result, ev.validation
            aid = artifact_id(md.model_id, t.format, t.precision)
            if ev.data is not None:
                atomic_write_bytes(self.run_dir / ev.rel, ev.data)
            rec = ArtifactRecord(
                artifact_id=aid,
                model_id=md.model_id,
                format=t.format,
                precision=t.precision,
                path=ev.rel,
                sha256=res.sha256,
                size_bytes=res.size_bytes,
                input=res.input,
                output=res.output,
                source_sha256=source_sha,
                params=int(md.train.get("params", 0) or 0),
                macs=int(md.train.get("macs", 0) or 0),
            )
            rec = validate.apply_validation(rec, v)
            cal = self._calibration().record() if uses_calibration(md, t) else None
            self.save(_with_calibration(self.manifest.with_artifact(rec), aid, cal))
            note = f"  ({v.reason})" if v.status != "ok" else ""
            self.say(
                f"built {aid}: {kb(res.size_bytes)} KB, convert {res.seconds:.1f}s, total {ev.seconds:.1f}s, "
                f"accuracy {100 * v.accuracy:.2f}%, {v.status}{note}"
            )
            self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "built", ev.seconds))
            self.bar.update(1)
        elif isinstance(ev, Failed):
            t = ev.target
            aid = artifact_id(md.model_id, t.format, t.precision)
            # A stale record must not survive a failed rebuild: it would ship an old artifact.
            if aid in self.manifest.by_id():
                self.save(_without(self.manifest, aid))
            (self.run_dir / ev.rel).unlink(missing_ok=True)
            if ev.line:
                self.say(ev.line)
            self.outcomes.append(Outcome(aid, md.model_id, t.format, t.precision, "failed", ev.seconds, ev.error))
            self.bar.update(1)
        else:  # pragma: no cover - a new event type without its case here
            raise TypeError(f"unknown convert event {ev!r}")
