"""`edgekit bundle`: pack what one device profile runs (artifacts, manifest, eval and canary sets) into a
folder or tar.gz."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from device_profiles import DeviceProfile, RuntimeSetting, load_profile
from edge.artifacts.formats import backend_for, get_format
from edge.artifacts.images import ImagePrep
from edge.artifacts.manifest import ArtifactRecord, Manifest, ManifestError
from edge.artifacts.tensors import scores, with_recorded_input
from edge.bundle.canary import CANARY_NAME, SCORES_PREFIX
from edge.bundle.predictive import PREDICTIVE_NAME, dump_tests
from edge.bundle.reader import BUNDLE_VERSION, EVAL_NAME, MANIFEST_NAME, is_bundle_folder
from edge.core.atomic import atomic_writer, read_json, sha256_bytes, sha256_file
from edge.core.errors import MissingError, UsageError
from edge.core.textable import format_table
from edge.core.units import kb

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


@dataclass(frozen=True)
class BundleResult:
    path: Path
    profile: str
    included: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]  # (artifact_id, why)
    canary_skipped: tuple[tuple[str, str], ...]  # (artifact_id, why)
    forced: tuple[str, ...]  # included only because of --force
    eval_count: int
    canary_count: int
    size_bytes: int
    predictive: tuple = ()  # converters.pack.predictive.TestReport per artifact with a predictive test


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def select_artifacts(
    manifest: Manifest, profile: DeviceProfile, force: bool = False
) -> tuple[list[ArtifactRecord], list[tuple[str, str]], list[str]]:
    """(included, left out with the reason, included only because forced)."""
    included: list[ArtifactRecord] = []
    left_out: list[tuple[str, str]] = []
    forced: list[str] = []
    for rec in manifest.artifacts:
        if not profile.builds(rec.format, rec.precision):
            left_out.append((rec.artifact_id, f"profile {profile.name} does not build {rec.format}-{rec.precision}"))
        elif rec.status == "ok":
            included.append(rec)
        elif force:
            included.append(rec)
            forced.append(rec.artifact_id)
        else:
            why = f": {rec.reason}" if rec.reason else ""
            hint = (
                "run 'edgekit convert' to validate it"
                if rec.status == "unvalidated"
                else "pass --force to bundle it anyway"
            )
            left_out.append((rec.artifact_id, f"status {rec.status}{why} ({hint})"))
    return included, left_out, forced


def _host_canary(rec: ArtifactRecord, data: bytes, images: np.ndarray) -> np.ndarray:
    """The workstation's dequantized scores for the canary images (BackendUnavailable if no runtime)."""
    from edge.backends import get_backend

    backend_name = backend_for(rec.format)
    setting = RuntimeSetting(name="host-canary", backend=backend_name, threads=1)
    try:
        model = get_backend(backend_name).load(data, setting)
    except ValueError as exc:
        raise UsageError(
            f"artifact {rec.artifact_id} does not load on this machine ({exc}); rerun 'edgekit convert'"
        ) from None
    with with_recorded_input(model, rec.input):
        return scores(model, images).astype(np.float32)


def _save_npz(path: Path, **arrays: np.ndarray) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # plain arrays only: readable with allow_pickle=False
    data = buf.getvalue()
    path.write_bytes(data)
    return sha256_bytes(data)


def _tar_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Nothing of the workstation's users or permissions travels to the board.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def _write_archive(src: Path, out: Path) -> None:
    with atomic_writer(out) as fh, tarfile.open(fileobj=fh, mode="w:gz", compresslevel=6) as tar:
        files = sorted(p for p in src.rglob("*") if p.is_file())
        # manifest.json first, so a reader streaming the archive meets it before the artifacts.
        files.sort(key=lambda p: (p.name != MANIFEST_NAME or p.parent != src, p.relative_to(src).as_posix()))
        for p in files:
            tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False, filter=_tar_info)


def _check_out(out: Path) -> None:
    if is_archive(out):
        if out.is_dir():
            raise UsageError(
                f"--out {out} is a folder; give a .tar.gz file name or a folder without the .tar.gz suffix"
            )
        if out.exists() and not tarfile.is_tarfile(out):
            raise UsageError(
                f"--out {out} exists and is not a tar archive; refusing to overwrite it: choose another --out"
            )
        return
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; refusing to overwrite it: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_bundle_folder(out):
        raise UsageError(
            f"--out {out} is a folder that is not a bundle (no bundle manifest.json); refusing to overwrite it: "
            "choose another --out or remove it"
        )


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished bundle ``tmp`` to ``out``, replacing an older bundle there."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, old / "bundle")
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old / "bundle", out)
        raise
    finally:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)


def build_bundle(
    run_dir: str | os.PathLike,
    profile: str | DeviceProfile,
    out: str | os.PathLike,
    eval_size: int = 10000,
    canary_size: int = 8,
    force: bool = False,
    splits: Any = None,
    say: Callable[[str], None] = print,
    predictive: Any = None,
) -> BundleResult:
    """Pack RUN's artifacts that ``profile`` builds into the folder or tar.gz ``out`` (written atomically).

    ``splits`` (x_test, y_test, class_names) defaults to converters.data.datasets.splits_for_run(RUN).
    ``predictive`` (converters.pack.predictive.PredictiveOptions): also build the compact predictive test of
    every bundled artifact whose runtime this workstation has (predictive.npz).
    """
    run_dir = Path(run_dir)
    out = Path(out)
    if eval_size < 1:
        raise UsageError(f"--eval-size must be at least 1, got {eval_size}")
    if canary_size < 1:
        raise UsageError(f"--canary-size must be at least 1, got {canary_size}")
    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    mpath = run_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise MissingError(
            f"{run_dir} has no {MANIFEST_NAME}; convert it first: edgekit convert {run_dir} --profile {prof.name}"
        )
    try:
        run_manifest = Manifest.load(mpath)
    except ManifestError as exc:
        raise UsageError(str(exc)) from None
    run_meta = read_json(run_dir / "run.json", what="run file (written by `edgekit train`)")
    _check_out(out)

    included, left_out, forced = select_artifacts(run_manifest, prof, force)
    if not included:
        reasons = "; ".join(f"{a}: {w}" for a, w in left_out[:5]) or "the manifest lists no artifacts"
        raise UsageError(
            f"nothing to bundle: no artifact of {run_dir} fits profile {prof.name} ({reasons}); "
            f"run 'edgekit convert {run_dir} --profile {prof.name}'"
        )

    if splits is None:
        from converters.data.datasets import splits_for_run

        splits = splits_for_run(run_dir)
    x_test, y_test = np.asarray(splits.x_test), np.asarray(splits.y_test)
    if x_test.ndim == 3:
        x_test = x_test[..., None]
    if x_test.dtype != np.uint8 or len(x_test) == 0:
        raise UsageError(f"the test split of {run_dir} is empty or not uint8 images ({x_test.dtype}{x_test.shape})")
    input_shape = [int(s) for s in run_meta.get("input_shape", x_test.shape[1:])]
    if list(x_test.shape[1:]) != input_shape:
        raise UsageError(
            f"the test split's images are {x_test.shape[1:]} but {run_dir}/run.json says input_shape {input_shape}"
        )
    class_names = [
        str(c) for c in (run_meta.get("class_names") or getattr(splits, "class_names", ()) or run_manifest.labels)
    ]
    n_eval = min(eval_size, len(x_test))
    n_can = min(canary_size, len(x_test))
    canary_images = np.ascontiguousarray(x_test[:n_can])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "artifacts").mkdir()
        records: list[ArtifactRecord] = []
        payloads: dict[str, bytes] = {}  # artifact id -> file bytes, kept for the predictive test
        canary_scores: dict[str, np.ndarray] = {}
        canary_skipped: list[tuple[str, str]] = []
        for rec in included:
            src = run_dir / rec.path
            try:
                data = src.read_bytes()
            except FileNotFoundError:
                raise MissingError(
                    f"artifact {rec.artifact_id} is listed in {mpath} but {src} is "
                    f"missing; rerun 'edgekit convert {run_dir}'"
                ) from None
            if sha256_bytes(data) != rec.sha256:
                raise UsageError(
                    f"artifact {src} changed since it was converted (sha256 differs from "
                    f"{mpath}); rerun 'edgekit convert {run_dir}'"
                )
            rel = f"artifacts/{rec.artifact_id}.{get_format(rec.format).extension}"
            (tmp / rel).write_bytes(data)
            if predictive is not None:
                payloads[rec.artifact_id] = data
            records.append(dataclasses.replace(rec, path=rel, size_bytes=len(data)))
            try:
                canary_scores[rec.artifact_id] = _host_canary(rec, data, canary_images)
            except RuntimeError as exc:  # BackendUnavailable: this workstation lacks the runtime
                canary_skipped.append((rec.artifact_id, str(exc)))
                warnings.warn(f"no canary for {rec.artifact_id}: {exc}", stacklevel=2)

        reports: list = []
        tests: dict = {}
        if predictive is not None:
            tests, reports = _predictive_tests(run_dir, records, payloads, canary_skipped, x_test[:n_eval],
                                               np.asarray(y_test[:n_eval], dtype=np.int64), predictive, say)
        files = {
            EVAL_NAME: _save_npz(
                tmp / EVAL_NAME,
                images=np.ascontiguousarray(x_test[:n_eval]),
                labels=np.asarray(y_test[:n_eval], dtype=np.int64),
            ),
            CANARY_NAME: _save_npz(
                tmp / CANARY_NAME,
                images=canary_images,
                labels=np.asarray(y_test[:n_can], dtype=np.int64),
                **{f"{SCORES_PREFIX}{aid}": s for aid, s in canary_scores.items()},
            ),
        }
        if tests:
            files[PREDICTIVE_NAME] = _save_npz(tmp / PREDICTIVE_NAME, **dump_tests(tests))
        manifest = Manifest(
            dataset=run_manifest.dataset,
            labels=run_manifest.labels,
            artifacts=tuple(sorted(records, key=lambda a: a.artifact_id)),
            extra={
                "bundle_version": BUNDLE_VERSION,
                "profile": prof.name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "files": files,
                "input_shape": input_shape,
                "class_names": class_names,
                "eval_count": n_eval,
                "canary_count": n_can,
                "canary_skipped": [a for a, _ in canary_skipped],
                "forced": forced,
                **({"predictive_test": {"file": PREDICTIVE_NAME, "images": predictive.images,
                                        "artifacts": sorted(tests)}} if tests else {}),
                "source_run": str(run_dir.resolve()),
                "source_manifest_sha256": sha256_file(mpath),
                # an image-folder run: how the board turns a file into this bundle's input (edge.artifacts.images)
                **({"images": ImagePrep.from_dict(run_meta["images"]).to_dict()} if run_meta.get("images") else {}),
            },
        )
        manifest.save(tmp / MANIFEST_NAME)
        if is_archive(out):
            _write_archive(tmp, out)
        else:
            _replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    size = out.stat().st_size if out.is_file() else sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result = BundleResult(
        path=out,
        profile=prof.name,
        included=tuple(r.artifact_id for r in records),
        left_out=tuple(left_out),
        canary_skipped=tuple(canary_skipped),
        forced=tuple(forced),
        eval_count=n_eval,
        canary_count=n_can,
        size_bytes=size,
        predictive=tuple(reports),
    )
    _print_summary(result, manifest, say)
    return result


def _predictive_tests(run_dir: Path, records: list[ArtifactRecord], payloads: dict[str, bytes],
                      skipped: list[tuple[str, str]],
                      eval_x: np.ndarray, eval_y: np.ndarray, options: Any, say: Callable[[str], None]):
    """The predictive test of every bundled artifact this workstation can run (its canary was not skipped)."""
    from converters.pack.predictive import build_tests
    from edge.core.patterns import matches

    no_runtime = {a for a, _ in skipped}
    items = [(r, payloads[r.artifact_id]) for r in records if r.artifact_id not in no_runtime
             and (not options.only or matches(options.only, r.artifact_id))]
    if not items:
        raise UsageError(f"--predictive-only {', '.join(options.only)} matches no artifact of this bundle that the "
                         "workstation can run; see the artifact ids above or in the run's manifest.json")
    cache: dict[str, Any] = {}

    def keras_model(model_id: str):
        if model_id not in cache:
            from converters.convert.model import _load_keras
            from converters.train.run_folder import MODEL_FILE

            path = run_dir / "models" / model_id / MODEL_FILE
            cache.clear()  # one float model in memory at a time: the records come sorted by model
            cache[model_id] = _load_keras(path) if path.is_file() else None
        return cache[model_id]

    say(f"predictive test: {len(items)} artifacts, {options.images} test images each")
    tests, reports = build_tests(items, eval_x, eval_y, options, keras_model, say)
    if reports:
        h = np.array([r.heldout_mae for r in reports])
        rnd = np.array([r.random_mae for r in reports])
        bound = np.array([r.bound_mae for r in reports])
        say(f"predictive test: error on held-out degraded copies (accuracy {100 * 0.2:.0f} % to the artifact's): "
            f"median {100 * np.median(h):.2f} pt, max {100 * h.max():.2f} pt; with random test images median "
            f"{100 * np.median(rnd):.2f} pt ({100 * (1 - np.median(h) / max(np.median(rnd), 1e-9)):.0f} % lower); "
            f"the best random set judged on the held-out copies, median {100 * np.median(bound):.2f} pt "
            "(a bound on choosing the images)")
    return tests, reports


def _print_summary(res: BundleResult, manifest: Manifest, say: Callable[[str], None]) -> None:
    skipped = {a for a, _ in res.canary_skipped}
    rows = [
        (
            a.artifact_id,
            kb(a.size_bytes),
            a.status + (" (forced)" if a.artifact_id in res.forced else ""),
            "-" if a.host_accuracy is None else f"{a.host_accuracy:.4f}",
            "skipped" if a.artifact_id in skipped else "yes",
        )
        for a in manifest.artifacts
    ]
    for line in format_table(("artifact", "size (KB)", "status", "accuracy", "canary"), rows,
                             align="lrlrl").split("\n"):
        say(line)
    # Artifacts for other targets are summed up per target; anything else is listed one by one.
    by_target: dict[str, int] = defaultdict(int)
    for aid, why in res.left_out:
        if why.startswith(f"profile {res.profile} does not build"):
            by_target[why] += 1
        else:
            say(f"left out {aid}: {why}")
    for why, n in sorted(by_target.items()):
        say(f"left out {n} artifact(s): {why}")
    for aid, why in res.canary_skipped:
        say(f"warning: no canary scores for {aid}: {why}")
    kind = "archive" if res.path.is_file() else "folder"
    say(
        f"bundle for {res.profile}: {len(res.included)} artifacts, {res.eval_count} eval images, "
        f"{res.canary_count} canary images -> {res.path} ({kind}, {kb(res.size_bytes)} KB)"
    )
    say(f"next: copy it to the board, then edgekit verify {res.path} --profile {res.profile}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder with manifest.json (from 'edgekit convert')")
    p.add_argument("--profile", required=True, help="device profile name or path to a .toml file")
    p.add_argument("--out", required=True, help="output folder, or a file ending in .tar.gz/.tgz")
    p.add_argument(
        "--eval-size",
        type=int,
        default=10000,
        help="test images in eval.npz (default 10000: every Fashion-MNIST test image; "
        "halves choose the front and serve the comparison)",
    )
    p.add_argument("--canary-size", type=int, default=8, help="test images in canary.npz (default 8)")
    p.add_argument("--force", action="store_true", help="also bundle artifacts that validation rejected")
    p.add_argument("--predictive-test", action="store_true",
                   help="also build each artifact's compact predictive test (a few images and a regressor that "
                        "predict its accuracy on the board; minutes per artifact)")
    p.add_argument("--predictive-images", type=int, default=4, metavar="K", help="test images per artifact (4)")
    p.add_argument("--predictive-only", action="append", default=[], metavar="PATTERN",
                   help="build the predictive test only for artifacts matching PATTERN (glob, or substring; "
                        "repeatable, comma-separated), e.g. the ones a board is likely to select")


def _predictive_options(args: argparse.Namespace):
    if not args.predictive_test:
        if args.predictive_only:
            raise UsageError("--predictive-only needs --predictive-test")
        return None
    from converters.pack.predictive import PredictiveOptions
    from edge.core.patterns import split_patterns

    return PredictiveOptions(images=args.predictive_images, only=tuple(split_patterns(args.predictive_only)))


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary already says which canaries were skipped
        build_bundle(
            args.run, args.profile, args.out, eval_size=args.eval_size, canary_size=args.canary_size, force=args.force,
            predictive=_predictive_options(args),
        )
    print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
